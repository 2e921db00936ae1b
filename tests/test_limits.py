"""Admission limits (vidpipe/limits.py) outside the server: `generate` and job files refuse with the same one
line a server's 422 gives; a job's samples are built lazily; an older job store gains the new column."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_main
from vidpipe.jobspec import check_job
from vidpipe.limits import SEED_MAX, SEED_MIN, Limits
from vidpipe.models.registry import resolve_model
from vidpipe.parallel.plan import ParallelPlan

IMAGE = str(REPO / "examples" / "sunset.png")


@pytest.mark.parametrize(("flags", "words"), [
    (["--frames", "100000"], "frames 100000: more than the limit of 16 (raise it with --max-frames)"),
    (["--height", "100000", "--width", "100000"], "10,000,000,000 pixels a frame, more than the limit of 2,073,600 "
                                                  "(raise it with --max-pixels)"),
    (["--samples", "1000000"], "samples 1000000: more than the limit of 100 samples a job (raise it with "
                               "--max-samples-per-job)"),
    (["--steps", "1000000000"], "steps 1000000000: more than the limit of 1000 (raise it with --max-steps)"),
    (["--seed", str(2**70)], f"seed {2**70}: must be between {SEED_MIN} and {SEED_MAX}"),
    (["--seed", str(SEED_MAX), "--samples", "2"], f"seed {SEED_MAX + 1}: must be between"),
    (["--frames", "12", "--max-frames", "8"], "frames 12: more than the limit of 8 (raise it with --max-frames)"),
])
def test_generate_refuses_past_a_limit_in_one_line_before_any_rank_starts(capsys, tmp_path, flags, words):
    code, err = run_main(capsys, "generate", IMAGE, "--model", "tiny", "--device", "cpu", "--out", str(tmp_path),
                         *flags)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_raised_limit_lets_the_job_through_the_check(tmp_path):
    source = resolve_model("tiny")
    job = check_job({"frames": 20}, None, source, ParallelPlan("dp", 1), limits=Limits(frames=20))
    assert job.largest.frames == 20


def test_a_job_file_refuses_with_the_same_words_naming_its_line(capsys, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": IMAGE, "id": "wide", "sweep": [{"seed": 1}, {"width": 4096,
                                                                                       "height": 4096}]}) + "\n")
    code, err = run_main(capsys, "generate", "--jobs", str(jobs), "--model", "tiny", "--device", "cpu", "--out",
                         str(tmp_path / "out"), "--max-pixels", "1000000")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{jobs} job wide: sweep[1]: height 4096 x width 4096: 16,777,216 pixels a frame, more than the limit " \
           "of 1,000,000 (raise it with --max-pixels)" in err


def test_a_jobs_samples_are_built_one_at_a_time_and_once_without_a_sweep(monkeypatch):
    from vidpipe.models.svd import family

    calls = []
    real = family.job_params
    monkeypatch.setattr(family, "job_params", lambda *a: calls.append(1) or real(*a))
    job = check_job({"samples": 100, "seed": 5}, None, resolve_model("tiny"), ParallelPlan("dp", 1))
    assert job.count == 100 and len(calls) == 1  # checked once: every sample has the same parameters
    samples = job.samples()
    first = next(samples)
    assert (first.index, first.seed) == (0, 5) and len(calls) == 2
    rest = list(samples)
    assert [s.seed for s in rest] == list(range(6, 105)) and len(calls) == 2
