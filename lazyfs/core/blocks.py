"""Block arithmetic, sans-I/O: which blocks a byte range touches and which bytes of each."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockSlice:
    """Bytes ``[start, end)`` of block ``index`` (offsets relative to the block)."""

    index: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def block_count(size: int, block_size: int) -> int:
    """Number of blocks of a file of ``size`` bytes; an empty file has none."""
    if size < 0 or block_size <= 0:
        raise ValueError("size must be >= 0 and block_size > 0")
    return -(-size // block_size)


def block_extent(index: int, size: int, block_size: int) -> tuple[int, int]:
    """``(offset, length)`` of block ``index`` in the file; the last block may be short."""
    if not 0 <= index < block_count(size, block_size):
        raise ValueError(f"block {index} is outside a file of {size} bytes")
    offset = index * block_size
    return offset, min(block_size, size - offset)


def held_bytes(blocks: Sequence[str], size: int, block_size: int, held: Container[str]) -> int:
    """Bytes of a file of ``size`` bytes, with block digests ``blocks``, whose blocks are in
    ``held``."""
    return sum(
        min(block_size, size - index * block_size)
        for index, digest in enumerate(blocks)
        if digest in held
    )


def clamp_read(offset: int, length: int, size: int) -> tuple[int, int]:
    """The part of a read of ``length`` bytes at ``offset`` that lies inside the file."""
    if offset < 0 or length < 0 or size < 0:
        raise ValueError("offset, length and size must be >= 0")
    start = min(offset, size)
    return start, min(size, offset + length) - start


def read_plan(offset: int, length: int, size: int, block_size: int) -> list[BlockSlice]:
    """The block slices that, concatenated, give exactly the file's bytes of a read.

    Reads past the end of the file are cut short (the kernel takes a short read as EOF).
    """
    if block_size <= 0:
        raise ValueError("block_size must be > 0")
    start, count = clamp_read(offset, length, size)
    end = start + count
    plan = []
    position = start
    while position < end:
        index = position // block_size
        block_start = index * block_size
        slice_end = min(end, block_start + block_size)
        plan.append(BlockSlice(index, position - block_start, slice_end - block_start))
        position = slice_end
    return plan
