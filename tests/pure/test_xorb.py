"""Xorb chunk decoding: round trips through every scheme, and malformed data refused."""

from __future__ import annotations

import lz4.frame
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.xorb import (
    BYTE_GROUPING_4_LZ4,
    LZ4,
    NONE,
    XorbChunk,
    decode_chunk,
    group4,
    parse_chunks,
    ungroup4,
)
from lazyfs.errors import OriginProtocolError


def encode(data: bytes, scheme: int) -> bytes:
    """One chunk as the xorb format stores it."""
    if scheme == NONE:
        payload = data
    elif scheme == LZ4:
        payload = lz4.frame.compress(data)
    else:
        payload = lz4.frame.compress(group4(data))
    header = bytes([0]) + len(payload).to_bytes(3, "little") + bytes([scheme])
    return header + len(data).to_bytes(3, "little") + payload


chunk_bytes = st.binary(max_size=3000)
schemes = st.sampled_from([NONE, LZ4, BYTE_GROUPING_4_LZ4])


@given(st.lists(st.tuples(chunk_bytes, schemes), max_size=6))
def test_chunks_of_every_scheme_decode_to_their_bytes(chunks: list[tuple[bytes, int]]) -> None:
    xorb = b"".join(encode(data, scheme) for data, scheme in chunks)
    decoded = [decode_chunk(chunk) for chunk in parse_chunks(xorb)]
    assert decoded == [data for data, _ in chunks]


@given(st.binary(max_size=1000))
def test_grouping_in_four_is_undone(data: bytes) -> None:
    grouped = group4(data)
    assert sorted(grouped) == sorted(data)
    assert ungroup4(grouped) == data


def test_grouping_puts_every_fourth_byte_together() -> None:
    assert group4(bytes(range(10))) == bytes([0, 4, 8, 1, 5, 9, 2, 6, 3, 7])
    assert ungroup4(bytes([0, 4, 8, 1, 5, 9, 2, 6, 3, 7])) == bytes(range(10))


@given(st.binary(min_size=1, max_size=2000), schemes, st.data())
def test_a_xorb_cut_anywhere_is_refused(data: bytes, scheme: int, draw: st.DataObject) -> None:
    xorb = encode(data, scheme)
    cut = draw.draw(st.integers(1, len(xorb) - 1))
    with pytest.raises(OriginProtocolError):
        parse_chunks(xorb[:cut])


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (bytes([1, 0, 0, 0, 0, 0, 0, 0]), "version"),
        (bytes([0, 0, 0, 0, 7, 0, 0, 0]), "scheme"),
        (bytes([0, 4, 0, 0, 0, 5, 0, 0]) + b"abcd", "sizes"),
        (bytes([0, 0, 0, 0, 1, 0, 0, 0x20]), "sizes"),
    ],
    ids=["version", "scheme", "stored-size-mismatch", "huge"],
)
def test_a_malformed_header_is_refused(header: bytes, words: str) -> None:
    with pytest.raises(OriginProtocolError, match=words):
        parse_chunks(header)


def test_a_payload_that_does_not_decompress_to_its_size_is_refused() -> None:
    payload = lz4.frame.compress(b"x" * 100)
    with pytest.raises(OriginProtocolError, match="not the 99 stated"):
        decode_chunk(XorbChunk(LZ4, payload, 99))
    with pytest.raises(OriginProtocolError, match="does not decompress"):
        decode_chunk(XorbChunk(LZ4, b"not an lz4 frame", 16))


@given(st.binary(max_size=300), st.sampled_from([LZ4, BYTE_GROUPING_4_LZ4]), st.integers(0, 400))
def test_any_payload_decodes_to_its_size_or_is_refused(
    payload: bytes, scheme: int, size: int
) -> None:
    try:
        decoded = decode_chunk(XorbChunk(scheme, payload, size))
    except OriginProtocolError:
        return
    assert len(decoded) == size


def test_a_frame_that_inflates_past_its_stated_size_is_refused() -> None:
    bomb = lz4.frame.compress(bytes(64 * 1024 * 1024))
    with pytest.raises(OriginProtocolError, match="not the 1000 stated"):
        decode_chunk(XorbChunk(LZ4, bomb, 1000))
