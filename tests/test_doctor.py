"""`vidpipe doctor`: one real run on this machine (JSON on stdout, the table on stderr), and its parsing and
judging logic on fake inputs (nvidia-smi output, GPUs, a Hugging Face cache, probe results)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from rich.console import Console

from tests.conftest import REPO, vidpipe_env
from vidpipe import doctor
from vidpipe.doctor.gpus import check_gpus, check_topology, describe_gpus, describe_links, parse_topology
from vidpipe.doctor.hub import check_hub_cache
from vidpipe.doctor.machine import check_auto_plan, free_disk_gb
from vidpipe.doctor.software import check_cuda, check_worker_server, driver_runs_cuda, version_tuple
from vidpipe.runtime.gpus import GpuInfo
from vidpipe.runtime.preload_probe import PreloadProbe

#: A fake token: the report must show that one is set, never the token itself.
FAKE_TOKEN = "hf_doctorTestTokenThatMustNeverBePrinted"
CPU_MACHINE = shutil.which("nvidia-smi") is None


@pytest.fixture(scope="module")
def doctor_run(tmp_path_factory):
    """One `vidpipe doctor --json -` run for the whole module, with an empty Hugging Face home and a token."""
    home = tmp_path_factory.mktemp("hf-home")
    env = {**vidpipe_env(), "HF_HOME": str(home), "HF_TOKEN": FAKE_TOKEN}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "vidpipe", "doctor", "--json", "-"], capture_output=True,
                            text=True, timeout=300, env=env, cwd=REPO)
    return result, home


@pytest.fixture(scope="module")
def report(doctor_run):
    result, _ = doctor_run
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def by_name(report: dict) -> dict:
    return {check["name"]: check for check in report["checks"]}


def test_every_check_is_reported_with_a_known_status(report):
    names = ["python", "torch", "cuda", "nccl", "diffusers", "transformers", "gpus", "topology", "worker server",
             "ffmpeg", "hub login", "hub cache", "auto plan", "cpu", "memory", "disk"]
    assert [check["name"] for check in report["checks"]] == names
    assert all(check["status"] in doctor.STATUS_STYLES for check in report["checks"])
    assert report["exit_code"] == 0 and report["counts"]["fail"] == 0
    assert sum(report["counts"].values()) == len(names)


def test_versions_and_the_worker_server_on_this_machine(report):
    checks = by_name(report)
    assert checks["torch"]["status"] == "ok" and torch.__version__ in checks["torch"]["found"]
    assert checks["diffusers"]["status"] == checks["transformers"]["status"] == "ok"
    server = checks["worker server"]["details"]
    assert server["clean"] is True and server["device_count_calls"] == 0 and not server["cuda_initialized"]
    assert server["emulated"] == (torch.version.cuda is None)
    assert checks["ffmpeg"]["status"] == "ok" and checks["ffmpeg"]["details"]["path"]
    if torch.version.cuda is None:
        assert checks["nccl"]["status"] == "skipped"


@pytest.mark.skipif(not CPU_MACHINE, reason="checks what a machine without GPUs reports")
def test_a_cpu_machine_is_told_runs_use_the_cpu(report):
    checks = by_name(report)
    assert checks["gpus"]["status"] == "info" and "no GPU visible" in checks["gpus"]["found"]
    assert "--device cpu" in checks["gpus"]["fix"]
    assert checks["topology"]["status"] == "skipped"
    plan = checks["auto plan"]["details"]
    assert (plan["device_type"], plan["world_size"], plan["dtype"]) == ("cpu", 1, "fp32")


def test_the_auto_plan_of_an_uncached_default_model_is_sized_without_a_download(report, doctor_run):
    _, home = doctor_run
    plan = by_name(report)["auto plan"]
    assert plan["details"]["model"] == "stabilityai/stable-video-diffusion-img2vid-xt"
    assert plan["details"]["sized_from"] == "svd-xt-random"
    assert (plan["details"]["frames"], plan["details"]["height"], plan["details"]["width"]) == (25, 576, 1024)
    assert plan["found"].startswith(f"auto -> {plan['details']['plan']}: ") and "not cached" in plan["found"]
    assert not (home / "hub").exists()  # nothing was downloaded, not even a config


def test_hub_rows_say_logged_in_without_the_token_and_find_no_cache(report, doctor_run):
    result, home = doctor_run
    checks = by_name(report)
    assert checks["hub login"]["status"] == "ok" and "HF_TOKEN" in checks["hub login"]["found"]
    assert FAKE_TOKEN not in result.stdout + result.stderr
    assert checks["hub cache"]["status"] == "info" and "no cache yet" in checks["hub cache"]["found"]
    assert checks["hub cache"]["details"]["path"] == str(home / "hub")


def test_the_table_goes_to_stderr(doctor_run):
    result, _ = doctor_run
    assert "vidpipe doctor" in result.stderr and "worker server" in result.stderr
    assert "vidpipe doctor" not in result.stdout  # stdout holds the JSON alone


def test_help_documents_the_exit_status_and_json(capsys):
    from vidpipe.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--json" in out and "Exit status 1" in out


# -- GPUs and their links, from fake nvidia-smi output ------------------------------------------------------------

TOPOLOGY = (
    "\t\x1b[4mGPU0\tGPU1\tGPU2\tGPU3\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \tNV18\tNV18\tSYS\tPXB\t0-47\t0\t\tN/A\n"
    "GPU1\tNV18\t X \tNV18\tSYS\tSYS\t0-47\t0\t\tN/A\n"
    "GPU2\tNV18\tNV18\t X \tSYS\tSYS\t48-95\t1\t\tN/A\n"
    "GPU3\tSYS\tSYS\tSYS\t X \tSYS\t48-95\t1\t\tN/A\n"
    "NIC0\tPXB\tSYS\tSYS\tSYS\t X \t\t\t\t\n"
    "\nLegend:\n\n  X    = Self\n  SYS  = Connection traversing PCIe as well as the SMP interconnect\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n\nNIC Legend:\n\n  NIC0: mlx5_0\n"
)


def gpu(index: int, name: str = "NVIDIA H100 80GB HBM3", used_mib: float = 4.0) -> GpuInfo:
    return GpuInfo(index, f"GPU-{index:04d}", name, 81559.0, 81559.0 - used_mib, used_mib)


def test_parse_topology_reads_the_gpu_pairs_and_ignores_nics_and_the_legend():
    assert parse_topology(TOPOLOGY) == {
        (0, 1): "NV18", (0, 2): "NV18", (0, 3): "SYS", (1, 2): "NV18", (1, 3): "SYS", (2, 3): "SYS",
    }
    assert parse_topology("") == {}
    assert parse_topology("\tGPU0\tCPU Affinity\nGPU0\t X \t0-7\n") == {}  # one GPU: no pairs


def test_topology_judges_only_the_visible_gpus():
    nvlinked = check_topology([gpu(0), gpu(1), gpu(2)], TOPOLOGY)
    assert nvlinked.status == "ok" and nvlinked.found == "NV18 (NVLink): 3 pairs (0-1, 0-2, 1-2)"
    mixed = check_topology([gpu(1), gpu(3)], TOPOLOGY)
    assert mixed.status == "info" and "SYS (between NUMA nodes (CPU sockets)): 1 pair (1-3)" in mixed.found
    assert "dp / pp" in mixed.fix
    assert check_topology([gpu(0)], TOPOLOGY).status == "skipped"
    assert check_topology([gpu(0), gpu(1)], None).status == "warn"


def test_describe_links_puts_the_fastest_first_and_shortens_long_lists():
    links = {(a, b): "PIX" for a in range(4) for b in range(a + 1, 4)} | {(4, 5): "NV4"}
    lines = describe_links(links).splitlines()
    assert lines == ["NV4 (NVLink): 1 pair (4-5)", "PIX (one PCIe bridge): 6 pairs (0-1, 0-2, 0-3, 1-2, ...)"]


def test_gpu_lines_name_the_cuda_ordinal_and_the_drivers_number_when_they_differ():
    lines = describe_gpus([gpu(0), gpu(3, used_mib=20480.0)])
    assert lines == ["cuda:0 NVIDIA H100 80GB HBM3: 79.6 GB, 79.6 GB free",
                     "cuda:1 (GPU 3) NVIDIA H100 80GB HBM3: 79.6 GB, 59.6 GB free"]


def test_gpu_check_statuses():
    assert check_gpus([gpu(0), gpu(1)], None).status == "ok"
    busy = check_gpus([gpu(0), gpu(1, used_mib=30000.0)], "0,1")
    assert busy.status == "warn" and "cuda:1" in busy.fix
    mixed = check_gpus([gpu(0), gpu(1, name="NVIDIA A100-SXM4-40GB")], None)
    assert mixed.status == "warn" and "mixed GPU models" in mixed.fix
    assert check_gpus([gpu(0)], "0").details["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"


# -- versions ------------------------------------------------------------------------------------------------------

def test_driver_and_cuda_versions():
    assert version_tuple("550.54.15") == (550, 54, 15)
    assert version_tuple("12.4") == (12, 4) and version_tuple("N/A") == ()
    assert driver_runs_cuda("550.54.15", "12.4") is True
    assert driver_runs_cuda("470.82.01", "12.1") is False
    assert driver_runs_cuda("470.82.01", "11.8") is True
    assert driver_runs_cuda("550.54.15", "99.0") is None


def test_cuda_check_statuses():
    assert check_cuda(None, None, []).status == "info"
    assert check_cuda(None, "550.54.15", [gpu(0)]).status == "fail"  # GPUs a CPU build cannot use
    assert check_cuda("12.4", "550.54.15", [gpu(0)]).status == "ok"
    too_old = check_cuda("12.4", "470.82.01", [gpu(0)])
    assert too_old.status == "fail" and "525.60" in too_old.found


# -- the worker server, the hub cache, the disk, the verdict -------------------------------------------------------

@pytest.mark.parametrize(("probe", "user_setting", "status"), [
    (PreloadProbe(0, False, True, 1.0), None, "ok"),
    (PreloadProbe(1, False, True, 1.0), None, "warn"),  # emulated: predicts a GPU machine's failure
    (PreloadProbe(1, True, False, 1.0), None, "fail"),  # real CUDA: every GPU run would fail
    (PreloadProbe(0, False, False, 1.0), "0", "fail"),  # the server keeps the user's setting
])
def test_worker_server_statuses(monkeypatch, probe, user_setting, status):
    monkeypatch.setattr("vidpipe.runtime.preload_probe.probe_preload", lambda **_: probe)
    check = check_worker_server(probe.emulated, user_setting)
    assert check.status == status and check.details["clean"] == probe.clean


def test_hub_cache_with_no_cache_and_with_a_partial_model(tmp_path):
    missing = check_hub_cache(tmp_path / "nowhere")
    assert missing.status == "info" and "no cache yet" in missing.found
    repo = tmp_path / "models--stabilityai--stable-video-diffusion-img2vid-xt"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text('{"_class_name": "StableVideoDiffusionPipeline"}')
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    partial = check_hub_cache(tmp_path)
    assert partial.status == "info" and "partly cached, not runnable offline" in partial.found
    assert partial.details["models"] == {"svd-xt": False}


def test_free_disk_is_read_at_the_nearest_existing_folder(tmp_path):
    folder, free_gb = free_disk_gb(tmp_path / "not" / "yet")
    assert folder == tmp_path and free_gb > 0


def test_exit_code_and_table():
    checks = [doctor.Check("torch", "ok", "2.x"), doctor.Check("gpus", "warn", "none", "use --device cpu")]
    assert doctor.exit_code(checks) == 0
    assert doctor.exit_code([*checks, doctor.Check("diffusers", "fail", "cannot import")]) == 1
    console = Console(record=True, width=100)
    console.print(doctor.doctor_table(checks))
    text = console.export_text()
    assert "use --device cpu" in text and "warn" in text
    assert doctor.doctor_report(checks)["counts"] == {"ok": 1, "warn": 1, "fail": 0, "info": 0, "skipped": 0}


def test_a_broken_torch_is_a_failure_the_doctor_reports(tmp_path):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("this torch is broken on purpose")\n')
    env = {**vidpipe_env(), "PYTHONPATH": f"{tmp_path}:{REPO}"}
    out = tmp_path / "doctor.json"
    result = subprocess.run([sys.executable, "-m", "vidpipe", "doctor", "--json", str(out)], capture_output=True,
                            text=True, timeout=120, env=env, cwd=REPO)
    assert result.returncode == 1, result.stderr
    checks = by_name(json.loads(out.read_text()))
    assert checks["torch"]["status"] == "fail" and "broken on purpose" in checks["torch"]["found"]
    assert checks["other checks"]["status"] == "skipped" and "fix torch first" in result.stderr


@pytest.mark.parametrize(("free_mib", "status"), [(81000.0, "ok"), (2000.0, "warn")])
def test_the_auto_plan_on_fake_gpus(monkeypatch, tmp_path, free_mib, status):
    """The CUDA side of the plan row on this CPU machine: torch reads as a CUDA build, nvidia-smi as 2 GPUs."""
    fake_gpus = [GpuInfo(i, f"GPU-{i}", "NVIDIA H100 80GB HBM3", 81559.0, free_mib, 81559.0 - free_mib)
                 for i in range(2)]
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr("vidpipe.runtime.gpus.visible_gpus", lambda: fake_gpus)  # what auto reads the budget from
    check = check_auto_plan(fake_gpus, tmp_path)  # an empty cache: sized from svd-xt-random
    details = check.details
    assert check.status == status
    assert (details["device_type"], details["world_size"], details["dtype"]) == ("cuda", 2, "fp16")
    assert details["budget_gb"] == pytest.approx(free_mib / 1024)
    assert "2 GPUs" in details["reason"] and details["sized_from"] == "svd-xt-random"
