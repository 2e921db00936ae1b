"""Bad input: one line that says what is wrong and what to do, exit code 2, no traceback."""

from __future__ import annotations

import pytest

from tests.conftest import run_main
from vidpipe.cli import main


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gpus", "0"], "--gpus 0"),
        (["--steps", "3", "--gpus", "7"], "at least one step per stage (3 < 7)"),
        (["--samples", "-1"], "--samples -1"),
        (["--latent-shape", "1", "4", "14", "40"], "--latent-shape"),
        (["--latent-shape", "1", "4", "14", "40", "0"], "every size must be at least 1"),
        (["--strategy", "zigzag"], "unknown axis 'zigzag'; axes: pp, dp (samples), cfg, sp"),
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


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--strategy", "dp2.tp2", "--gpus", "4"], "unknown axis 'tp'"),
        (["--strategy", "pp2.dp2", "--gpus", "4"], "two sample axes (pp, dp)"),
        (["--strategy", "dp3.cfg2.sp2", "--gpus", "8"], "dp3 x cfg2 x sp2 = 12 != --gpus 8"),
        (["--strategy", "cfg2.sp3", "--gpus", "8"], "cfg2 x sp3 = 6 does not divide --gpus 8"),
        (["--strategy", "cfg3", "--gpus", "3"], "cfg3: cfg splits the guidance batch of 2"),
        (["--strategy", "sp8", "--gpus", "8", "--latent-shape", "1", "4", "7", "8", "8"], "(sp8 > 7)"),
        (["--strategy", "pp4", "--gpus", "4", "--steps", "3"], "at least one step per stage (3 < 4)"),
        (["--strategy", "cfg2.sp2.fsdp2", "--gpus", "4"], "fsdp shards over the ranks of their group"),
        (["--strategy", "sp2.sp2", "--gpus", "4"], "axis 'sp' given twice"),
        (["--strategy", "auto"], "--strategy auto chooses a plan for SVD jobs"),
    ],
)
def test_bad_plans_are_one_line_and_exit_2(capsys, args, expected):
    code, err = run_main(capsys, "simulate", *args)
    assert code == 2, err
    assert expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
