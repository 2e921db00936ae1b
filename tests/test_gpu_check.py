"""scripts/gpu-check.sh without a GPU: the plan of steps on 1 and 8 GPUs (what is skipped, and why), every
vidpipe command line it would run checked against the CLI itself (a typo would waste the only GPU run), and the
JSON and markdown it writes, assembled from fake step results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, vidpipe_env

SCRIPT = REPO / "scripts" / "gpu-check.sh"
sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402 - the package scripts/gpu_check/, found through the path above

QUICK_ON_ONE_GPU = {"versions", "topology", "doctor", "generate-dp", "dtype-fp32", "dtype-fp16", "dtype-compare",
                    "serve-dp1", "fault-raise-1rank", "torchrun-1", "nccl-debug", "bench-repeats", "svd-xt-bench"}


def dry_run(tmp_path: Path, *args: str) -> tuple[str, dict]:
    """`gpu-check.sh OUT --dry-run ARGS` as a user runs it: (what it printed, the plan it wrote)."""
    plan = tmp_path / "plan.json"
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "--dry-run", *args, "--plan-json", str(plan)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=vidpipe_env())
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out").exists(), "a dry run writes no results"
    return done.stdout, {step["name"]: step for step in json.loads(plan.read_text())["steps"]}


def running(steps: dict) -> set[str]:
    return {name for name, step in steps.items() if step["skip_reason"] is None}


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_on_one_gpu_what_needs_more_is_skipped_with_the_reason(tmp_path):
    printed, steps = dry_run(tmp_path, "--gpus", "1")
    assert steps["generate-cfg2.sp2"]["skip_reason"] == "cfg2.sp2 needs 4 GPUs, 1 visible"
    assert "[skip] generate   generate-cfg2.sp2: cfg2.sp2 needs 4 GPUs, 1 visible" in printed
    assert steps["fault-kill-sp2"]["skip_reason"] == "a fault in sp2 needs 2 GPUs, 1 visible"
    assert steps["serve-pp2"]["skip_reason"] == "serve pp2 needs 2 GPUs, 1 visible"
    assert all(steps[name]["gpus"] <= 1 for name in running(steps))
    assert {"generate-dp", "fault-raise-1rank", "torchrun-1", "memory-probe", "svd-xt-bench", "simulate-dp",
            "bench-repeats", "nccl-debug", "dtype-bf16"} <= running(steps)
    # 1 rank through decode to MP4, with latents for the comparisons
    generate = steps["generate-dp"]
    assert generate["expect_mp4"] and "--save-latents" in generate["argv"] and "mp4" in generate["argv"]
    svd_xt = steps["svd-xt-bench"]["argv"]
    assert "diffusers,dp" in svd_xt and "both" in svd_xt and "svd-xt-random" in svd_xt
    assert " --frames 25 --height 576 --width 1024 --steps 25 " in steps["svd-xt-bench"]["command"]


def test_quick_is_the_essentials_on_one_gpu_within_the_budget(tmp_path):
    printed, steps = dry_run(tmp_path, "--gpus", "1", "--quick")
    assert running(steps) == QUICK_ON_ONE_GPU
    assert steps["memory-probe"]["skip_reason"] == "full run only (not in --quick)"
    assert "budget 480 s" in printed
    assert " --frames 25 --height 576 --width 1024 --steps 25 " in steps["svd-xt-bench"]["command"]
    assert steps["nccl-debug"]["env"] == {"NCCL_DEBUG": "INFO"}
    assert all(steps[name]["timeout_s"] <= 300 for name in running(steps))  # no one step eats the budget


def test_on_eight_gpus_the_hybrids_run(tmp_path):
    printed, steps = dry_run(tmp_path, "--gpus", "8")
    assert running(steps) == set(steps), [s["skip_reason"] for s in steps.values() if s["skip_reason"]]
    for plan in ("cfg2.sp2", "pp2.cfg2", "fsdp.sp2", "sp4.fsdp", "pp2.cfg2.sp2", "cfg2.sp4", "dp2.cfg2.sp2"):
        assert f"generate-{plan}" in steps
    assert {"simulate-cfg2.sp4", "simulate-pp2.cfg2.sp2", "serve-cfg2", "fault-kill-sp2", "torchrun-4",
            "compile-split", "svd-xt-latency"} <= set(steps)
    simulate = steps["simulate-cfg2.sp2"]["argv"]  # the most GPUs the plan fits
    assert simulate[simulate.index("--gpus") + 1] == "8"
    latency = steps["svd-xt-latency"]["argv"]
    assert latency[latency.index("--gpus") + 1] == "1,2,4,8" and "cfg2.sp4" in latency[latency.index("--compare") + 1]
    assert "generate-compare" in steps and "pp2.cfg2.sp2=" in steps["generate-compare"]["command"]
    assert "0 skipped" in printed


#: `vidpipe COMMAND --help`'s options as the script reads them, asked once per command for this module.
HELPS: dict = {}


def vidpipe_help(*commands: str) -> dict:
    """{command: its options} for `commands`, each one's --help run once, two at a time."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [name for name in commands if name not in HELPS]
    with ThreadPoolExecutor(2) as pool:
        for name, options in zip(todo, pool.map(
                lambda name: gpu_check.help_options([sys.executable, "-m", "vidpipe", name]), todo), strict=True):
            HELPS[name] = options
    return {name: HELPS[name] for name in commands}


