"""Bad input: one line that says what is wrong and what to do, exit code 2, no traceback."""

from __future__ import annotations

import pytest

from tests.conftest import run_main
from vidpipe.cli import main


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gpus", "0"], "--gpus 0"),
        (["--steps", "3", "--gpus", "7"], "at least one step per rank (3 < 7)"),
        (["--samples", "-1"], "--samples -1"),
        (["--latent-shape", "1", "4", "14", "40"], "--latent-shape"),
        (["--latent-shape", "1", "4", "14", "40", "0"], "every size must be at least 1"),
        (["--strategy", "zigzag"], "unknown; choose one of pp, dp"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--step-ms", "-5"], "--step-ms"),
    ],
)
def test_simulate_usage_errors(capsys, args, expected):
    code, err = run_main(capsys, "simulate", *args)
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA messages")
@pytest.mark.parametrize(("args", "expected"), [
    (["--device", "cuda"], "no CUDA device"),
    (["--backend", "nccl", "--device", "cpu"], "--backend nccl needs CUDA"),
])
def test_cuda_flags_without_cuda(capsys, args, expected):
    code, err = run_main(capsys, "simulate", *args)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_unknown_command_is_a_usage_error(capsys):
    code, err = run_main(capsys, "simulatte")
    assert code == 2 and "simulatte" in err


def test_help_explains_every_option(capsys):
    code = None
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--help"])
    code = exit_info.value.code
    out = capsys.readouterr().out
    assert code == 0
    for option in ("--gpus", "--strategy", "--steps", "--samples", "--warmup-samples", "--latent-shape",
                   "--step-ms", "--device", "--dtype", "--backend", "--seed", "--json", "--verbose"):
        assert option in out
