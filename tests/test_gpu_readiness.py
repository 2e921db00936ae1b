"""Guards for what would stop the first GPU run, checked on a CPU: the worker server stays CUDA-clean, the process
group carries both backends, random weights do not depend on the plan, and --compile leaves 5-D weights alone."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from vidpipe.models.svd.tiny import CONFIGS_DIR
from vidpipe.runtime.dist import cuda_device_for, process_group_backend
from vidpipe.runtime.preload_probe import probe_preload


def _probe_started(module: str) -> None:
    """Returns once this process has a preload probe running that imports `module` (its interpreter has started,
    with the environment it keeps)."""
    import psutil

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in psutil.Process().children():
            try:
                if {"vidpipe.runtime.preload_probe", module} <= set(child.cmdline()):
                    return
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no preload probe of {module} started")


@pytest.fixture(scope="module")
def probes():
    """The module's two preload probes, run at once (each an interpreter importing for seconds): the worker
    server's own preload, then the control's. Each probe takes this process's environment as it starts, so the
    control's setting is made once the first one runs."""
    with ThreadPoolExecutor(2) as pool:
        server = pool.submit(probe_preload, emulate_cuda=True)
        _probe_started("vidpipe.jobs.generate")
        with pytest.MonkeyPatch.context() as patch:
            # NVML-based check off: a user's own setting wins over the server's
            patch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "0")
            control = pool.submit(probe_preload, ["tests.cuda_asker"], emulate_cuda=True)  # asks as diffusers does
            _probe_started("tests.cuda_asker")
        yield server, control


def test_the_worker_server_preload_never_asks_the_cuda_runtime_for_devices(probes):
    """diffusers asks for an accelerator at import time; with the server's NVML-based check torch answers from
    NVML, so the CUDA runtime (`cudaGetDeviceCount`) is never called and CUDA stays uninitialised. On a CPU build
    torch is made to answer as a CUDA build would (`--emulate-cuda`)."""
    probe = probes[0].result()
    assert probe.emulated
    assert probe.device_count_calls == 0 and not probe.cuda_initialized


def test_the_preload_probe_sees_a_runtime_device_count_call(probes):
    """The control: with the NVML-based check switched off (a user's own setting wins over the server's), the same
    preload calls the CUDA runtime, and the probe counts it. Without this the test above could pass vacuously."""
    assert probes[1].result().device_count_calls >= 1


def test_cuda_runs_get_one_group_with_gloo_for_host_tensors_and_nccl_for_device_tensors():
    assert process_group_backend("nccl", "cuda") == "cpu:gloo,cuda:nccl"
    assert process_group_backend("gloo", "cpu") == "gloo"
    assert process_group_backend("gloo", "cuda") == "gloo"  # --backend gloo on GPUs: forced by the user


def test_a_rank_wraps_its_local_rank_onto_the_visible_gpus():
    """torchrun with one visible GPU per process (CUDA_VISIBLE_DEVICES set per rank): local rank 3 uses cuda:0."""
    assert cuda_device_for(3, 1) == torch.device("cuda", 0)
    assert cuda_device_for(5, 4) == torch.device("cuda", 1)
    assert cuda_device_for(2, 8) == torch.device("cuda", 2)
    with pytest.raises(RuntimeError, match="no CUDA device is visible"):
        cuda_device_for(0, 0)


def test_sample_state_host_tensors_are_allocated_on_the_host():
    """The sampling state ([steps, guidance]) is read on the host: a receiving rank allocates it on the CPU, so on
    GPUs it travels over gloo like every control message, and NCCL only ever sees device tensors."""
    from vidpipe.models.base import TensorSpec

    spec = TensorSpec((3,), torch.float64, on_host=True)
    assert spec.empty(torch.device("meta")).device.type == "cpu"
    assert TensorSpec((2, 2), torch.float32).empty(torch.device("meta")).device.type == "meta"


def test_random_weights_are_built_on_the_cpu_whatever_the_target_device(monkeypatch):
    """dp builds for its GPU and fsdp stages the UNet on the CPU: both must hold the same weights. Built on the
    CPU from one seed, then moved, they are. Here the move is suppressed, so every parameter must still be on the
    CPU although a GPU-like (meta) device was asked for, with the same values as a CPU build."""
    import vidpipe.models.svd.adapter as svd

    monkeypatch.setattr(svd, "_place", lambda module, device, dtype: module)
    config = CONFIGS_DIR / "tiny"
    for_gpu = svd.random_components(config, torch.device("meta"), torch.float32, unet_device=torch.device("meta"))
    for_fsdp = svd.random_components(config, torch.device("meta"), torch.float32, unet_device=torch.device("cpu"))
    for name in ("unet", "vae", "image_encoder"):
        gpu_state, fsdp_state = for_gpu[name].state_dict(), for_fsdp[name].state_dict()
        assert all(t.device.type == "cpu" for t in gpu_state.values()), name
        assert all(torch.equal(gpu_state[k], fsdp_state[k]) for k in gpu_state), name


def test_compile_stores_conv2d_channels_last_and_leaves_conv3d_alone():
    """SVD's temporal Conv3d weights are 5-D; converting the whole UNet to channels_last fails on them on CUDA."""
    from diffusers import UNetSpatioTemporalConditionModel

    from vidpipe.models.svd.adapter import SVDModel
    from vidpipe.parallel.compile import apply_compile

    unet = UNetSpatioTemporalConditionModel.from_config(
        UNetSpatioTemporalConditionModel.load_config(CONFIGS_DIR / "tiny" / "unet"))
    # Compiles lazily: nothing runs here.
    compiled = apply_compile(unet, SVDModel.repeated_blocks, channels_last=True, backend="aot_eager")
    assert compiled > 0
    conv2d = [m.weight for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    conv3d = [m.weight for m in unet.modules() if isinstance(m, torch.nn.Conv3d)]
    assert conv2d and conv3d
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv2d)
    assert all(w.is_contiguous() for w in conv3d)


def test_compiling_is_a_phase_of_its_own_that_counts_as_loading():
    """torch.compile compiles inside the first step, minutes on a big UNet without a step event: the "compile"
    phase gets --load-timeout, and the rank's first finished step moves it on to the next phase."""
    from vidpipe.metrics import StepRecorder
    from vidpipe.models.base import Sample
    from vidpipe.runtime.events import EventSink, Heartbeat, PhaseStarted
    from vidpipe.runtime.watchdog import Watchdog

    watchdog = Watchdog(1, stall_timeout_s=1.0, load_timeout_s=100.0, now=0.0)
    watchdog.on_event(PhaseStarted(0, phase="compile"), 0.0)
    watchdog.on_event(Heartbeat(0), 49.9)  # alive, but no step for 50 s: compiling
    assert watchdog.check(50.0) is None
    seen = []
    recorder = StepRecorder(torch.device("cpu"), EventSink(0, listener=seen.append), 0)
    recorder.phase_after_first_step = "warmup"
    on_step = recorder.on_step_for(Sample(-1, 0), range(3))
    for step in range(3):
        on_step(step)
    phases = [event.phase for event in seen if isinstance(event, PhaseStarted)]
    assert phases == ["warmup"]
    watchdog.on_event(seen[0], 50.0)
    watchdog.on_event(Heartbeat(0), 51.9)
    assert watchdog.check(50.5) is None and "no progress" in watchdog.check(52.0)
