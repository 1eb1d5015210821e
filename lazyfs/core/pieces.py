"""Per-piece checksums of cached blocks, sans-I/O: what a warm read checks instead of the
block's sha256.

A block is verified once, by sha256 against the manifest, when it is fetched. Its checksums are
recorded then: one XXH3-64 per 16 KiB piece, with the block's length. The cache directory is
private to the mounting user, so what a cached block must survive is corruption (bit rot, torn
writes, truncated, zero-filled or stray files), not an adversary; a 64-bit checksum of the
piece catches any such change with odds of missing it of 2^-64, and costs a thirtieth of a
sha256. A read then checks only the pieces it serves: 4 KiB costs one 16 KiB piece, not 4 MiB.
``lazyfs cache verify`` still re-hashes whole blocks with sha256.

The record (``encode``/``decode``) is: magic, length (8 bytes, little-endian), then one 8-byte
checksum per piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import xxhash
from typing_extensions import Buffer

PIECE_SIZE = 16 * 1024
_MAGIC = b"lzp2"
_LENGTH_BYTES = 8
_SUM_BYTES = 8


def piece_span(start: int, end: int) -> range:
    """The pieces bytes ``[start, end)`` of a block touch (none for an empty range)."""
    if start < 0 or end < start:
        raise ValueError("need 0 <= start <= end")
    if start == end:
        return range(0)
    return range(start // PIECE_SIZE, (end - 1) // PIECE_SIZE + 1)


def piece_count(length: int) -> int:
    return -(-length // PIECE_SIZE)


def _checksum(piece: memoryview) -> bytes:
    return xxhash.xxh3_64_digest(piece)


@dataclass(frozen=True)
class PieceSums:
    """A verified block's length and the checksums of its pieces."""

    length: int
    sums: tuple[bytes, ...]

    @classmethod
    def of(cls, block: Buffer) -> PieceSums:
        view = memoryview(block).cast("B")
        length = len(view)
        return cls(
            length,
            tuple(_checksum(view[i : i + PIECE_SIZE]) for i in range(0, length, PIECE_SIZE)),
        )

    def encode(self) -> bytes:
        return _MAGIC + self.length.to_bytes(_LENGTH_BYTES, "little") + b"".join(self.sums)

    @classmethod
    def decode(cls, record: object) -> PieceSums | None:
        """The sums in ``record``, or None if it is not a whole record of this format (a block
        stored before checksums existed, or a damaged record: the caller checks the block's
        sha256 instead)."""
        if not isinstance(record, bytes) or not record.startswith(_MAGIC):
            return None
        header = len(_MAGIC) + _LENGTH_BYTES
        if len(record) < header:
            return None
        length = int.from_bytes(record[len(_MAGIC) : header], "little")
        body = record[header:]
        if len(body) != piece_count(length) * _SUM_BYTES:
            return None
        sums = tuple(body[i : i + _SUM_BYTES] for i in range(0, len(body), _SUM_BYTES))
        return cls(length, sums)

    def window(self, start: int, end: int) -> tuple[int, int]:
        """The byte range to read so that ``[start, end)`` is covered by whole pieces (the last
        piece may be short), clamped to the block."""
        end = min(end, self.length)
        start = min(start, end)
        span = piece_span(start, end)
        if not span:
            return start, start
        return span.start * PIECE_SIZE, min(self.length, span.stop * PIECE_SIZE)

    def first_bad_piece(
        self, data: bytes | bytearray | memoryview, window: tuple[int, int]
    ) -> int | None:
        """The first piece of ``data`` whose checksum does not match, or None if all do.
        ``data`` was read for ``window`` (as ``window()`` gives it); if it is shorter or longer
        (a truncated or grown file), the piece where it stops matching is bad."""
        offset, end = window
        if offset == end:
            return None if not len(data) else offset // PIECE_SIZE
        if offset % PIECE_SIZE:
            raise ValueError("a window starts at a piece boundary")
        view = memoryview(data).cast("B")
        first = offset // PIECE_SIZE
        if len(view) != end - offset:
            return first + min(len(view), end - offset) // PIECE_SIZE
        for number, position in enumerate(range(0, len(view), PIECE_SIZE)):
            index = first + number
            if (
                index >= len(self.sums)
                or _checksum(view[position : position + PIECE_SIZE]) != (self.sums[index])
            ):
                return index
        return None
