"""The plan: every step in the order they run, on how many GPUs, and the reason for each one that will not run."""

from __future__ import annotations

import json
import re
import shlex

from .context import IMAGE, PACKAGE, Context, Step, rel

# (plan, GPUs it is run on, in --quick): `generate` end to end, each plan on the fewest GPUs that make it that plan.
GENERATE_PLANS = (
    ("dp", 1, True), ("pp2", 2, False), ("cfg2", 2, False), ("sp2", 2, True), ("fsdp", 2, False),
    ("fsdp.sp2", 2, False), ("cfg2.sp2", 4, True), ("pp2.cfg2", 4, False), ("sp4.fsdp", 4, False),
    ("pp2.cfg2.sp2", 8, False), ("cfg2.sp4", 8, False), ("dp2.cfg2.sp2", 8, False),
)
SERVE_PLANS = (("dp", 1, True), ("dp2", 2, False), ("pp2", 2, True), ("cfg2", 2, False))
# `simulate` over NCCL: every plan, on the most GPUs it fits (the stand-in UNet: no weights, real collectives).
SIMULATE_PLANS = ("dp", "pp", "fsdp", "cfg2", "sp2", "cfg2.sp2", "pp2.cfg2", "dp2.cfg2", "sp4.fsdp", "cfg2.sp4",
                  "pp2.cfg2.sp2")
TINY = ("--model", "tiny", "--steps", "4", "--frames", "8")
SVD_XT_SIZE = ("--frames", "25", "--height", "576", "--width", "1024")
# Wan (full run): the tiny Wan 2.1 (3 heads, CLIP image embedding) through the plans #15 names, in bf16 (Wan's
# dtype: UMT5 overflows in fp16), each against 1 rank; then the full-size Wan 2.1 14B (random weights) at 480p.
WAN_PLANS = (("dp", 1, False), ("pp2", 2, False), ("cfg2", 2, False), ("sp2", 2, False), ("sp3", 3, False),
             ("fsdp.sp2", 2, False), ("cfg2.sp2", 4, False))
WAN_TINY = ("--model", "wan-tiny", "--steps", "4", "--prompt", "a red fox runs through the snow", "--dtype", "bf16")
WAN_480P = ("--frames", "81", "--height", "480", "--width", "832")  # 32,760 tokens a video, Wan's own size
WAN_14B = ("--model", "wan2.1-i2v-14b-480p-random", "--dtype", "bf16", *WAN_480P)


def plan_fits(plan: str, gpus: int) -> bool:
    """Whether `plan` runs on `gpus` ranks, by vidpipe's rule (parallel/plan.py): a degree-less sample axis takes
    the ranks left over. fsdp alone needs 2 ranks here (on one it shards nothing)."""
    degrees = {axis: int(digits) if digits else None
               for axis, digits in (re.fullmatch(r"([a-z]+)(\d*)", part).groups() for part in plan.split("."))}
    cfg, sp = (2 if "cfg" in degrees else 1), degrees.get("sp") or 1
    sample = degrees.get("pp") or degrees.get("dp")
    if "fsdp" in degrees and cfg * sp == 1:
        shard = degrees["fsdp"]
        if shard is None:
            groups = sample or 1
            return gpus % groups == 0 and gpus // groups >= 2
        return gpus == (sample or 1) * shard if sample else gpus % shard == 0
    group = cfg * sp
    return gpus == sample * group if sample else gpus % group == 0


def min_gpus(plan: str) -> int:
    return next(n for n in range(1, 65) if plan_fits(plan, n))


def most_gpus(plan: str, gpus: int) -> int | None:
    """The most of `gpus` GPUs that `plan` runs on, or None."""
    return next((n for n in range(gpus, 0, -1) if plan_fits(plan, n)), None)


def needs(what: str, gpus: int, visible: int) -> str:
    return f"{what} needs {gpus} GPU{'s' if gpus != 1 else ''}, {visible} visible"


