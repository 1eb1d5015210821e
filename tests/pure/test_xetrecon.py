"""Reconstruction answers and multipart bodies, sans-I/O: parsed strictly, chunks found by the
ranges they are stored in, parts cut by their stated lengths."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.core.xetrecon import (
    XorbRange,
    parse_reconstruction,
    slice_ranges,
    split_byteranges,
    term_chunks,
)
from lazyfs.core.xorb import HEADER_SIZE
from lazyfs.errors import OriginProtocolError

URL = "http://127.0.0.1:1/xorb?sig=abc"


def stored_chunk(data: bytes) -> bytes:
    size = len(data).to_bytes(3, "little")
    return bytes([0]) + size + bytes([0]) + size + data


def v2_answer(
    offset: int,
    terms: list[tuple[str, int, int, int]],
    ranges: dict[str, list[tuple[int, int, int, int]]],
) -> bytes:
    return json.dumps(
        {
            "offset_into_first_range": offset,
            "terms": [
                {"hash": x, "unpacked_length": n, "range": {"start": a, "end": b}}
                for x, a, b, n in terms
            ],
            "xorbs": {
                x: [
                    {
                        "url": URL + x,
                        "ranges": [
                            {"chunks": {"start": a, "end": b}, "bytes": {"start": s, "end": e}}
                            for a, b, s, e in parts
                        ],
                    }
                ]
                for x, parts in ranges.items()
            },
        }
    ).encode()


def test_terms_take_their_chunks_from_the_range_that_stores_them() -> None:
    chunks = [bytes([n]) * (10 + n) for n in range(5)]
    stored = [stored_chunk(chunk) for chunk in chunks]
    xorb = b"".join(stored)
    # Chunks 1..4 are stored at these bytes; the terms use 1..3 and then 2..4 (a repeat).
    start = len(stored[0])
    answer = v2_answer(
        3,
        [
            ("aa", 1, 3, len(chunks[1]) + len(chunks[2])),
            ("aa", 2, 4, len(chunks[2]) + len(chunks[3])),
        ],
        {"aa": [(1, 4, start, len(xorb) - len(stored[4]) - 1)]},
    )
    reconstruction = parse_reconstruction(answer, "test")
    (fetch,) = reconstruction.needed()
    assert fetch.range_header == f"bytes={start}-{len(xorb) - len(stored[4]) - 1}"
    body = xorb[start : len(xorb) - len(stored[4])]
    found = term_chunks(reconstruction, {(fetch.xorb, fetch.url): [body]})
    assert [bytes(chunk.payload) for chunk in found] == [chunks[1], chunks[2], chunks[2], chunks[3]]


@pytest.mark.parametrize(
    "problem",
    ["short body", "chunk count", "unpacked length", "no url for the term"],
)
def test_answers_that_cannot_be_followed_are_protocol_errors(problem: str) -> None:
    chunk = stored_chunk(b"x" * 20)
    terms = [("aa", 0, 1, 20)]
    ranges = {"aa": [(0, 1, 0, len(chunk) - 1)]}
    body = chunk
    if problem == "short body":
        body = chunk[:-1]
    elif problem == "chunk count":
        ranges = {"aa": [(0, 2, 0, len(chunk) - 1)]}
        terms = [("aa", 0, 2, 20)]
    elif problem == "unpacked length":
        terms = [("aa", 0, 1, 21)]
    else:
        terms = [("bb", 0, 1, 20)]
    reconstruction = parse_reconstruction(v2_answer(0, terms, ranges), "test")
    with pytest.raises(OriginProtocolError):
        fetched = {(f.xorb, f.url): [body] for f in reconstruction.fetches}
        term_chunks(reconstruction, fetched)


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"not json",
        b'{"offset_into_first_range": -1, "terms": [], "xorbs": {}}',
        b'{"offset_into_first_range": 0, "terms": [{"hash": "a"}], "xorbs": {}}',
        b'{"offset_into_first_range": 0, "terms": []}',
        b'{"offset_into_first_range": 0, "terms": [], "xorbs": {"a": [{"url": "file:///etc/passwd",'
        b' "ranges": []}]}}',
        b'{"offset_into_first_range": 0, "terms": [{"hash": "a", "unpacked_length": 1,'
        b' "range": {"start": 3, "end": 1}}], "xorbs": {}}',
    ],
)
def test_malformed_reconstructions_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(OriginProtocolError):
        parse_reconstruction(body, "test")


def test_v1_answers_are_read_as_one_range_per_url() -> None:
    body = json.dumps(
        {
            "offset_into_first_range": 0,
            "terms": [{"hash": "aa", "unpacked_length": 5, "range": {"start": 0, "end": 1}}],
            "fetch_info": {
                "aa": [
                    {
                        "range": {"start": 0, "end": 1},
                        "url": URL,
                        "url_range": {"start": 0, "end": 12},
                    }
                ]
            },
        }
    ).encode()
    (fetch,) = parse_reconstruction(body, "test").fetches
    assert fetch.range_header == "bytes=0-12"


def multipart(parts: list[tuple[int, int, bytes]], boundary: str = "b0und") -> bytes:
    out = b""
    for start, stop, data in parts:
        out += (
            (
                f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {start}-{stop}/1000\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=5))
def test_multipart_parts_are_cut_by_their_lengths_even_when_they_hold_the_boundary(
    bodies: list[bytes],
) -> None:
    # The data may contain the delimiter itself: parts are read by Content-Range, not searched.
    bodies = [body + b"\r\n--b0und\r\n" for body in bodies]
    ranges = []
    position = 0
    for body in bodies:
        ranges.append(XorbRange(0, 1, position, position + len(body) - 1))
        position += len(body) + 7
    answer = multipart([(r.start, r.stop, body) for r, body in zip(ranges, bodies, strict=True)])
    got = split_byteranges('multipart/byteranges; boundary="b0und"', answer, ranges)
    assert got == bodies


def test_a_multipart_answer_missing_a_range_or_short_is_a_protocol_error() -> None:
    ranges = [XorbRange(0, 1, 0, 9), XorbRange(1, 2, 20, 29)]
    with pytest.raises(OriginProtocolError):
        split_byteranges(
            "multipart/byteranges; boundary=b0und", multipart([(0, 9, b"x" * 10)]), ranges
        )
    with pytest.raises(OriginProtocolError):
        short = multipart([(0, 9, b"x" * 10), (20, 29, b"y" * 10)])[:-30]
        split_byteranges("multipart/byteranges; boundary=b0und", short, ranges)
    with pytest.raises(OriginProtocolError):
        split_byteranges("multipart/byteranges", multipart([(0, 9, b"x" * 10)]), ranges[:1])


def test_a_whole_object_is_cut_to_the_ranges_asked() -> None:
    ranges = [XorbRange(0, 1, 2, 4), XorbRange(1, 2, 8, 9)]
    assert slice_ranges(b"0123456789", ranges) == [b"234", b"89"]
    with pytest.raises(OriginProtocolError):
        slice_ranges(b"01234", ranges)


def test_header_size_is_what_stored_chunks_use() -> None:
    assert len(stored_chunk(b"abc")) == HEADER_SIZE + 3
