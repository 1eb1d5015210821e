"""Property-based fuzzing of what an origin may answer to one range GET, fed to ``_read_body``
the way a socket delivers it: in pieces of any size (short reads).

A well-formed answer (a 206 with the asked range, or a 200 with the whole file; framed by
Content-Length, chunked, or the end of the connection) gives exactly the bytes asked for with
their sha256, never an error. An error status gives a SourceError. Anything else (wrong
Content-Range, lying Content-Length, a body too short or too long) gives exactly the bytes
asked for or one SourceError: never wrong bytes."""

from __future__ import annotations

import hashlib
import http.client
import io
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.errors import OriginHTTPError, SourceError
from lazyfs.sources.buffers import BufferPool
from lazyfs.sources.rangeget import RangeBody, _read_body

# 16 KiB without a period: bytes from any other offset differ from the ones asked for.
FILE = random.Random(0).randbytes(16 * 1024)


class _PieceReader(io.RawIOBase):
    """The bytes of an answer, each read returning at most the next of ``pieces`` bytes (then
    the rest at once), as recv() on a TCP socket may."""

    def __init__(self, data: bytes, pieces: list[int]) -> None:
        self._data = memoryview(data)
        self._pieces = list(pieces)
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        size = self._pieces.pop(0) if self._pieces else len(self._data)
        piece = self._data[self._position : self._position + min(size, len(buffer))]
        buffer[: len(piece)] = piece
        self._position += len(piece)
        return len(piece)


class _Socket:
    def __init__(self, data: bytes, pieces: list[int]) -> None:
        self._raw = _PieceReader(data, pieces)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self._raw)  # what socket.makefile("rb") returns


def chunked(body: bytes, sizes: list[int]) -> bytes:
    """``body`` in Transfer-Encoding: chunked, in chunks of ``sizes`` (then one of the rest)."""
    out, position = [], 0
    for size in [*sizes, len(body)]:
        piece = body[position : position + size]
        if piece:
            out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        position += len(piece)
    return b"".join(out) + b"0\r\n\r\n"


def read(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    pieces: list[int],
    start: int,
    length: int,
) -> RangeBody:
    """``_read_body`` of this answer, read in ``pieces``."""
    lines = [f"HTTP/1.1 {status} X", *(f"{name}: {value}" for name, value in headers)]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    response = http.client.HTTPResponse(_Socket(raw, pieces))  # type: ignore[arg-type]
    response.begin()
    return _read_body(response, "http://origin.test/f", start, length, BufferPool())


requests = st.integers(0, len(FILE) - 1).flatmap(
    lambda start: st.tuples(st.just(start), st.integers(1, len(FILE) - start))
)
pieces = st.lists(st.integers(1, 3000), max_size=40)
padding = st.sampled_from(["", " ", "  "])  # optional whitespace around a header's value


