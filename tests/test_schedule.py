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