def build_steps(ctx: Context, only: str | None = None) -> list[Step]:
    """Every step, in the order they run, with the reason for each one that will not run. The order is the quick
    run's priority: the cheap essentials, then SVD-XT against the stock pipeline (the figure a GPU is lent for),
    then what a budget cut loses least; the full run's long steps last."""
    steps = [*version_steps(ctx), *generate_steps(ctx), *dtype_steps(ctx), *serve_steps(ctx), *fault_steps(ctx),
             *torchrun_steps(ctx), svd_xt_bench_step(ctx), nccl_debug_step(ctx), bench_repeats_step(ctx),
             *split_plan_steps(ctx), *wan_steps(ctx), memory_probe_step(ctx), *simulate_steps(ctx)]
    for step in steps:
        step.log = ctx.path(f"{step.name}.log")
        if step.gpus > ctx.gpus:
            step.skip_reason = needs(step.what or step.name, step.gpus, ctx.gpus)
        elif ctx.quick and not step.quick:
            step.skip_reason = "full run only (not in --quick)"
        elif only and not re.search(only, step.name):
            step.skip_reason = f"not selected (--only {only})"
    names = [step.name for step in steps]
    assert len(names) == len(set(names)), "step names must be unique"
    return steps


def vidpipe_step(ctx: Context, name: str, group: str, gpus: int, timeout_s: float, args: list[str],
                 **kwargs) -> Step:
    return Step(name, group, gpus, timeout_s, [*ctx.vidpipe, *args], vidpipe_commands=[args], **kwargs)


def helper(ctx: Context, *args: str) -> list[str]:
    """A command line running one of this package's subcommands with the project's Python."""
    return [*ctx.python, rel(PACKAGE), *args]


def version_steps(ctx: Context) -> list[Step]:
    report = ctx.path("doctor.json")
    doctor = ["doctor", "--json", report] if ctx.doctor_json_takes_path else ["doctor", "--json"]
    return [
        Step("versions", "versions", 0, 120, helper(ctx, "versions", "--device", ctx.device, "--json",
                                                        ctx.path("versions.json")),
             quick=True, report=ctx.path("versions.json")),
        Step("topology", "versions", 0, 30, ["nvidia-smi", "topo", "-m"], quick=True,
             stdout_to=ctx.path("topology.txt")),
        vidpipe_step(ctx, "doctor", "versions", 0, 120, doctor, quick=True, report=report,
                     stdout_to=None if ctx.doctor_json_takes_path else report),
    ]


def generate_args(ctx: Context, plan: str, gpus: int | None, out: str, *extra: str) -> list[str]:
    """`generate` of the test image into `out` (MP4 and latents) with its report at OUT.json; gpus None: under
    torchrun, whose world size is the rank count."""
    ranks = ["--gpus", str(gpus)] if gpus is not None else []
    return ["generate", IMAGE, *ranks, "--strategy", plan, "--device", ctx.device, "--seed", "0", "--format",
            "mp4", "--save-latents", "--overwrite", "--out", out, "--json", f"{out}.json", *extra]


def generate_steps(ctx: Context) -> list[Step]:
    """Every plan through diffusion, decode and MP4 files (tiny model), then each one's latents against 1 rank."""
    return plans_against_one_rank(ctx, "generate", "generate", GENERATE_PLANS, TINY, label="")


def plans_against_one_rank(ctx: Context, group: str, prefix: str, plans: tuple, model_args: tuple[str, ...],
                           label: str) -> list[Step]:
    """`generate` of two samples to MP4 under each (plan, GPUs, in --quick) of `plans`, the first being 1 rank,
    then every other plan's latents compared with its. Steps are named PREFIX-PLAN and PREFIX-compare."""
    steps = []
    for plan, gpus, quick in plans:
        out = ctx.path(f"{prefix}-{plan}")
        steps.append(vidpipe_step(ctx, f"{prefix}-{plan}", group, gpus, 240,
                                  generate_args(ctx, plan, gpus, out, *model_args, "--samples", "2"),
                                  what=f"{label}{plan}", quick=quick, report=f"{out}.json", workdir=out,
                                  expect_mp4=out))
    compared = [f"{plan}={ctx.path(f'{prefix}-{plan}')}" for plan, gpus, quick in plans[1:]
                if gpus <= ctx.gpus and (quick or not ctx.quick)]
    steps.append(Step(f"{prefix}-compare", group, 2, 120,
                      helper(ctx, "compare-latents", "--json", ctx.path(f"{prefix}-compare.json"), "--tolerance",
                             "0.05", "--reference", ctx.path(f"{prefix}-{plans[0][0]}"), *compared),
                      what=f"comparing {label}plans with 1 rank", quick=plans[0][2],
                      report=ctx.path(f"{prefix}-compare.json")))
    return steps


