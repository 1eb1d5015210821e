"""Property-based fuzzing of what an origin may answer to one range GET: whatever the status,
Content-Range, Content-Length and body, ``_read_body`` returns exactly the bytes asked for
(from where the answer says they are) with their sha256, or raises one SourceError."""

from __future__ import annotations

import hashlib
import http.client
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.errors import SourceError
from lazyfs.rangeget import BufferPool, _read_body

pytestmark = pytest.mark.pure

FILE = bytes(range(256)) * 64  # 16 KiB, every byte telling its offset


class _Socket:
    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def makefile(self, mode: str) -> io.BytesIO:
        return self._file


def answer(
    status: int, content_range: str | None, length_header: str | None, body: bytes
) -> http.client.HTTPResponse:
    lines = [f"HTTP/1.1 {status} X"]
    if content_range is not None:
        lines.append(f"Content-Range: {content_range}")
    if length_header is not None:
        lines.append(f"Content-Length: {length_header}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    response = http.client.HTTPResponse(_Socket(raw))  # type: ignore[arg-type]
    response.begin()
    return response


requests = st.integers(0, len(FILE) - 1).flatmap(
    lambda start: st.tuples(st.just(start), st.integers(1, len(FILE) - start))
)
ranges = st.one_of(
    st.none(),
    st.text(max_size=30),
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
    st.sampled_from([200, 206, 204, 301, 404, 416, 429, 500, 503]),
    ranges,
    st.integers(-3, 3),
    st.booleans(),
    st.integers(-40, 40),
    st.data(),
)
def test_any_answer_gives_the_exact_bytes_or_one_source_error(
    request: tuple[int, int],
    status: int,
    content_range: str | None,
    length_skew: int,
    declare_length: bool,
    body_skew: int,
    data: st.DataObject,
) -> None:
    start, length = request
    wanted = {"use": data.draw(st.booleans())}
    if wanted["use"] and status == 206:
        content_range = f"bytes {start}-{start + length - 1}/{len(FILE)}"
    # What the origin sends: the whole file for a 200, the asked range for a 206 (either
    # longer or shorter by body_skew), with a Content-Length that may lie.
    sent = FILE if status == 200 else FILE[start : start + length]
    sent = sent[: max(0, len(sent) + body_skew)] if body_skew < 0 else sent + b"x" * body_skew
    length_header = str(max(0, len(sent) + length_skew)) if declare_length else None
    response = answer(status, content_range, length_header, sent)
    try:
        body = _read_body(response, "http://origin.test/f", start, length, BufferPool())
    except SourceError as exc:
        assert "\n" not in str(exc)
        return
    got = bytes(body.data)
    assert got == FILE[start : start + length]
    assert body.sha256 == hashlib.sha256(got).hexdigest()
