"""Read-ahead decisions, sans-I/O: random reads fetch nothing extra, sequential ones ramp up."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.readahead import ReadPattern


def test_a_reader_from_the_start_ramps_up_to_the_bound() -> None:
    pattern = ReadPattern()
    windows = [len(pattern.record(block, block, max_window=8)) for block in range(7)]
    assert windows == [1, 2, 4, 8, 8, 8, 8]


def test_reads_within_one_block_do_not_grow_the_window() -> None:
    pattern = ReadPattern()
    pattern.record(0, 0, 16)
    assert [len(pattern.record(0, 0, 16)) for _ in range(30)] == [1] * 30


def test_a_jump_resets_the_window_and_the_next_sequential_read_starts_small() -> None:
    pattern = ReadPattern()
    for block in range(5):
        pattern.record(block, block, 16)
    assert pattern.record(100, 100, 16) == range(101, 101)
    assert pattern.record(101, 101, 16) == range(102, 103)


def test_slightly_out_of_order_requests_count_as_sequential() -> None:
    pattern = ReadPattern()
    for block in range(4):
        pattern.record(block, block, 16)
    window = pattern.window
    pattern.record(2, 2, 16)  # the kernel's readahead answered a little late
    assert pattern.window == window
    assert len(pattern.record(4, 4, 16)) == 2 * window


@given(
    reads=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3)), max_size=200),
    max_window=st.integers(0, 64),
)
def test_the_window_never_exceeds_its_bound_and_starts_after_the_read(
    reads: list[tuple[int, int]], max_window: int
) -> None:
    pattern = ReadPattern()
    for first, extra in reads:
        last = first + extra
        ahead = pattern.record(first, last, max_window)
        assert len(ahead) <= max_window
        assert not ahead or ahead.start == last + 1


@given(st.lists(st.integers(0, 1_000_000), min_size=1, max_size=100, unique=True))
def test_reads_that_never_touch_the_next_block_never_fetch_ahead(blocks: list[int]) -> None:
    blocks = sorted(blocks, reverse=True)  # backwards, always two or more blocks apart
    spaced = [b for i, b in enumerate(blocks) if i == 0 or blocks[i - 1] - b > 2]
    pattern = ReadPattern()
    fetched_ahead = [len(pattern.record(b, b, 16)) for b in spaced]
    assert fetched_ahead[1:] == [0] * (len(spaced) - 1)
