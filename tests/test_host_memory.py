"""A CPU rank keeps the memory it frees for its next tensors (runtime/host_memory.py)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from vidpipe.runtime import host_memory
from vidpipe.runtime.host_memory import keep_freed_memory, users_own_malloc_settings

# A transformer-like loop (feed-forward and attention scores at wan-small's token count): page faults per round.
FAULTS_PER_ROUND = """
import json, resource, sys, torch
from vidpipe.runtime.host_memory import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(1)
x, w1, w2 = torch.randn(1200, 768), torch.randn(768, 3072) / 30, torch.randn(3072, 768) / 50
faults = []
for _ in range(int(sys.argv[1])):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    h = x
    for _ in range(3):
        h = h + torch.nn.functional.gelu(h @ w1) @ w2
        scores = torch.softmax(h[:, :64] @ h[:, :64].T, -1) @ h
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults_per_round(rounds: int, **env) -> dict:
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    run = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND, str(rounds)], capture_output=True, text=True,
                         check=True, env=env, timeout=120)
    return json.loads(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_after_the_first_round_a_cpu_rank_faults_in_no_new_pages():
    kept = _faults_per_round(8, VIDPIPE_HOST_MALLOC=None)
    assert kept["applied"].startswith("kept: mmap above 32 MB, trim above 512 MB")
    assert kept["faults"][0] > 1000  # the first round grows the heap
    assert statistics.median(kept["faults"][1:]) == 0, kept["faults"]  # later rounds reuse it (a few, a little)
    # With glibc's own defaults the same loop faults pages in again in most rounds (here a median of 900 to
    # 21,000 a round, depending on where the heap's first blocks fell): no figure to assert there.


def test_the_users_own_malloc_settings_win(monkeypatch):
    monkeypatch.setattr(host_memory, "applied", host_memory.applied)  # restored after the test
    monkeypatch.setenv("VIDPIPE_HOST_MALLOC", "system")
    assert keep_freed_memory() == "the user's (VIDPIPE_HOST_MALLOC=system)" == host_memory.applied  # no mallopt
    assert users_own_malloc_settings({}) is None
    assert users_own_malloc_settings({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.rtld.nns=2"}) is None
    assert users_own_malloc_settings({"MALLOC_ARENA_MAX_": "2"}) == "MALLOC_ARENA_MAX_"
    assert users_own_malloc_settings({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == "GLIBC_TUNABLES"
    assert users_own_malloc_settings({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD"
    assert users_own_malloc_settings({"VIDPIPE_HOST_MALLOC": "system"}) == "VIDPIPE_HOST_MALLOC=system"
