"""The parallel plan: a small table of named degrees, checked once (torchtitan's `ParallelDims` is the model).

A plan is written as axes joined by '.', in any order, each a name with an optional degree:

    sample axes (at most one): pp (pipeline stages), dp (groups running whole samples)
    group axes (split one sample inside a group): cfg (2: the guidance batch), sp (K: the frames)
    fsdp: shards the UNet's parameters over the ranks of each group. Alone (fsdp, dp2.fsdp4) the group computes
          every sample in lockstep; beside cfg/sp it takes no degree and shards over their ranks.

The sample axis without a degree, or absent (dp), takes the ranks left over: `cfg2` on 8 GPUs is `dp4.cfg2`.
Ranks are laid out row-major over (sample, cfg, sp, fsdp): a group is a block of consecutive ranks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from vidpipe.errors import UsageError

SAMPLE_AXES = ("pp", "dp")
GROUP_AXES = ("cfg", "sp", "fsdp")
AXES = (*SAMPLE_AXES, *GROUP_AXES)
#: `generate`'s default: the plan is chosen from the job and the machine (`parallel/auto.py`).
AUTO = "auto"

_AXIS = re.compile(r"^([a-z]+)(\d*)$")
_HINT = "axes: pp, dp (samples), cfg, sp (one sample), fsdp (parameters), e.g. dp2.cfg2.sp2"


@dataclass(frozen=True)
class PlanSpec:
    """A plan as written, before the world size is known: {axis: degree or None}, in the order given."""

    text: str
    degrees: dict[str, int | None]

    @property
    def sample_axis(self) -> str:
        return next((axis for axis in self.degrees if axis in SAMPLE_AXES), "dp")

    def resolve(self, world_size: int, flag: str = "--gpus") -> ParallelPlan:
        """The plan on `world_size` ranks; a UsageError with the arithmetic when the degrees do not fit."""
        d = self.degrees
        cfg, sp = d.get("cfg") or 1, d.get("sp") or 1
        fsdp = "fsdp" in d
        splits = cfg * sp > 1
        sample_degree = d.get(self.sample_axis)
        if fsdp and not splits and d["fsdp"] is None:
            # fsdp alone without a degree: the sample axis' degree (or 1) fixes the group size.
            groups = sample_degree or 1
            if world_size % groups:
                raise UsageError(f"--strategy {self.text}: {self.sample_axis}{groups} does not divide "
                                 f"{flag} {world_size}; use a divisor of {world_size}")
            return ParallelPlan(self.sample_axis, groups, 1, 1, world_size // groups, True)
        shard = d["fsdp"] if fsdp and not splits else 1
        group = cfg * sp * shard
        if sample_degree is None:
            if world_size % group:
                raise UsageError(
                    f"--strategy {self.text}: {self._product(None, cfg, sp, shard)} = {group} does not divide "
                    f"{flag} {world_size}; the {self.sample_axis} axis takes the ranks left over, so use "
                    f"{flag} {group * max(1, world_size // group)} or another plan")
            sample_degree = world_size // group
        if sample_degree * group != world_size:
            raise UsageError(f"--strategy {self.text}: {self._product(sample_degree, cfg, sp, shard)} = "
                             f"{sample_degree * group} != {flag} {world_size}")
        return ParallelPlan(self.sample_axis, sample_degree, cfg, sp, shard, fsdp)

    def _product(self, sample_degree: int | None, cfg: int, sp: int, shard: int) -> str:
        factors = [f"{self.sample_axis}{sample_degree}"] if sample_degree is not None else []
        factors += [f"{name}{degree}" for name, degree in (("cfg", cfg), ("sp", sp), ("fsdp", shard)) if degree > 1]
        return " x ".join(factors or ["1"])


def parse_plan(text: str, flag: str = "--strategy") -> PlanSpec:
    """'dp2.cfg2.sp2' -> PlanSpec; a one-line UsageError (naming `flag`) for anything that is not a plan."""
    text = text.strip()
    if not text:
        raise UsageError(f"{flag}: empty; {_HINT}")
    degrees: dict[str, int | None] = {}
    for part in text.lower().split("."):
        match = _AXIS.match(part)
        if not match or match.group(1) not in AXES:
            name = match.group(1) if match else part
            raise UsageError(f"{flag} {text}: unknown axis '{name}'; {_HINT}")
        axis, digits = match.group(1), match.group(2)
        if axis in degrees:
            raise UsageError(f"{flag} {text}: axis '{axis}' given twice")
        degree = int(digits) if digits else None
        if degree is not None and degree < 1:
            raise UsageError(f"{flag} {text}: {part}: a degree is a whole number of ranks, at least 1")
        degrees[axis] = degree
    sample_axes = [axis for axis in degrees if axis in SAMPLE_AXES]
    if len(sample_axes) > 1:
        raise UsageError(f"{flag} {text}: two sample axes ({', '.join(sample_axes)}); a plan has at most one: "
                         "pp (stages) or dp (groups running whole samples)")
    if degrees.get("cfg") not in (None, 2):
        raise UsageError(f"{flag} {text}: cfg{degrees['cfg']}: cfg splits the guidance batch of 2 "
                         "(unconditional, conditional), so its degree is 2; write cfg or cfg2")
    if "cfg" in degrees:
        degrees["cfg"] = 2
    if degrees.get("fsdp") is not None and (degrees.get("cfg") or 1) * (degrees.get("sp") or 1) > 1:
        raise UsageError(f"{flag} {text}: beside cfg/sp, fsdp shards over the ranks of their group and takes "
                         f"no degree of its own; write {_without_fsdp_degree(text)}")
    return PlanSpec(text, degrees)


def _without_fsdp_degree(text: str) -> str:
    return re.sub(r"fsdp\d+", "fsdp", text.lower())


@dataclass(frozen=True)
class ParallelPlan:
    """Degrees of every axis on a known world size. Groups of `group_size` consecutive ranks split one sample."""

    sample_axis: str  # "pp" | "dp"
    groups: int  # pp stages, or dp groups
    cfg: int = 1
    sp: int = 1
    shard: int = 1  # fsdp alone: ranks of a group computing in lockstep, each holding 1/shard of the UNet
    fsdp: bool = False  # the UNet's parameters sharded over each group

    @property
    def group_size(self) -> int:
        return self.cfg * self.sp * self.shard

    @property
    def world_size(self) -> int:
        return self.groups * self.group_size

    @property
    def name(self) -> str:
        """The plan in full, e.g. 'dp4.cfg2', 'pp2.cfg2.sp2', 'dp2.sp4.fsdp', 'dp1.fsdp8'."""
        parts = [f"{self.sample_axis}{self.groups}"]
        parts += [f"{axis}{degree}" for axis, degree in (("cfg", self.cfg), ("sp", self.sp)) if degree > 1]
        if self.fsdp:
            parts.append(f"fsdp{self.shard}" if self.shard > 1 else "fsdp")
        return ".".join(parts)

    @property
    def splits_sample(self) -> bool:
        """True when a group cuts one sample's steps (cfg or sp): latency axes."""
        return self.cfg * self.sp > 1

    def mesh_dims(self) -> tuple[tuple[str, int], ...]:
        """(name, size) of each mesh dimension, outermost first; size-1 group axes are left out."""
        dims = [(self.sample_axis, self.groups)]
        dims += [(axis, size) for axis, size in (("cfg", self.cfg), ("sp", self.sp), ("fsdp", self.shard)) if size > 1]
        return tuple(dims)

    def check_job(self, steps: int, frames: int | None, guidance: bool) -> None:
        """What the job must give this plan: a step per stage, a frame per sp rank, guidance for cfg."""
        if self.sample_axis == "pp" and steps < self.groups:
            raise UsageError(
                f"--steps {steps} with {self.name}: the step pipeline needs at least one step per stage "
                f"({steps} < {self.groups}); use --steps {self.groups} or more, or fewer pp stages"
            )
        if frames is not None and self.sp > frames:
            raise UsageError(
                f"{self.name} with {frames} frames: each rank of an sp group needs at least one frame "
                f"(sp{self.sp} > {frames}); use sp{frames} or less, or more --frames"
            )
        if self.cfg > 1 and not guidance:
            raise UsageError(
                f"{self.name}: cfg splits the classifier-free-guidance batch, and guidance is off "
                "(SVD: --max-guidance <= 1; Wan: --guidance-scale <= 1); raise it or drop cfg"
            )


def frame_split(frames: int, parts: int) -> list[int]:
    """Frames per rank of an sp group: as even as possible, the first ranks one more (25 on 4: 7, 6, 6, 6)."""
    base, extra = divmod(frames, parts)
    return [base + (1 if rank < extra else 0) for rank in range(parts)]


def chunk_ranges(frames: int, chunk: int, parts: int) -> list[range]:
    """Cut `frames` into at most `parts` contiguous ranges of whole decode chunks (the last chunk may be short):
    each range decodes exactly as the pipeline decodes those chunks."""
    chunks = math.ceil(frames / chunk)
    ranges, start = [], 0
    for count in frame_split(chunks, min(parts, chunks)):
        stop = min(frames, start + count * chunk)
        ranges.append(range(start, stop))
        start = stop
    return ranges