def all_plans() -> list:
    """The steps of every GPU count, quick and full, as the script builds them here (same --help answers)."""
    options, doctor = vidpipe_help("generate", "doctor").values()
    steps = []
    for gpus in range(1, 9):
        for quick in (False, True):
            ctx = gpu_check.Context(gpus=gpus, quick=quick, out=REPO / "docs" / "results" / "gpu-test",
                                    python=[".venv/bin/python"], vidpipe=[".venv/bin/vidpipe"],
                                    torchrun=[".venv/bin/torchrun"], dist_timeout="--dist-timeout" in options,
                                    doctor_json_takes_path=doctor is None or doctor.get("--json", True))
            steps += gpu_check.build_steps(ctx)
    return steps


def test_every_vidpipe_command_line_parses(monkeypatch):
    """Each vidpipe command any plan runs: its options are in `vidpipe COMMAND --help`, and vidpipe's own parser
    takes the whole line (types included); each plan fits the GPUs it is given and the job (steps, frames)."""
    import typer

    from vidpipe.cli import app
    from vidpipe.parallel.plan import parse_plan

    monkeypatch.chdir(REPO)  # the commands name examples/sunset.png relative to the repository
    commands = typer.main.get_command(app).commands
    vidpipe_help("generate", "serve", "submit", "simulate", "bench", "memory-probe", "doctor")  # asked at once
    helps = {}  # the commands the plans run, and their options
    checked = set()
    for step in all_plans():
        for args in step.vidpipe_commands:
            key = tuple(args)
            if key in checked:
                continue
            checked.add(key)
            name = args[0]
            if name not in helps:
                helps.update(vidpipe_help(name))
            assert helps[name] is not None or name == "doctor", f"vidpipe {name} --help failed"
            if helps[name] is None:  # doctor, before it exists: the step fails at run time, as intended
                continue
            unknown = [a for a in args if a.startswith("--") and a not in helps[name]]
            assert not unknown, f"{step.name}: {unknown} not in vidpipe {name} --help"
            commands[name].make_context(name, list(args[1:]))  # raises on any option or value it refuses
            if "--strategy" in args and name in ("generate", "serve", "simulate"):
                plan = args[args.index("--strategy") + 1]
                gpus = int(args[args.index("--gpus") + 1]) if "--gpus" in args else \
                    int(step.argv[step.argv.index("--nproc-per-node") + 1])
                resolved = parse_plan(plan).resolve(gpus)
                steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 25
                frames = int(args[args.index("--frames") + 1]) if "--frames" in args else None
                resolved.check_job(steps, frames, guidance=True)
    assert {"generate", "serve", "submit", "simulate", "bench", "memory-probe", "doctor"} <= set(helps)


@pytest.mark.parametrize("plan", sorted({p for p, _, _ in gpu_check.GENERATE_PLANS + gpu_check.SERVE_PLANS}
                                        | set(gpu_check.SIMULATE_PLANS)))
