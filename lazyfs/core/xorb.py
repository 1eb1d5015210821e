"""Xet xorb bytes, sans-I/O: the chunks a CAS data range holds, decoded to the file's bytes.

A xorb is a run of chunks, each an 8-byte header (version 0, compressed length as a 24-bit
little-endian number, compression scheme, uncompressed length likewise) and its payload. Nothing
here is trusted: a header that runs past the data, an unknown version or scheme, or a payload
that does not decompress to its stated length is a protocol error. That a decoded chunk is
the right one is proven elsewhere, by its hash (``core.xethash``).
"""

from __future__ import annotations

from dataclasses import dataclass

import lz4.frame

from lazyfs.errors import OriginProtocolError

HEADER_SIZE = 8
VERSION = 0
# Compression schemes: none, an LZ4 frame, and an LZ4 frame of the bytes regrouped in four
# (every fourth byte together, which suits the bytes of floating-point numbers).
NONE, LZ4, BYTE_GROUPING_4_LZ4 = 0, 1, 2
# Xet chunks are at most 128 KiB; a header claiming far more is not one.
MAX_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class XorbChunk:
    scheme: int
    payload: bytes | memoryview
    size: int  # uncompressed


def parse_chunks(data: bytes | bytearray) -> list[XorbChunk]:
    """The chunks of a xorb byte range, in order; every byte must belong to one."""
    chunks = []
    position = 0
    # Payloads are views into ``data``: a window of chunks is not copied to be decoded.
    view = memoryview(data)
    while position < len(data):
        header = data[position : position + HEADER_SIZE]
        if len(header) < HEADER_SIZE:
            raise OriginProtocolError(f"xorb data ends inside a chunk header at {position}")
        version, scheme = header[0], header[4]
        stored = int.from_bytes(header[1:4], "little")
        size = int.from_bytes(header[5:8], "little")
        if version != VERSION:
            raise OriginProtocolError(f"xorb chunk at {position}: unknown version {version}")
        if scheme not in (NONE, LZ4, BYTE_GROUPING_4_LZ4):
            raise OriginProtocolError(f"xorb chunk at {position}: unknown scheme {scheme}")
        if size > MAX_CHUNK_BYTES or (scheme == NONE and stored != size):
            raise OriginProtocolError(f"xorb chunk at {position}: impossible sizes")
        start = position + HEADER_SIZE
        payload = view[start : start + stored]
        if len(payload) < stored:
            raise OriginProtocolError(f"xorb data ends inside the chunk at {position}")
        chunks.append(XorbChunk(scheme, payload, size))
        position = start + stored
    return chunks


def decode_chunk(chunk: XorbChunk) -> bytes | memoryview:
    """A chunk's uncompressed bytes, exactly as long as its header says."""
    if chunk.scheme == NONE:
        decoded = chunk.payload
    else:
        # At most one byte past the stated size: a frame that inflates to gigabytes is
        # refused without holding them.
        try:
            decoded = lz4.frame.LZ4FrameDecompressor().decompress(
                chunk.payload, max_length=chunk.size + 1
            )
        except RuntimeError as exc:  # lz4's error for a damaged frame
            raise OriginProtocolError(f"xorb chunk does not decompress: {exc}") from None
        if chunk.scheme == BYTE_GROUPING_4_LZ4:
            decoded = ungroup4(decoded)
    if len(decoded) != chunk.size:
        raise OriginProtocolError(
            f"xorb chunk decompressed to {len(decoded)} bytes, not the {chunk.size} stated"
        )
    return decoded


def group4(data: bytes) -> bytes:
    """Bytes regrouped in four: bytes 0, 4, 8, ... first, then 1, 5, 9, ..., and so on."""
    return b"".join(data[offset::4] for offset in range(4))


def ungroup4(grouped: bytes) -> bytes:
    """The inverse of ``group4``: group ``i`` holds ``n // 4`` bytes, one more if ``i < n % 4``."""
    size = len(grouped)
    out = bytearray(size)
    start = 0
    for offset in range(4):
        length = size // 4 + (offset < size % 4)
        out[offset::4] = grouped[start : start + length]
        start += length
    return bytes(out)