def dtype_steps(ctx: Context) -> list[Step]:
    """fp32, fp16 and bf16 of the same sample (the 62 M-parameter small SVD), then their latents compared."""
    steps = []
    for dtype, quick in (("fp32", True), ("fp16", True), ("bf16", False)):
        out = ctx.path(f"dtype-{dtype}")
        steps.append(vidpipe_step(ctx, f"dtype-{dtype}", "dtype", 1, 240,
                                  generate_args(ctx, "dp", 1, out, "--model", "small", "--steps", "8", "--dtype",
                                                dtype),
                                  quick=quick, report=f"{out}.json", workdir=out, expect_mp4=out))
    compared = [f"{d}={ctx.path(f'dtype-{d}')}" for d in ("fp16", "bf16") if d == "fp16" or not ctx.quick]
    steps.append(Step("dtype-compare", "dtype", 1, 120,
                      helper(ctx, "compare-latents", "--json", ctx.path("dtype-compare.json"), "--reference",
                             ctx.path("dtype-fp32"), *compared),
                      quick=True, report=ctx.path("dtype-compare.json")))
    return steps


def serve_steps(ctx: Context) -> list[Step]:
    """A warm server per plan: one job cancelled while it runs, one submitted and finished, then SIGTERM."""
    steps = []
    for plan, gpus, quick in SERVE_PLANS:
        name = f"serve-{plan}{gpus if plan == 'dp' else ''}"
        out = ctx.path(name)
        serve = ["serve", "--model", "tiny", "--gpus", str(gpus), "--strategy", plan, "--device", ctx.device,
                 "--host", "127.0.0.1", "--port", "0", "--out", out]
        submit = ["submit", IMAGE, "--server", "{url}", "--steps", "4", "--frames", "8", "--samples", "1",
                  "--out", f"{out}/downloads"]
        argv = helper(ctx, "serve-check", "--json", f"{out}.json", "--vidpipe", shlex.join(ctx.vidpipe),
                      "--submit", json.dumps(submit), "--", *serve)
        steps.append(Step(name, "serve", gpus, 300, argv, what=f"serve {plan}", quick=quick,
                          report=f"{out}.json", vidpipe_commands=[serve, submit], workdir=out))
    return steps


def fault_steps(ctx: Context) -> list[Step]:
    """A rank that raises, or is SIGKILLed, in the middle of a step: the run must end soon, name it, leave
    nothing. Steps of the small SVD at 576 x 1024 last long enough on a GPU to be hit mid-run."""
    size = ["--height", "576", "--width", "1024"] if ctx.device == "cuda" else []  # the CPU: seconds per step
    extra = ["--model", "small", "--steps", "200", "--frames", "14", *size, "--samples", "1", "--verbose",
             "--stall-timeout", "60"]
    if ctx.dist_timeout:
        extra += ["--dist-timeout", "30"]
    steps = []
    for name, plan, gpus, kind, rank, quick in (("fault-raise-1rank", "dp", 1, "raise", 0, True),
                                                  ("fault-raise-sp2", "sp2", 2, "raise", 1, True),
                                                  ("fault-kill-sp2", "sp2", 2, "kill", 1, True)):
        out = ctx.path(name)
        run = generate_args(ctx, plan, gpus, out, *extra)
        run[run.index("--json") + 1] = f"{out}.run.json"
        argv = helper(ctx, "fault-check", "--json", f"{out}.json", "--kind", kind, "--rank", str(rank),
                      "--fault-step", "3", "--vidpipe", shlex.join(ctx.vidpipe), "--", *run)
        steps.append(Step(name, "faults", gpus, 240, argv, what=f"a fault in {plan}", quick=quick,
                          report=f"{out}.json", vidpipe_commands=[run], workdir=out))
    return steps


