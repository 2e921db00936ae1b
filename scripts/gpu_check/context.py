"""What every part of the check shares: where the repository is, a step, and what the plan depends on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).resolve().parent  # `python scripts/gpu_check SUBCOMMAND` runs this package
IMAGE = "examples/sunset.png"


@dataclass
class Step:
    """One command of the check. `what` names it in a skip reason ("cfg2.sp2 needs 4 GPUs, 1 visible")."""

    name: str
    group: str
    gpus: int
    timeout_s: float
    argv: list[str]
    what: str = ""
    quick: bool = False
    env: dict[str, str] = field(default_factory=dict)
    report: str | None = None  # the JSON report the step writes
    stdout_to: str | None = None  # stdout goes here instead of the log
    vidpipe_commands: list[list[str]] = field(default_factory=list)  # every vidpipe command line it runs
    workdir: str | None = None  # its output folder, emptied before it runs
    expect_mp4: str | None = None  # a folder that must hold non-empty MP4 files afterwards
    skip_reason: str | None = None
    log: str = ""  # its output (set by build_steps: OUT/NAME.log)


@dataclass(frozen=True)
class Context:
    """What the plan depends on: the machine, the mode and the tools."""

    gpus: int
    quick: bool
    out: Path
    python: list[str]
    vidpipe: list[str]
    torchrun: list[str]
    device: str = "cuda"
    dist_timeout: bool = False  # `generate --help` shows --dist-timeout
    doctor_json_takes_path: bool = True

    def path(self, name: str) -> str:
        return rel(self.out / name)


def rel(path: Path | str) -> str:
    """`path` as the steps see it: relative to the repository (their working directory) when inside it."""
    path = Path(path)
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)