def test_the_gpu_counts_chosen_for_a_plan_are_ones_vidpipe_takes(plan):
    from vidpipe.errors import UsageError
    from vidpipe.parallel.plan import parse_plan

    for gpus in range(1, 9):
        try:
            parse_plan(plan).resolve(gpus)
            takes = True
        except UsageError:
            takes = False
        fsdp_on_one = plan == "fsdp" and gpus == 1  # vidpipe takes it; it shards nothing, so the check skips it
        assert gpu_check.plan_fits(plan, gpus) == (takes and not fsdp_on_one), (plan, gpus)


def fake_results(tmp_path: Path) -> dict:
    ctx = gpu_check.Context(gpus=1, quick=True, out=tmp_path, python=["python"], vidpipe=["vidpipe"],
                            torchrun=["torchrun"])
    results = gpu_check.new_results(ctx, 480, False, "nvidia-smi")
    steps = {step.name: step for step in gpu_check.build_steps(ctx)}

    def record(name: str, status: str, **fields) -> dict:
        ran = {"seconds": 12.5, "exit_code": 0} if status != "skipped" else {}
        return {**gpu_check.record_of(steps[name]), "status": status, **ran, **fields}

    generate = {"command": "generate", "plan": "dp1", "world_size": 1, "dtype": "fp16", "latency_mean_s": 0.8,
                "step_time_s": 0.1, "peak_memory_gb_per_rank": [1.25], "peak_reserved_gb_per_rank": [1.5],
                "peak_memory_kind": "cuda_max_memory_allocated", "samples": [{"index": 0}]}
    bench = {"command": "bench", "runs": [
        {"strategy": "diffusers", "world_size": 1, "status": "ok", "verified": True, "step_time_s": 0.52,
         "peak_memory_gb_per_rank": [9.1], "peak_reserved_gb_per_rank": [10.2], "driver_memory_gb_per_rank": [11.0]},
        {"strategy": "dp", "plan": "dp1", "world_size": 1, "status": "ok", "verified": True, "step_time_s": 0.5,
         "step_time_vs_baseline": 0.96, "verify_max_abs_diff": 0.0012, "peak_memory_gb_per_rank": [8.9],
         "peak_reserved_gb_per_rank": [9.8], "driver_memory_gb_per_rank": [10.6]},
        {"strategy": "dp", "world_size": 2, "status": "skipped", "reason": "2 ranks need 2 GPUs"}]}
    nccl_log = ("host:1:1 [0] NCCL INFO NCCL version 2.27.3+cuda12.9\n"
                "host:1:9 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read\n"
                "host:1:9 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read\n")
    versions = {"gpus": [{"index": 0, "name": "NVIDIA H200", "memory_total_mib": 143771.0}], "driver": "570.86",
                "torch": "2.13.0+cu129", "torch_cuda": "12.9", "nccl": "2.27.3", "diffusers": "0.42.1"}
    results["steps"] = [
        record("versions", "ok", figures=versions),
        record("generate-dp", "ok", figures={**gpu_check.figures_from_report(generate), "mp4_files": 2,
                                             "mp4_bytes": [9000, 9100]}),
        record("generate-cfg2.sp2", "skipped"),
        record("serve-dp1", "failed", exit_code=1, reason="exit 1: checks failed",
               figures={"checks": {"ready": True, "cancelled": False}, "summary": {"ready_s": 4.2}}),
        record("nccl-debug", "ok", figures=gpu_check.nccl_lines(nccl_log)),
        record("svd-xt-bench", "ok", figures=gpu_check.figures_from_report(bench)),
    ]
    return results


