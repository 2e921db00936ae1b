"""Step assignment for the step pipeline: contiguous blocks, as even as possible."""

from __future__ import annotations


def block_sizes(total_steps: int, world_size: int) -> list[int]:
    """Steps per rank; the first `total_steps % world_size` ranks take one extra step (30 on 7: 5,5,4,4,4,4,4)."""
    if world_size < 1 or total_steps < world_size:
        raise ValueError(f"cannot cut {total_steps} steps into {world_size} non-empty blocks")
    base, extra = divmod(total_steps, world_size)
    return [base + (1 if rank < extra else 0) for rank in range(world_size)]


def steps_for_rank(total_steps: int, world_size: int, rank: int) -> range:
    """The contiguous block of schedule indices (0 = noisiest) that `rank` runs."""
    sizes = block_sizes(total_steps, world_size)
    start = sum(sizes[:rank])
    return range(start, start + sizes[rank])


def describe_blocks(total_steps: int, world_size: int, unit: str = "rank") -> str:
    """'30 steps on 7 ranks: ranks 0-1 run 5 steps, ranks 2-6 run 4' (for the report; `unit` may be 'stage')."""
    sizes = block_sizes(total_steps, world_size)
    if len(set(sizes)) == 1:
        return f"{total_steps} steps on {world_size} {unit}s: {sizes[0]} each"
    extra = total_steps % world_size
    longer = f"{unit} 0" if extra == 1 else f"{unit}s 0-{extra - 1}"
    shorter = f"{unit} {extra}" if extra == world_size - 1 else f"{unit}s {extra}-{world_size - 1}"
    return (
        f"{total_steps} steps on {world_size} {unit}s: {longer} run {sizes[0]} steps, {shorter} run {sizes[-1]}"
    )


def steps_of(model, sample) -> int:
    """The sample's number of denoising steps: its own (a job file's or a server's sample), else the model's."""
    return sample.params.steps if sample.params is not None else model.num_steps
