"""Step assignment for the step pipeline: contiguous blocks, as even as possible, broken at the expert switch
of a two-expert model (Wan 2.2 A14B) when they can be, so that no stage holds both experts."""

from __future__ import annotations

import math


def even_sizes(total_steps: int, parts: int) -> list[int]:
    """`total_steps` in `parts` blocks; the first `total_steps % parts` take one extra step (30 on 7: 5,5,4,4,4,4,4)."""
    base, extra = divmod(total_steps, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


def stages_before_switch(total_steps: int, world_size: int, switch: int | None) -> int | None:
    """How many stages run the steps before `switch` (the low-noise expert's first step) so that the longest block
    is as short as it can be; None when the blocks cannot break there (one stage, or no switch inside the
    schedule). NOTE: with at least as many steps as stages, some split always fits."""
    if switch is None or world_size < 2 or not 0 < switch < total_steps:
        return None
    after = total_steps - switch
    fits = [k for k in range(1, world_size) if k <= switch and world_size - k <= after]
    return min(fits, key=lambda k: max(math.ceil(switch / k), math.ceil(after / (world_size - k))), default=None)


def block_sizes(total_steps: int, world_size: int, switch: int | None = None) -> list[int]:
    """Steps per rank (stage). `switch`: the step where a two-expert model changes experts; the blocks break there
    when they can (40 steps, switch 17, 2 stages: 17, 23), else they are as even as possible."""
    if world_size < 1 or total_steps < world_size:
        raise ValueError(f"cannot cut {total_steps} steps into {world_size} non-empty blocks")
    before = stages_before_switch(total_steps, world_size, switch)
    if before is None:
        return even_sizes(total_steps, world_size)
    return even_sizes(switch, before) + even_sizes(total_steps - switch, world_size - before)


def steps_for_rank(total_steps: int, world_size: int, rank: int, switch: int | None = None) -> range:
    """The contiguous block of schedule indices (0 = noisiest) that `rank` runs."""
    sizes = block_sizes(total_steps, world_size, switch)
    start = sum(sizes[:rank])
    return range(start, start + sizes[rank])


def describe_blocks(total_steps: int, world_size: int, unit: str = "rank", switch: int | None = None) -> str:
    """'30 steps on 7 ranks: ranks 0-1 run 5 steps, ranks 2-6 run 4' (for the report; `unit` may be 'stage'),
    and where the blocks break at the expert switch, say so."""
    sizes = block_sizes(total_steps, world_size, switch)
    if len(set(sizes)) == 1:
        how = f"{total_steps} steps on {world_size} {unit}s: {sizes[0]} each"
    else:
        runs: list[tuple[int, int, int]] = []  # (first, last, size) of equal neighbours
        for k, size in enumerate(sizes):
            if runs and runs[-1][2] == size:
                runs[-1] = (runs[-1][0], k, size)
            else:
                runs.append((k, k, size))
        said = []
        for k, (first, last, size) in enumerate(runs):
            who = f"{unit} {first} runs" if first == last else f"{unit}s {first}-{last} run"
            said.append(f"{who} {size} steps" if k == 0 else f"{who} {size}")
        how = f"{total_steps} steps on {world_size} {unit}s: " + ", ".join(said)
    if stages_before_switch(total_steps, world_size, switch) is not None:
        how += f" (the blocks break at step {switch}, where the low-noise expert takes over)"
    return how


def steps_of(model, sample) -> int:
    """The sample's number of denoising steps: its own (a job file's or a server's sample), else the model's."""
    return sample.params.steps if sample.params is not None else model.num_steps


def switch_of(model, steps: int) -> int | None:
    """The step where `model` changes experts on a schedule of `steps` (None: one expert)."""
    expert_switch = getattr(model, "expert_switch", None)
    return expert_switch(steps) if expert_switch is not None else None