@settings(max_examples=300, deadline=None)
@given(
    requests,
    st.sampled_from([200, 206]),
    st.sampled_from(["content-length", "chunked", "close"]),
    st.lists(st.integers(1, 5000), max_size=8),
    st.sampled_from(["Content-Range", "content-range", "CONTENT-RANGE"]),
    st.booleans(),
    padding,
    pieces,
)
def test_a_well_formed_answer_gives_exactly_the_bytes(
    request: tuple[int, int],
    status: int,
    framing: str,
    chunk_sizes: list[int],
    range_name: str,
    total_known: bool,
    pad: str,
    pieces: list[int],
) -> None:
    start, length = request
    body = FILE if status == 200 else FILE[start : start + length]
    headers = [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes")]
    if status == 206:
        total = str(len(FILE)) if total_known else "*"
        value = f"bytes {start}-{start + length - 1}/{total}"
        headers.append((range_name, f"{pad}{value}{pad}"))
    if framing == "content-length":
        headers.append(("Content-Length", f"{pad}{len(body)}"))
        sent = body
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        sent = chunked(body, chunk_sizes)
    else:
        headers.append(("Connection", "close"))  # the body ends where the connection does
        sent = body
    got = read(status, headers, sent, pieces, start, length)
    assert bytes(got.data) == FILE[start : start + length]
    assert got.sha256 == hashlib.sha256(FILE[start : start + length]).hexdigest()


@settings(max_examples=100, deadline=None)
@given(
    requests,
    st.sampled_from([204, 301, 304, 400, 403, 404, 416, 429, 500, 502, 503]),
    st.booleans(),
    pieces,
)
def test_an_error_status_is_a_source_error(
    request: tuple[int, int], status: int, with_range: bool, pieces: list[int]
) -> None:
    start, length = request
    # Even with the range asked for: the status decides.
    body = FILE[start : start + length] if with_range else b"<html>no</html>"
    headers = [("Content-Length", str(len(body)))]
    if with_range:
        headers.append(("Content-Range", f"bytes {start}-{start + length - 1}/{len(FILE)}"))
    with pytest.raises(OriginHTTPError) as raised:
        read(status, headers, body, pieces, start, length)
    assert raised.value.status == status
    assert "\n" not in str(raised.value)


ranges = st.one_of(
    st.none(),
    # Any value on one line (a line break would end the head early, and then the body the
    # test means to send is not the body the answer has).
    st.text(st.characters(exclude_characters="\r\n"), max_size=30),
    st.builds(
        lambda a, b, total: f"bytes {a}-{b}/{total}",
        st.integers(0, 2 * len(FILE)),
        st.integers(0, 2 * len(FILE)),
        st.sampled_from(["*", str(len(FILE)), "7"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    requests,
    st.sampled_from([200, 206]),
    ranges,
    st.integers(-3, 3),
    st.booleans(),
    st.integers(-40, 40),
    st.integers(-3, 3),
    st.integers(-3, 3),
    st.data(),
    pieces,
)
def test_a_malformed_answer_gives_the_exact_bytes_or_one_source_error(
    request: tuple[int, int],
    status: int,
    content_range: str | None,
    length_skew: int,
    declare_length: bool,
    body_skew: int,
    first_skew: int,
    last_skew: int,
    data: st.DataObject,
    pieces: list[int],
) -> None:
    start, length = request
    if data.draw(st.booleans()) and status == 206:
        # Near the asked range: exactly it, or a few bytes off at either end.
        first, last = max(0, start + first_skew), max(0, start + length - 1 + last_skew)
        content_range = f"bytes {first}-{last}/{len(FILE)}"
    # What the origin sends: the whole file for a 200; for a 206 the range its Content-Range
    # names (believing a wrong one would give wrong bytes), else the asked range. Then made
    # longer or shorter by body_skew, with a Content-Length that may lie.
    labelled = re.fullmatch(r"bytes (\d+)-(\d+)/.*", (content_range or "").strip())
    if status == 200:
        sent = FILE
    elif labelled:
        sent = FILE[int(labelled[1]) : int(labelled[2]) + 1]
    else:
        sent = FILE[start : start + length]
    sent = sent[: max(0, len(sent) + body_skew)] if body_skew < 0 else sent + b"x" * body_skew
    length_header = str(max(0, len(sent) + length_skew)) if declare_length else None
    headers = [] if content_range is None else [("Content-Range", content_range)]
    if length_header is not None:
        headers.append(("Content-Length", length_header))
    asked = {f"bytes {start}-{start + length - 1}/{total}" for total in (len(FILE), "*")}
    if (
        body_skew == 0
        and (length_header is None or length_skew == 0)
        and (content_range in asked or (status == 200 and content_range is None))
    ):
        # Drawn well-formed after all: then it must give the bytes.
        got = read(status, headers, sent, pieces, start, length)
        assert bytes(got.data) == FILE[start : start + length]
        return
    try:
        got = read(status, headers, sent, pieces, start, length)
    except SourceError as exc:
        assert "\n" not in str(exc)
        return
    assert bytes(got.data) == FILE[start : start + length]
    assert got.sha256 == hashlib.sha256(FILE[start : start + length]).hexdigest()
