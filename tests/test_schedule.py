import pytest

from vidpipe.strategies.schedule import block_sizes, describe_blocks, steps_for_rank


def test_even_split():
    assert block_sizes(28, 7) == [4] * 7
    assert [steps_for_rank(28, 7, r) for r in (0, 6)] == [range(0, 4), range(24, 28)]


def test_uneven_split_gives_the_remainder_to_the_first_ranks():
    assert block_sizes(30, 7) == [5, 5, 4, 4, 4, 4, 4]
    blocks = [steps_for_rank(30, 7, r) for r in range(7)]
    assert [list(b) for b in blocks][0] == [0, 1, 2, 3, 4]
    # contiguous, non-overlapping, covering every step once
    assert [i for b in blocks for i in b] == list(range(30))
    assert describe_blocks(30, 7) == "30 steps on 7 ranks: ranks 0-1 run 5 steps, ranks 2-6 run 4"


def test_fewer_steps_than_ranks_is_refused():
    with pytest.raises(ValueError, match="3 steps into 7"):
        block_sizes(3, 7)


def test_blocks_break_at_the_expert_switch_when_they_can():
    # Wan 2.2 A14B, 40 steps: the low-noise expert takes over at step 17 -> one expert per stage on pp2.
    assert block_sizes(40, 2, switch=17) == [17, 23]
    assert steps_for_rank(40, 2, 1, switch=17) == range(17, 40)
    # more stages: as many on each side as keeps the longest block shortest, still broken at the switch
    assert block_sizes(40, 4, switch=17) == [9, 8, 12, 11]
    assert block_sizes(6, 3, switch=2) == [2, 2, 2]
    assert block_sizes(5, 4, switch=1) == [1, 2, 1, 1]
    assert describe_blocks(40, 2, "stage", switch=17) == (
        "40 steps on 2 stages: stage 0 runs 17 steps, stage 1 runs 23 "
        "(the blocks break at step 17, where the low-noise expert takes over)")


def test_blocks_are_even_where_they_cannot_break_at_the_switch():
    assert block_sizes(40, 1, switch=17) == [40]  # one stage holds both experts
    assert block_sizes(6, 2, switch=None) == [3, 3]  # one expert
    assert block_sizes(6, 2, switch=6) == [3, 3]  # no switch inside the schedule
    assert describe_blocks(6, 2, switch=None) == "6 steps on 2 ranks: 3 each"