def test_the_json_and_markdown_from_fake_steps(tmp_path):
    results = gpu_check.finish_results(fake_results(tmp_path), 95.0)
    json_path, markdown_path = gpu_check.write_results(results, tmp_path)
    written = json.loads(json_path.read_text())
    assert written["counts"] == {"ok": 4, "failed": 1, "skipped": 1} and written["exit_code"] == 1
    assert written["environment"]["nccl"] == "2.27.3"
    for step in written["steps"]:
        assert {"name", "command", "gpus", "status", "reason", "seconds", "exit_code", "figures"} <= set(step)
    skipped = next(s for s in written["steps"] if s["name"] == "generate-cfg2.sp2")
    assert skipped["reason"] == "cfg2.sp2 needs 4 GPUs, 1 visible" and skipped["seconds"] is None
    assert "samples" not in written["steps"][1]["figures"]  # the figures, not the whole report
    assert written["steps"][4]["figures"]["nccl_transport_lines"] == ["Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read"]

    markdown = markdown_path.read_text()
    assert "1 x NVIDIA H200; driver 570.86; torch 2.13.0+cu129, CUDA 12.9, NCCL 2.27.3" in markdown
    assert "| generate-dp | 1 | ok | 12.5 | dp1 x1: step 0.100 s, latency 0.80 s; 2 MP4 (18100 B) |" in markdown
    assert "| serve-dp1 | 1 | **FAILED** | 12.5 | exit 1: checks failed (ready_s 4.20, failed checks: cancelled) |" \
        in markdown
    assert "- generate-cfg2.sp2: cfg2.sp2 needs 4 GPUs, 1 visible" in markdown
    assert "dp x1: step 0.500 s, 0.96x stock's step, verified yes, max diff 0.0012" in markdown
    assert "dp x2: skipped (2 ranks need 2 GPUs)" in markdown
    # memory per rank: allocated, reserved and what the driver sees, '-' where a report lacks one
    assert "| generate-dp | dp1 | 1 | 1.25 | 1.50 | - | cuda_max_memory_allocated |" in markdown
    assert "| svd-xt-bench | dp | 1 | 8.90 | 9.80 | 10.60 | - |" in markdown
    assert "- NCCL version 2.27.3+cuda12.9" in markdown and "`Channel 00/0 : 0[0] -> 1[1] via P2P" in markdown
    assert "- serve-dp1: exit 1: checks failed (log `" in markdown


def test_skipped_steps_do_not_fail_the_run(tmp_path):
    results = fake_results(tmp_path)
    results["steps"] = [s for s in results["steps"] if s["status"] != "failed"]
    assert gpu_check.finish_results(results, 1.0)["exit_code"] == 0


def step(tmp_path: Path, name: str, code: str, **fields) -> gpu_check.Step:
    made = gpu_check.Step(name, "test", 0, 30, [sys.executable, "-c", code], **fields)
    made.log = str(tmp_path / f"{name}.log")
    return made


def test_a_step_that_fails_hangs_or_leaves_a_process_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.steps, "GRACE_S", 1.0)
    failed = gpu_check.run_step(step(tmp_path, "fails", "print('vidpipe: error: rank 1 failed: boom'); exit(3)"),
                                30, "t")
    assert (failed["status"], failed["exit_code"]) == ("failed", 3)
    assert failed["reason"] == "exit 3: vidpipe: error: rank 1 failed: boom"

    hung = gpu_check.run_step(step(tmp_path, "hangs", "import time; time.sleep(60)"), 1, "t")
    assert (hung["status"], hung["exit_code"], hung["reason"]) == ("failed", 124, "timed out after 1 s")
    assert hung["seconds"] < 30

    # a child that escapes the step's session: found by its environment marker, named, and killed
    escape = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
              "start_new_session=True)")
    left = gpu_check.run_step(step(tmp_path, "leaves", escape), 30, "t")
    assert left["status"] == "failed" and "1 process(es) left behind: python" in left["reason"]
    assert gpu_check.processes_marked("t-leaves") == []

    no_video = gpu_check.run_step(step(tmp_path, "no-video", "pass", expect_mp4=str(tmp_path / "videos")), 30, "t")
    assert no_video["status"] == "failed" and no_video["reason"].startswith("no MP4 file in")

    missing = gpu_check.Step("missing", "test", 0, 30, [str(tmp_path / "no-such-tool")])
    missing.log = str(tmp_path / "missing.log")
    record = gpu_check.run_step(missing, 30, "t")
    assert record["status"] == "failed" and record["reason"].startswith("cannot start")


