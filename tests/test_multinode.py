"""Two torchrun launchers on this machine as two "nodes" (one rank each, c10d rendezvous): generate runs over both
and gives the 1-rank latents; the report and every file land on rank 0's node."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, read_json, vidpipe_env

TINY = ["--model", "tiny", "--steps", "4", "--device", "cpu", "--max-guidance", "2.5"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(*args: str, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes 2 --nproc-per-node 1 ... -m vidpipe ARGS`, twice at once, as two machines would.
    NOTE: one rank per node: the second node's rank is 1 and its local rank 0, which is what a multi-node mistake
    confuses; each rank is a fresh interpreter importing torch and diffusers, seconds of this suite's budget."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id",
               uuid.uuid4().hex, "-m", "vidpipe", *args]
    env = {**vidpipe_env(), "VIDPIPE_THREADS_PER_RANK": "1"}
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for _ in range(2)]
    results = []
    for node in nodes:
        out, err = node.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(command, node.returncode, out, err))
    return results


# One case: the two nodes' rendezvous and hand-offs are the same for every plan and command (each case costs ~30 s
# of the suite's 10-minute budget); generate's pp crosses the nodes at a stage boundary, and its report and files
# must land on rank 0's node. `simulate` under torchrun is tested on one node (tests/test_simulate.py).


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """The 1-rank run the two nodes' generate is compared with: (its output folder, the model cache)."""
    from vidpipe.cli import main

    root = tmp_path_factory.mktemp("one")
    # NOTE: in this process, its rank from the test session's warm worker server (no interpreter start, no preload).
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exit_info:
        patch.setenv("VIDPIPE_THREADS_PER_RANK", "1")
        main(["generate", str(REPO / "examples" / "sunset.png"), *TINY, "--samples", "2", "--format", "gif",
              "--save-latents", "--out", str(root / "out"), "--gpus", "1", "--cache-dir", str(root / "cache")])
    assert exit_info.value.code == 0
    return root / "out", root / "cache"


@pytest.mark.parametrize("strategy", ["pp"])
def test_generate_over_two_nodes_equals_one_rank(tmp_path, one_rank, strategy):
    reference, cache = one_rank
    out = tmp_path / "nodes"
    nodes = two_nodes("generate", str(REPO / "examples" / "sunset.png"), *TINY, "--samples", "2", "--strategy",
                      strategy, "--format", "gif", "--save-latents", "--out", str(out), "--cache-dir",
                      str(cache), "--json", str(tmp_path / "r.json"))
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    report = read_json(tmp_path / "r.json")
    assert report["world_size"] == 2
    # Only rank 0's machine decodes: every file is written beside the report.
    assert {s["decoded_on_rank"] for s in report["samples"]} == {0}
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(entry["sample"] for entry in manifest) == [0, 1]
    for i in range(2):
        name = f"sunset_s{i}_seed{i}.latents.safetensors"
        assert torch.equal(load_file(out / name)["latents"], load_file(reference / name)["latents"])
