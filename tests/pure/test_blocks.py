"""Properties of the block arithmetic (lazyfs.core.blocks) and of byte sizes (lazyfs.core.sizes)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.blocks import BlockSlice, block_count, block_extent, clamp_read, read_plan
from lazyfs.core.sizes import format_size, parse_size
from lazyfs.errors import UsageError

KIB = 1024
MIB = 1024 * KIB

# Small block sizes keep plans short while still exercising every boundary case.
block_sizes = st.integers(min_value=1, max_value=64)
sizes = st.integers(min_value=0, max_value=1000)
offsets = st.integers(min_value=0, max_value=1200)
lengths = st.integers(min_value=0, max_value=1200)


def file_bytes(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def assemble(data: bytes, plan: list[BlockSlice], block_size: int) -> bytes:
    """What a reader returns: the planned part of each block, fetched whole, concatenated."""
    out = b""
    for piece in plan:
        block_offset, block_length = block_extent(piece.index, len(data), block_size)
        block = data[block_offset : block_offset + block_length]
        out += block[piece.start : piece.end]
    return out


@given(offsets, lengths, sizes, block_sizes)
def test_plan_concatenation_is_exactly_the_clamped_read(
    offset: int, length: int, size: int, block_size: int
) -> None:
    data = file_bytes(size)
    plan = read_plan(offset, length, size, block_size)
    start, count = clamp_read(offset, length, size)
    assert assemble(data, plan, block_size) == data[start : start + count]
    assert assemble(data, plan, block_size) == data[offset : offset + length]
    assert sum(piece.length for piece in plan) == count


@given(offsets, lengths, sizes, block_sizes)
def test_slices_lie_within_their_blocks_in_order_and_at_the_right_place(
    offset: int, length: int, size: int, block_size: int
) -> None:
    plan = read_plan(offset, length, size, block_size)
    start, count = clamp_read(offset, length, size)
    position = start
    for previous, piece in zip([None, *plan], plan, strict=False):
        _, block_length = block_extent(piece.index, size, block_size)
        assert 0 <= piece.start < piece.end <= block_length
        assert piece.index * block_size + piece.start == position
        if previous is not None:
            assert piece.index == previous.index + 1
            assert piece.start == 0
            assert previous.end == block_size
        position += piece.length
    assert position == start + count
    # Only the first and last slice can be partial; one slice per block touched.
    if count:
        assert len(plan) == (start + count - 1) // block_size - start // block_size + 1


@given(sizes, block_sizes)
def test_block_count_and_extents_tile_the_file(size: int, block_size: int) -> None:
    count = block_count(size, block_size)
    assert count == -(-size // block_size)
    assert (count == 0) == (size == 0)
    extents = [block_extent(i, size, block_size) for i in range(count)]
    assert sum(length for _, length in extents) == size
    position = 0
    for index, (offset, length) in enumerate(extents):
        assert offset == position == index * block_size
        assert 1 <= length <= block_size
        assert length == block_size or index == count - 1
        position += length
    with pytest.raises(ValueError):
        block_extent(count, size, block_size)
    with pytest.raises(ValueError):
        block_extent(-1, size, block_size)


@given(st.integers(min_value=0, max_value=50), st.integers(min_value=2, max_value=64), st.data())
def test_last_partial_block(full_blocks: int, block_size: int, data: st.DataObject) -> None:
    extra = data.draw(st.integers(min_value=1, max_value=block_size - 1))
    size = full_blocks * block_size + extra
    count = block_count(size, block_size)
    assert count == full_blocks + 1
    assert block_extent(count - 1, size, block_size) == (full_blocks * block_size, extra)
    # A read of the whole tail, and one running past EOF, both end with the short block.
    plan = read_plan(full_blocks * block_size, block_size * 2, size, block_size)
    assert plan == [BlockSlice(full_blocks, 0, extra)]
    plan = read_plan(size - 1, 10, size, block_size)
    assert plan == [BlockSlice(full_blocks, extra - 1, extra)]


@given(offsets, sizes, block_sizes)
def test_zero_length_reads_are_empty(offset: int, size: int, block_size: int) -> None:
    assert read_plan(offset, 0, size, block_size) == []
    assert clamp_read(offset, 0, size)[1] == 0


@given(st.integers(min_value=0, max_value=500), lengths, sizes, block_sizes)
def test_reads_at_or_past_eof_are_empty(past: int, length: int, size: int, block_size: int) -> None:
    assert read_plan(size + past, length, size, block_size) == []
    assert clamp_read(size + past, length, size) == (size, 0)


@given(sizes, block_sizes, lengths)
def test_read_straddling_eof_is_cut_short(size: int, block_size: int, length: int) -> None:
    offset = max(0, size - 3)
    plan = read_plan(offset, length, size, block_size)
    assert sum(piece.length for piece in plan) == min(length, size - offset)


def test_examples() -> None:
    assert block_count(0, 4) == 0
    assert block_count(1, 4) == 1
    assert block_count(4, 4) == 1
    assert block_count(5, 4) == 2
    assert block_extent(1, 5, 4) == (4, 1)
    assert read_plan(2, 5, 10, 4) == [BlockSlice(0, 2, 4), BlockSlice(1, 0, 3)]
    assert read_plan(0, 100, 10, 4) == [
        BlockSlice(0, 0, 4),
        BlockSlice(1, 0, 4),
        BlockSlice(2, 0, 2),
    ]


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (block_count, (-1, 4)),
        (block_count, (4, 0)),
        (block_count, (4, -4)),
        (block_extent, (-1, 10, 4)),
        (block_extent, (0, -1, 4)),
        (block_extent, (0, 10, 0)),
        (clamp_read, (-1, 1, 10)),
        (clamp_read, (0, -1, 10)),
        (clamp_read, (0, 1, -10)),
        (read_plan, (-1, 1, 10, 4)),
        (read_plan, (0, -1, 10, 4)),
        (read_plan, (0, 1, -10, 4)),
        (read_plan, (0, 10, 100, 0)),
        (read_plan, (0, 10, 100, -4)),
    ],
)
def test_negative_or_zero_input_raises(call: Callable[..., object], args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        call(*args)


@given(
    st.integers(min_value=-(10**6), max_value=-1),
    st.integers(min_value=0, max_value=100),
    block_sizes,
)
def test_any_negative_offset_raises(offset: int, size: int, block_size: int) -> None:
    with pytest.raises(ValueError):
        read_plan(offset, 1, size, block_size)


# ---- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("512K", 512 * KIB),
        ("512k", 512 * KIB),
        ("64KiB", 64 * KIB),
        ("64kb", 64 * KIB),
        ("30M", 30 * MIB),
        ("4MiB", 4 * MIB),
        ("10G", 10 * 2**30),
        ("2T", 2 * 2**40),
        ("1P", 2**50),
        ("1.5K", 1536),
        ("0.5M", 512 * KIB),
        (" 10 G ", 10 * 2**30),
        ("9007199254740993", 9007199254740993),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "K", "-4", "+4", "4X", "4 KK", "1.K", ".5K", "1e3", "1,000", "4M\nrm", "nan", "0x10"],
)
def test_parse_size_rejects_bad_input_with_one_line(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_size(text)
    message = str(caught.value)
    assert message.startswith("not a size: ")
    assert len(message.splitlines()) == 1


def test_parse_size_long_digit_string_is_an_int_not_an_overflow() -> None:
    # Exact to 28 significant digits, beyond any real size; past that, rounded, never raising.
    assert parse_size("1" * 28) == int("1" * 28)
    assert 10**399 < parse_size("1" * 400) < 2 * 10**399
    assert parse_size("1" * 5000 + "P") > 10**5000


@given(st.integers(min_value=0, max_value=2**50), st.sampled_from(["", "K", "M", "G"]))
def test_parse_size_of_integers(number: int, unit: str) -> None:
    factor = {"": 1, "K": KIB, "M": MIB, "G": 2**30}[unit]
    assert parse_size(f"{number}{unit}") == number * factor
    assert parse_size(f"{number}{unit.lower()}ib" if unit else str(number)) == number * factor


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (4 * MIB, "4.0 MiB"),
        (10 * 2**30, "10.0 GiB"),
        (3 * 2**40, "3.0 TiB"),
        (5 * 2**50, "5120.0 TiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(min_value=0, max_value=2**45))
def test_format_size_round_trips_within_rounding(size: int) -> None:
    number, unit = format_size(size).split()
    factor = {"B": 1, "KiB": KIB, "MiB": MIB, "GiB": 2**30, "TiB": 2**40}[unit]
    assert parse_size(f"{number}{unit}") == int(Decimal(number) * factor)
    # One decimal place: off by at most half a tenth of the unit.
    assert abs(int(Decimal(number) * factor) - size) <= factor // 20 + 1
