"""`vidpipe doctor`: what this machine can run, and what to fix."""

from __future__ import annotations

import typer

from vidpipe.cli.options import CacheDir, JsonPath


def doctor(
    json_path: JsonPath = None,
    cache_dir: CacheDir = None,
) -> None:
    """Check this machine: versions (python, torch, CUDA, NCCL, driver, diffusers, transformers), the GPUs and how
    they connect, the worker server's CUDA-clean preload, ffmpeg, the Hugging Face login and cache, the plan
    `generate --strategy auto` would choose, CPU cores, memory and disk.

    Each check says ok, warn, fail, info or skipped, what it found and what to do. Nothing touches the network
    and no CUDA context is created (GPUs are read with nvidia-smi). Takes 10-40 s: the worker server's preload is
    imported once, in a fresh interpreter.

    Exit status 1 when a check fails: what stops every run, or on a machine with GPUs every GPU run (torch,
    diffusers or transformers cannot be imported; the worker server cannot preload, or initialises CUDA; torch
    cannot use the GPUs: a CPU build, or a driver too old for its CUDA). 0 otherwise: no GPU, no ffmpeg or no
    cached model limits some runs only (warn or info). Examples:

        vidpipe doctor

        vidpipe doctor --json doctor.json
    """
    from rich.console import Console

    from vidpipe.doctor import doctor_report, doctor_table, exit_code, run_checks, write_report

    checks = run_checks(cache_dir)
    # A console of its own, not vidpipe.report's: that module imports torch, and a broken torch is a finding here.
    Console(stderr=True).print(doctor_table(checks))
    write_report(doctor_report(checks), json_path)
    raise typer.Exit(exit_code(checks))
