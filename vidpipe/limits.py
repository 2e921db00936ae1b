"""Admission limits: the largest job a server (or `generate`, or a job file) takes, checked before anything is
queued or any process starts. Each refusal is one line that names the limit and the flag that raises it, with the
same words wherever the job came from.

The defaults are generous for real work and small enough that one mistyped request cannot take a shared machine
down: 100 samples a job, 1000 steps (a scheduler's training timesteps), 1920 x 1080 pixels a frame, and the
model's own maximum frame count (`models/<family>/family.py max_frames`). Seeds are exactly the range
`torch.Generator.manual_seed` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidpipe.errors import UsageError

#: `torch.Generator.manual_seed` takes any integer in this range (a negative seed wraps to 2**64 + seed).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
DEFAULT_MAX_SAMPLES_PER_JOB = 100
DEFAULT_MAX_STEPS = 1000
DEFAULT_MAX_PIXELS = 1920 * 1080


@dataclass(frozen=True)
class Limits:
    samples_per_job: int = DEFAULT_MAX_SAMPLES_PER_JOB
    frames: int | None = None  # None: the model's own maximum
    pixels: int = DEFAULT_MAX_PIXELS
    steps: int = DEFAULT_MAX_STEPS

    def __post_init__(self):
        for flag, value in (("--max-samples-per-job", self.samples_per_job), ("--max-frames", self.frames),
                            ("--max-pixels", self.pixels), ("--max-steps", self.steps)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} {value}: must be at least 1")

    def for_model(self, source) -> Limits:
        """These limits with the frame limit resolved against the model (its own maximum unless given)."""
        if self.frames is not None:
            return self
        from vidpipe.models.registry import family_module

        return Limits(self.samples_per_job, family_module(source.family).max_frames(source), self.pixels, self.steps)

    def check_count(self, samples: int, sweep: bool = False) -> None:
        """A job's number of samples (or its sweep's entries), before any of them is built."""
        if samples > self.samples_per_job:
            what = f"a sweep of {samples} entries" if sweep else f"samples {samples}"
            raise LimitExceeded(f"{what}: more than the limit of {self.samples_per_job} samples a job "
                                "(raise it with --max-samples-per-job)")

    def check_seeds(self, first: int, last: int) -> None:
        for seed in (first, last):
            if not SEED_MIN <= seed <= SEED_MAX:
                raise LimitExceeded(f"seed {seed}: must be between {SEED_MIN} and {SEED_MAX} (what "
                                    "torch.Generator.manual_seed takes; sample i uses seed + i)")

    def check_sample(self, steps: int, frames: int, height: int, width: int) -> None:
        """One sample's resolved steps and size."""
        if steps > self.steps:
            raise LimitExceeded(f"steps {steps}: more than the limit of {self.steps} (raise it with --max-steps)")
        if self.frames is not None and frames > self.frames:
            raise LimitExceeded(f"frames {frames}: more than the limit of {self.frames} (raise it with --max-frames)")
        if height * width > self.pixels:
            raise LimitExceeded(f"height {height} x width {width}: {height * width:,} pixels a frame, more than the "
                                f"limit of {self.pixels:,} (raise it with --max-pixels)")


class LimitExceeded(UsageError):
    """A job larger than the limits: a usage error (422 from a server, exit 2 from generate)."""