def torchrun_steps(ctx: Context) -> list[Step]:
    steps = []
    for gpus, plan, quick in ((1, "dp", True), (2, "sp2", True), (4, "cfg2.sp2", False)):
        out = ctx.path(f"torchrun-{gpus}")
        run = generate_args(ctx, plan, None, out, *TINY)
        argv = [*ctx.torchrun, "--standalone", "--nproc-per-node", str(gpus), "-m", "vidpipe", *run]
        steps.append(Step(f"torchrun-{gpus}", "torchrun", gpus, 240, argv, what=f"torchrun {plan}", quick=quick,
                          report=f"{out}.json", vidpipe_commands=[run], workdir=out, expect_mp4=out))
    return steps


def nccl_debug_step(ctx: Context) -> Step:
    gpus, plan = (2, "sp2") if ctx.gpus >= 2 else (1, "dp")
    report = ctx.path("nccl-debug.json")
    args = ["simulate", "--gpus", str(gpus), "--strategy", plan, "--steps", "8", "--samples", "4", "--device",
            ctx.device, "--json", report]
    return vidpipe_step(ctx, "nccl-debug", "nccl-debug", gpus, 240, args, quick=True, report=report,
                        env={"NCCL_DEBUG": "INFO"})


def gpu_list(ctx: Context, counts: tuple[int, ...] = (1, 2, 4, 8)) -> str:
    """The GPU counts a bench or probe compares: those of `counts` this machine has."""
    return ",".join(str(n) for n in counts if n <= max(ctx.gpus, 1))


def most(gpus: str, at_least: int = 1) -> int:
    """The GPUs a step given `--gpus LIST` uses (at least `at_least`: what it needs to be worth running)."""
    return max(at_least, *(int(n) for n in gpus.split(",")))


def bench_repeats_step(ctx: Context) -> Step:
    report = ctx.path("bench-repeats.json")
    gpus = "1" if ctx.quick else gpu_list(ctx)
    shape = ["--compare", "dp", "--samples", "2", "--steps", "10"] if ctx.quick else \
        ["--compare", "dp,pp", "--samples", "8", "--steps", "25"]
    args = ["bench", "--model", "small", *shape, "--gpus", gpus, "--warmup-samples", "1", "--repeats", "3",
            "--device", ctx.device, "--json", report, "--csv", ctx.path("bench-repeats.csv")]
    return vidpipe_step(ctx, "bench-repeats", "bench", most(gpus), 180 if ctx.quick else 1800, args,
                        quick=True, report=report)


def svd_xt_bench_step(ctx: Context) -> Step:
    """The full-size SVD-XT (random weights) on 1 GPU against the stock pipeline; the full run adds compiled."""
    report = ctx.path("svd-xt-bench.json")
    warmup, compile_mode = ("0", "off") if ctx.quick else ("1", "both")
    args = ["bench", "--model", "svd-xt-random", "--compare", "diffusers,dp", "--gpus", "1", *SVD_XT_SIZE,
            "--steps", "25", "--samples", "1", "--warmup-samples", warmup, "--compile", compile_mode, "--device",
            ctx.device, "--json", report, "--csv", ctx.path("svd-xt-bench.csv")]
    return vidpipe_step(ctx, "svd-xt-bench", "svd-xt", 1, 300 if ctx.quick else 2400, args, quick=True,
                        report=report)


