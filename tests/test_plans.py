"""Parallel plans: parsing and resolution, the frame and decode splits, `auto`, and the analytic bytes (no
processes); then the cfg/sp layers themselves on a real tiny SVD UNet over gloo ranks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from vidpipe.errors import UsageError
from vidpipe.jobs.decode import plan_decode
from vidpipe.models.svd.architecture import temporal_layers
from vidpipe.models.svd.simulator import svd_unet_config
from vidpipe.models.svd.tiny import CONFIGS_DIR
from vidpipe.parallel.auto import ModelSize, choose_plan
from vidpipe.parallel.plan import ParallelPlan, chunk_ranges, frame_split, parse_plan
from vidpipe.runtime.launch import LaunchSpec, launch


@pytest.mark.parametrize(("text", "gpus", "full"), [
    ("dp", 8, "dp8"), ("pp", 8, "pp8"), ("cfg2", 8, "dp4.cfg2"), ("cfg", 8, "dp4.cfg2"),
    ("cfg2.sp4", 8, "dp1.cfg2.sp4"),
    ("pp2.cfg2.sp2", 8, "pp2.cfg2.sp2"), ("sp2.cfg2.pp2", 8, "pp2.cfg2.sp2"), ("fsdp", 8, "dp1.fsdp8"),
    ("sp4.fsdp", 8, "dp2.sp4.fsdp"), ("dp2.fsdp4", 8, "dp2.fsdp4"), ("dp2.fsdp", 8, "dp2.fsdp4"),
    ("fsdp4", 8, "dp2.fsdp4"), ("cfg2.sp2.fsdp", 4, "dp1.cfg2.sp2.fsdp"), ("dp", 1, "dp1"),
])
def test_plans_resolve_as_the_issue_says(text, gpus, full):
    plan = parse_plan(text).resolve(gpus)
    assert plan.name == full and plan.world_size == gpus


def test_plan_layout_puts_groups_on_consecutive_ranks():
    plan = parse_plan("pp2.cfg2.sp2").resolve(8)
    assert (plan.groups, plan.group_size) == (2, 4)
    assert plan.mesh_dims() == (("pp", 2), ("cfg", 2), ("sp", 2))
    assert parse_plan("dp").resolve(4).mesh_dims() == (("dp", 4),)


@pytest.mark.parametrize(("text", "gpus", "message"), [
    ("dp3.cfg2.sp2", 8, "dp3 x cfg2 x sp2 = 12 != --gpus 8"),
    ("cfg2.sp3", 8, "cfg2 x sp3 = 6 does not divide --gpus 8"),
    ("dp3.fsdp", 8, "dp3 does not divide --gpus 8"),
])
def test_degrees_that_do_not_fit_give_the_arithmetic(text, gpus, message):
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        parse_plan(text).resolve(gpus)


def test_job_checks_name_the_limit():
    with pytest.raises(UsageError, match=r"\(sp8 > 7\)"):
        ParallelPlan("dp", 1, sp=8).check_job(25, 7, True)
    with pytest.raises(UsageError, match=r"\(3 < 4\)"):
        ParallelPlan("pp", 4).check_job(3, 14, True)
    with pytest.raises(UsageError, match="guidance is off"):
        ParallelPlan("dp", 1, cfg=2).check_job(25, 14, False)


def test_frame_and_chunk_splits():
    assert frame_split(25, 4) == [7, 6, 6, 6]
    assert frame_split(7, 3) == [3, 2, 2]
    # 25 frames in chunks of 4 = 7 chunks over 3 ranks: 3, 2, 2 whole chunks, the last one short.
    assert chunk_ranges(25, 4, 3) == [range(0, 12), range(12, 20), range(20, 25)]
    assert chunk_ranges(5, 4, 8) == [range(0, 4), range(4, 5)]  # never more parts than chunks


def test_decode_plan_whole_samples_or_chunks():
    whole = plan_decode([(14, 4)] * 5, world_size=2)
    assert [[p.rank for p in t.parts] for t in whole] == [[0], [1], [0], [1], [0]]
    assert all(t.parts[0].frames == range(14) for t in whole)
    split = plan_decode([(14, 4)] * 2, world_size=8)  # 4 chunks each, 4 ranks each
    assert [[p.rank for p in t.parts] for t in split] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert [p.frames for p in split[0].parts] == [range(0, 4), range(4, 8), range(8, 12), range(12, 14)]


SVD_XT_SIZE = ModelSize(unet_params=1_524_623_082, other_params=97_739_049 + 632_076_800, first_channels=320,
                        dtype_bytes=2)


@pytest.mark.parametrize(("gpus", "samples", "expected"), [
    (8, 1, "dp1.cfg2.sp4"),  # one video: every GPU on latency axes
    (8, 2, "dp2.cfg2.sp2"),
    (8, 4, "dp4.cfg2"),
    (8, 8, "dp8"),  # every GPU already has a sample: nothing to split
    (1, 3, "dp1"),
])
def test_auto_prefers_latency_axes_for_few_samples(gpus, samples, expected):
    choice = choose_plan(gpus, samples, 25, 25, 576, 1024, True, "cuda", SVD_XT_SIZE, budget_gb=80.0)
    assert choice.plan.name == expected
    assert f"{samples} sample" in choice.reason and "GB free per GPU (estimated)" in choice.reason


def test_auto_turns_to_sp_or_fsdp_when_one_gpu_cannot_hold_the_job():
    # 24 GB cards and 100 frames: a whole sample does not fit; frames split over 4 ranks do.
    choice = choose_plan(4, 4, 25, 100, 576, 1024, True, "cuda", SVD_XT_SIZE, budget_gb=24.0)
    assert choice.plan.splits_sample or choice.plan.fsdp
    assert choice.estimated_gb <= 24.0


def _fake_machine(monkeypatch, visible: str | None):
    """A 3-GPU machine as nvidia-smi lists it (free: 70, 20 and 50 GiB); CUDA_VISIBLE_DEVICES as given."""
    from vidpipe.runtime import gpus

    machine = [gpus.GpuInfo(0, "GPU-aa", "NVIDIA H100", 81559.0, 70 * 1024.0, 0.0),
               gpus.GpuInfo(1, "GPU-bb", "NVIDIA H100", 81559.0, 20 * 1024.0, 0.0),
               gpus.GpuInfo(2, "GPU-cc", "NVIDIA H100", 81559.0, 50 * 1024.0, 0.0)]
    monkeypatch.setattr(gpus, "all_gpus", lambda: machine)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


@pytest.mark.parametrize(("visible", "world_size", "free_gb"), [
    (None, None, 20.0),  # every GPU: the busy GPU 1 is the smallest
    ("2,0", None, 50.0),  # GPU 1 is not ours: its free memory must not count
    ("GPU-cc,GPU-bb", 1, 50.0),  # one rank runs on the first visible GPU only
    ("1,2", 2, 20.0),
])
def test_auto_reads_the_free_memory_of_the_visible_gpus_only(monkeypatch, visible, world_size, free_gb):
    from vidpipe.parallel.auto import free_gpu_memory_gb

    _fake_machine(monkeypatch, visible)
    assert free_gpu_memory_gb(world_size) == pytest.approx(free_gb)


def test_auto_on_cuda_budgets_with_the_visible_gpus(monkeypatch):
    _fake_machine(monkeypatch, "2,0")
    choice = choose_plan(2, 2, 25, 25, 576, 1024, True, "cuda", SVD_XT_SIZE)
    assert choice.budget_gb == pytest.approx(50.0) and "of 50.0 GB free per GPU" in choice.reason


def test_auto_sizes_the_vae_in_fp32_whatever_the_run_dtype():
    from dataclasses import replace

    from vidpipe.parallel.auto import memory_bytes

    vae = 97_739_049
    plan = ParallelPlan("dp", 1, 1, 1)
    at_run_dtype = memory_bytes(plan, SVD_XT_SIZE, 25, 576, 1024, True)
    in_fp32 = memory_bytes(plan, replace(SVD_XT_SIZE, vae_params=vae), 25, 576, 1024, True)
    assert in_fp32 - at_run_dtype == vae * (4 - SVD_XT_SIZE.dtype_bytes)


def test_auto_counts_the_kept_context_per_guidance_call_and_held_expert():
    """Wan keeps every block's context keys and values for a block of steps: one set per context a rank's calls use
    (2 with guidance, 1 on a cfg2 rank) and per expert it holds."""
    from dataclasses import replace

    from vidpipe.parallel.auto import memory_bytes

    kept = 400 * 1024**2
    size = replace(SVD_XT_SIZE, experts=2)

    def extra(plan: ParallelPlan, guidance: bool) -> float:
        with_kept = memory_bytes(plan, replace(size, context_bytes=kept), 25, 576, 1024, guidance, 40, None)
        return with_kept - memory_bytes(plan, size, 25, 576, 1024, guidance, 40, None)

    assert extra(ParallelPlan("dp", 1, 1, 1), True) == 2 * 2 * kept
    assert extra(ParallelPlan("dp", 1, 1, 1), False) == 1 * 2 * kept
    assert extra(ParallelPlan("dp", 1, 2, 1), True) == 1 * 2 * kept  # cfg2: each rank makes one of the two calls


def test_auto_fits_on_what_the_driver_will_charge_not_on_allocated_bytes():
    from vidpipe.parallel.auto import GIB, PROCESS_OVERHEAD_GB, RESERVED_PER_ALLOCATED, memory_bytes

    plan = ParallelPlan("dp", 1, 1, 1)
    allocated_gb = memory_bytes(plan, SVD_XT_SIZE, 25, 576, 1024, True) / GIB
    driver_gb = allocated_gb * RESERVED_PER_ALLOCATED + PROCESS_OVERHEAD_GB
    # A GPU with room for the allocated bytes but not the reserved pool and the context: dp1 does not fit.
    tight = choose_plan(1, 1, 25, 25, 576, 1024, True, "cuda", SVD_XT_SIZE, budget_gb=(allocated_gb + driver_gb) / 2)
    assert tight.estimated_gb == pytest.approx(driver_gb)
    assert "nothing fits the estimate" in tight.reason
    roomy = choose_plan(1, 1, 25, 25, 576, 1024, True, "cuda", SVD_XT_SIZE, budget_gb=driver_gb + 0.01)
    assert "nothing fits" not in roomy.reason


def test_temporal_layers_of_svd_xt():
    layers = temporal_layers(svd_unet_config())
    assert sum(layer.kind == "resnet" for layer in layers) == 22
    assert sum(layer.kind == "attention" for layer in layers) == 16


@dataclass(frozen=True)
class UNetSplitJob:
    """One forward of the tiny SVD UNet, whole on every rank and split by `plan_text`, compared on rank 0."""

    plan_text: str
    frames: int

    def run(self, ctx, events):
        from diffusers import UNetSpatioTemporalConditionModel

        from vidpipe.jobs.diffusion import build_layout
        from vidpipe.models.svd.cost import svd_bytes_per_step

        torch.set_num_threads(1)
        config = UNetSpatioTemporalConditionModel.load_config(CONFIGS_DIR / "tiny" / "unet")
        with torch.random.fork_rng():
            torch.manual_seed(0)
            unet = UNetSpatioTemporalConditionModel.from_config(config).eval()
            generator = torch.Generator().manual_seed(1)
            sample = torch.randn(2, self.frames, 8, 16, 24, generator=generator)
            embeddings = torch.randn(2, 1, 32, generator=generator)
        time_ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
        plan = parse_plan(self.plan_text).resolve(ctx.world_size)
        layout = build_layout(ctx, plan)
        with torch.no_grad():
            whole = None
            if ctx.rank == 0:  # only rank 0 compares: the other ranks need not run the whole UNet first
                whole = unet(sample, torch.tensor(500.0), embeddings, time_ids, return_dict=False)[0]

            class Holder:  # the adapter surface `parallelize` needs
                dtype = torch.float32

            holder = Holder()
            holder.unet = unet
            from vidpipe.parallel.parallelize import parallelize

            parallelize(holder, layout)
            split = holder.unet(sample, torch.tensor(500.0), embeddings, time_ids)[0]
        analytic = svd_bytes_per_step(plan, config, 2, self.frames, 16, 24, 4)[layout.group_rank]
        return {"diff": (split - whole).abs().max().item(), "scale": whole.abs().max().item(),
                "sent": layout.comm.bytes_sent, "analytic": analytic} if ctx.rank == 0 else None


@pytest.mark.parametrize(("plan_text", "ranks", "frames"), [("sp2", 2, 8), ("sp3", 3, 7), ("cfg2.sp2", 4, 5)])
def test_split_unet_equals_the_whole_unet(plan_text, ranks, frames):
    """Frame parallelism (uneven splits included) and the guidance split change nothing but float rounding,
    and send exactly the bytes `models/svd/cost.py` works out."""
    result = launch(UNetSplitJob(plan_text, frames), LaunchSpec(ranks, "cpu", "gloo", 120.0), lambda e: None)
    assert result["diff"] <= 1e-5 * max(1.0, result["scale"]), result
    assert result["sent"] == result["analytic"]


def test_compile_compiles_the_repeated_blocks_and_changes_nothing():
    """Regional torch.compile of the tiny UNet: every repeated block but the ones holding sp's collectives, and
    the same output as eager (dynamo's capture run by its "eager" backend: the graphs and guards `--compile` makes,
    without inductor's C++ build or AOT autograd, which took this test from 12 to 21 s)."""
    from diffusers import UNetSpatioTemporalConditionModel

    from vidpipe.models.svd.adapter import SVDModel
    from vidpipe.models.svd.parallelize import apply_sp
    from vidpipe.parallel.comm import CommStats, Group
    from vidpipe.parallel.compile import apply_compile

    blocks = SVDModel.repeated_blocks
    config = UNetSpatioTemporalConditionModel.load_config(CONFIGS_DIR / "tiny" / "unet")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNetSpatioTemporalConditionModel.from_config(config).eval()
        sample, embeddings = torch.randn(2, 3, 8, 8, 8), torch.randn(2, 1, 32)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    with torch.no_grad():
        eager = unet(sample, torch.tensor(10.0), embeddings, time_ids, return_dict=False)[0]
        assert apply_compile(unet, blocks, backend="eager") == 36
        compiled = unet(sample, torch.tensor(10.0), embeddings, time_ids, return_dict=False)[0]
    assert (compiled - eager).abs().max().item() <= 1e-5

    # Under sp the temporal res blocks hold collectives (halos, GroupNorm statistics): they stay eager.
    with torch.random.fork_rng():
        fresh = UNetSpatioTemporalConditionModel.from_config(config).eval()
    split = apply_sp(fresh, Group(None, 0, 2, (0, 1), CommStats()))
    temporal_res_blocks = sum(type(m).__name__ == "TemporalResnetBlock" for m in fresh.modules())
    assert apply_compile(split, blocks, backend="eager") == 36 - temporal_res_blocks


def test_compile_compiles_wans_transformer_blocks_and_leaves_the_ones_sp_patched():
    """Wan's transformer declares its repeated blocks (`_repeated_blocks`): `--compile` compiles each one, with the
    same output as eager; under sp every block's self-attention holds Ulysses' all-to-alls, so none is compiled."""
    from diffusers import WanTransformer3DModel

    from vidpipe.models.wan import parallelize
    from vidpipe.models.wan.adapter import WanModel
    from vidpipe.models.wan.tiny import CONFIGS_DIR as WAN_CONFIGS
    from vidpipe.parallel.comm import CommStats, Group
    from vidpipe.parallel.compile import apply_compile

    assert WanModel.repeated_blocks == tuple(WanTransformer3DModel._repeated_blocks)  # noqa: SLF001
    config = WanTransformer3DModel.load_config(WAN_CONFIGS / "wan-tiny" / "transformer")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformer = WanTransformer3DModel.from_config(config).eval()
        call = {"hidden_states": torch.randn(1, config["in_channels"], 3, 4, 6), "timestep": torch.tensor([500]),
                "encoder_hidden_states": torch.randn(1, 512, config["text_dim"]),
                "encoder_hidden_states_image": torch.randn(1, 257, config["image_dim"]), "return_dict": False}
    with torch.no_grad():
        eager = transformer(**call)[0]
        assert apply_compile(transformer, WanModel.repeated_blocks, backend="eager") == config["num_layers"]
        compiled = transformer(**call)[0]
    assert (compiled - eager).abs().max().item() <= 1e-5

    fresh = WanTransformer3DModel.from_config(config).eval()
    parallelize.apply_sp(fresh, Group(None, 0, 2, (0, 1), CommStats()))
    assert apply_compile(fresh, WanModel.repeated_blocks, backend="eager") == 0

    # A run that compiles nothing says so, and is not held in a "compile" phase it never leaves by compiling.
    from types import SimpleNamespace

    from vidpipe.bench_output import _compile_cell
    from vidpipe.jobs.diffusion import start_compiling
    from vidpipe.metrics import RankRecord

    emitted, record = [], RankRecord(rank=0)
    under_sp = SimpleNamespace(repeated_blocks=WanModel.repeated_blocks, denoisers=lambda: [fresh])
    ctx = SimpleNamespace(rank=0, device=torch.device("cpu"))
    assert start_compiling(under_sp, ctx, SimpleNamespace(emit=emitted.append), record) == 0
    assert record.compiled_blocks == 0 and emitted == []
    assert _compile_cell({"compiled": True, "compiled_blocks_per_rank": [0, 0], "compile_s_per_rank": [None]}) == "none"
    assert _compile_cell({"compiled": True, "compiled_blocks_per_rank": [2, 2], "compile_s_per_rank": [3.0]}) == "3.0"


def test_auto_counts_one_expert_per_pp_stage_of_wan22_a14b():
    """Wan 2.2 A14B (two 14B experts, 27 GB each in bf16) on two 64 GB GPUs, 16 videos without guidance: no GPU
    holds both experts (dp2), while pp2 broken at the expert switch holds one per GPU, as fsdp holds half of each.
    At A14B's own switch (step 15 of 40: blocks 15 + 25) sp2.fsdp is estimated faster; with the switch at step 17
    (blocks 17 + 23, boundary_ratio 0.875) the pipeline is, and auto takes it."""
    from vidpipe.models.registry import resolve_model
    from vidpipe.models.wan import family
    from vidpipe.parallel.auto import driver_memory_gb, memory_bytes

    source = resolve_model("wan2.2-i2v-a14b-random", True, None)
    size = family.model_size(source, 2)
    switch = family.expert_switch(source, 40)
    assert size.experts == 2 and switch == 15

    def estimate(plan: str, at: int | None = switch) -> float:
        return driver_memory_gb(memory_bytes(parse_plan(plan).resolve(2), size, 81, 480, 832, False, 40, at))

    # A stage holds one expert and keeps the context of that one expert only (no guidance: one context).
    expert_gb = (size.unet_params / 2 * 2 + size.context_bytes) * 1.1 / 1024**3
    assert estimate("pp2") == pytest.approx(estimate("dp2") - expert_gb)
    assert estimate("pp2", at=None) == pytest.approx(estimate("dp2"))  # no switch: a stage holds both

    own = choose_plan(2, 16, 40, 81, 480, 832, False, "cuda", size, budget_gb=64.0, switch=switch)
    assert own.plan.name == "dp1.sp2.fsdp" and own.estimated_gb < 64
    earlier = choose_plan(2, 16, 40, 81, 480, 832, False, "cuda", size, budget_gb=64.0, switch=17)
    assert earlier.plan.name == "pp2", earlier.reason
    assert "a step pipeline of 2 stages, one expert per stage" in earlier.reason
