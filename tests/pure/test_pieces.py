"""Per-piece checksums: any change to the bytes a read serves is caught, and the window a read
needs covers exactly its pieces."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.pieces import PIECE_SIZE, PieceSums, piece_span

BLOCK = 4 * PIECE_SIZE + 1234  # a short last piece
DATA = os.urandom(BLOCK)
SUMS = PieceSums.of(DATA)


@st.composite
def ranges(draw: st.DrawFn, size: int = BLOCK) -> tuple[int, int]:
    start = draw(st.integers(0, size))
    end = draw(st.integers(start, size))
    return start, end


@given(ranges())
def test_the_window_covers_the_range_with_whole_pieces(read: tuple[int, int]) -> None:
    start, end = read
    low, high = SUMS.window(start, end)
    if start == end:
        assert low == high
        return
    assert low <= start and end <= high <= BLOCK
    assert low % PIECE_SIZE == 0
    assert high % PIECE_SIZE == 0 or high == BLOCK
    assert high - low < (end - start) + 2 * PIECE_SIZE  # no piece more than needed
    assert list(piece_span(start, end)) == list(range(low // PIECE_SIZE, -(-high // PIECE_SIZE)))


@given(ranges())
def test_intact_bytes_pass(read: tuple[int, int]) -> None:
    window = SUMS.window(*read)
    assert SUMS.first_bad_piece(DATA[window[0] : window[1]], window) is None


@given(ranges(), st.data())
def test_any_changed_byte_in_the_window_is_caught(
    read: tuple[int, int], data: st.DataObject
) -> None:
    window = SUMS.window(*read)
    if window[0] == window[1]:
        return
    position = data.draw(st.integers(window[0], window[1] - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(DATA[window[0] : window[1]])
    damaged[position - window[0]] ^= flip
    assert SUMS.first_bad_piece(damaged, window) == position // PIECE_SIZE


@given(ranges(), st.integers(1, PIECE_SIZE * 2))
def test_short_or_long_data_is_caught(read: tuple[int, int], cut: int) -> None:
    window = SUMS.window(*read)
    if window[0] == window[1]:
        return
    piece = DATA[window[0] : window[1]]
    assert SUMS.first_bad_piece(piece[: max(0, len(piece) - cut)], window) is not None
    assert SUMS.first_bad_piece(piece + bytes(cut), window) is not None


def test_zeroes_and_another_blocks_bytes_are_caught() -> None:
    window = SUMS.window(0, BLOCK)
    assert SUMS.first_bad_piece(bytes(BLOCK), window) == 0
    assert SUMS.first_bad_piece(os.urandom(BLOCK), window) == 0


@given(st.binary(max_size=3 * PIECE_SIZE))
def test_the_record_round_trips(block: bytes) -> None:
    sums = PieceSums.of(block)
    assert PieceSums.decode(sums.encode()) == sums
    assert sums.length == len(block)


@given(st.binary(max_size=200))
def test_a_damaged_record_is_not_taken_for_one(noise: bytes) -> None:
    record = SUMS.encode()
    decoded = PieceSums.decode(noise)  # never raises
    assert decoded is None or decoded.encode() == noise
    assert PieceSums.decode(record[:-1]) is None
    assert PieceSums.decode(record + b"x") is None
    assert PieceSums.decode(None) is None
    assert PieceSums.decode(b"") is None