def split_plan_steps(ctx: Context) -> list[Step]:
    """The latency plans, compiled (small SVD) and on SVD-XT, on as many GPUs as there are."""
    plans = ["dp", "cfg2", "sp2"] + (["cfg2.sp2"] if ctx.gpus >= 4 else []) + (["cfg2.sp4"] if ctx.gpus >= 8 else [])
    gpus, compiled_gpus = gpu_list(ctx), gpu_list(ctx, (1, 2, 4))
    compiled = ["bench", "--model", "small", "--compare", ",".join(plans[:4]), "--gpus", compiled_gpus,
                "--samples", "1", "--warmup-samples", "1", "--steps", "10", "--compile", "both", "--device",
                ctx.device, "--json", ctx.path("compile-split.json"), "--csv", ctx.path("compile-split.csv")]
    latency = ["bench", "--model", "svd-xt-random", "--compare", ",".join(plans), "--gpus", gpus, *SVD_XT_SIZE,
               "--steps", "10", "--samples", "1", "--warmup-samples", "1", "--device", ctx.device, "--json",
               ctx.path("svd-xt-latency.json"), "--csv", ctx.path("svd-xt-latency.csv"), "--plot",
               ctx.path("plots")]
    return [
        vidpipe_step(ctx, "compile-split", "compile", most(compiled_gpus, 2), 2400, compiled,
                     what="compiled cfg2/sp2", report=ctx.path("compile-split.json")),
        vidpipe_step(ctx, "svd-xt-latency", "svd-xt", most(gpus, 2), 2400, latency, what="SVD-XT on cfg2/sp2",
                     report=ctx.path("svd-xt-latency.json")),
    ]


def wan_steps(ctx: Context) -> list[Step]:
    """Wan: the tiny model through every plan to MP4, each plan's latents against 1 rank; one video's latency on the
    latency plans at Wan's 480p; the 14B at 480p on one GPU. Each beside the stock WanImageToVideoPipeline."""
    steps = plans_against_one_rank(ctx, "wan", "wan-generate", WAN_PLANS, WAN_TINY, label="Wan ")
    # One video's latency on the latency plans: wan-small (8 blocks) at Wan's 480p size, so that a step is real GPU
    # work; then the 14B itself (random weights, built in host memory: one rank) against the stock pipeline.
    plans = ["dp", "cfg2", "sp2"] + (["cfg2.sp2"] if ctx.gpus >= 4 else []) + (["cfg2.sp4"] if ctx.gpus >= 8 else [])
    gpus = gpu_list(ctx)
    small = ["bench", "--model", "wan-small", "--dtype", "bf16", *WAN_480P, "--compare",
             ",".join(["diffusers", *plans]), "--gpus", gpus, "--steps", "10", "--samples", "1", "--warmup-samples",
             "1", "--device", ctx.device, "--json", ctx.path("wan-latency.json"), "--csv", ctx.path("wan-latency.csv")]
    full = ["bench", *WAN_14B, "--compare", "diffusers,dp", "--gpus", "1", "--steps", "10", "--samples", "1",
            "--warmup-samples", "1", "--device", ctx.device, "--json", ctx.path("wan-14b-bench.json"), "--csv",
            ctx.path("wan-14b-bench.csv")]
    return [*steps,
            vidpipe_step(ctx, "wan-latency", "wan", most(gpus, 2), 2400, small, what="Wan on cfg2/sp2",
                         report=ctx.path("wan-latency.json")),
            vidpipe_step(ctx, "wan-14b-bench", "wan", 1, 2400, full, report=ctx.path("wan-14b-bench.json"))]


def memory_probe_step(ctx: Context) -> Step:
    plans = "pp,fsdp,sp2,cfg2.sp2.fsdp" if ctx.gpus >= 2 else "pp,fsdp"
    report, gpus = ctx.path("memory-probe.json"), gpu_list(ctx, (1, 2, 4))
    args = ["memory-probe", "--model", "svd-xt-random", "--strategy", plans, "--gpus", gpus,
            "--frames", "14,25", "--size", "576x1024", "--device", ctx.device, "--json", report]
    return vidpipe_step(ctx, "memory-probe", "svd-xt", most(gpus), 2400, args, report=report)


def simulate_steps(ctx: Context) -> list[Step]:
    steps = []
    for plan in SIMULATE_PLANS:
        gpus = most_gpus(plan, ctx.gpus) or min_gpus(plan)
        report = ctx.path(f"simulate-{plan}.json")
        args = ["simulate", "--gpus", str(gpus), "--strategy", plan, "--steps", "8", "--samples", "8", "--device",
                ctx.device, "--json", report]
        steps.append(vidpipe_step(ctx, f"simulate-{plan}", "simulate", gpus, 300, args, what=plan,
                                  report=report))
    return steps