def test_latents_are_compared_and_nan_fails(tmp_path):
    import torch
    from safetensors.torch import save_file

    latents = torch.randn(8, 4, 8, 8)
    for name, tensor in (("ref", latents), ("close", latents + 1e-3), ("nan", latents.clone().fill_(float("nan")))):
        (tmp_path / name).mkdir()
        save_file({"latents": tensor}, str(tmp_path / name / "a_s0_seed0.latents.safetensors"))
    report = tmp_path / "compare.json"
    code = gpu_check.main(["compare-latents", "--json", str(report), "--reference", str(tmp_path / "ref"),
                           f"close={tmp_path / 'close'}", f"nan={tmp_path / 'nan'}", f"absent={tmp_path / 'x'}"])
    compared = json.loads(report.read_text())["compared"]
    assert code == 1 and compared["nan"]["nan"] == 8 * 4 * 8 * 8
    assert compared["close"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2) and compared["close"]["files"] == 1
    assert compared["absent"]["missing"] == ["a_s0_seed0.latents.safetensors"]
    assert "NaN 0" in gpu_check.short_figures({"name": "dtype-compare", "figures": json.loads(report.read_text())})


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU driver is here")
def test_without_a_gpu_it_exits_2(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "--quick"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=vidpipe_env())
    assert done.returncode == 2 and "no CUDA GPU visible" in done.stderr


def test_the_budget_stops_what_is_left_and_the_results_are_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check.run, "MIN_START_S", 5.0)
    ctx = gpu_check.Context(gpus=1, quick=True, out=tmp_path / "out", python=[sys.executable], vidpipe=["vidpipe"],
                            torchrun=["torchrun"])
    steps = [step(tmp_path, "first", "import time; time.sleep(2)"), step(tmp_path, "second", "pass")]
    assert gpu_check.run_all(ctx, steps, budget_s=6.0, source="--gpus") == 0
    written = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert [s["status"] for s in written["steps"]] == ["ok", "skipped"]
    assert written["steps"][1]["reason"] == "the time budget of 6 s was spent"
    assert f"JSON: {tmp_path / 'out' / 'gpu-check.json'}" in capsys.readouterr().out


def test_sigterm_stops_the_running_step_and_keeps_the_results(tmp_path):
    """A command limit that runs out sends SIGTERM: the step's processes (in a session of their own) must go too."""
    driver = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(REPO / "scripts")!r})
import gpu_check
ctx = gpu_check.Context(gpus=1, quick=True, out=Path({str(tmp_path / "out")!r}), python=[sys.executable],
                        vidpipe=["vidpipe"], torchrun=["torchrun"])
step = gpu_check.Step("sleeps", "test", 0, 60, [sys.executable, "-c", "import time; time.sleep(61)"])
step.log = {str(tmp_path / "sleeps.log")!r}
sys.exit(gpu_check.run_all(ctx, [step], budget_s=120, source="--gpus"))
"""
    run = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    while "[1/1] sleeps:" not in line:
        line = run.stdout.readline()
        assert line or run.poll() is None, run.stderr.read()
    run.terminate()
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143 and "interrupted (SIGTERM)" in err
    written = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert written["interrupted"] == "SIGTERM" and written["exit_code"] == 143
    assert written["steps"][0]["reason"] == "interrupted by SIGTERM while it ran"
    assert not [p for p in psutil_processes() if p.cmdline()[-1:] == ["import time; time.sleep(61)"]]


def psutil_processes() -> list:
    import psutil

    alive = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                process.cmdline()
                alive.append(process)
        except psutil.Error:
            continue
    return alive


def test_a_step_can_be_stopped_by_signals(tmp_path):
    """The check blocks SIGINT/SIGTERM while it starts a step; the step itself must not inherit that (a server
    that never sees SIGTERM could not be stopped)."""
    shows = step(tmp_path, "mask", "print(next(l for l in open('/proc/self/status') if l.startswith('SigBlk')))")
    assert gpu_check.run_step(shows, 30, "t")["status"] == "ok"
    blocked = int(Path(shows.log).read_text().split()[1], 16)
    assert blocked & (1 << (15 - 1) | 1 << (2 - 1)) == 0  # SIGTERM, SIGINT
