"""Xet reconstructions, sans-I/O: which xorb byte ranges hold a window of a file, and the
window's chunks once they are fetched.

The CAS answers ``/v2/reconstructions/{file}`` (or the older ``/v1/``) for a byte range with
terms (a xorb and a run of its chunks, in file order) and, per xorb, pre-signed URLs each for
a list of byte ranges. Nothing here is trusted: the chunks found are proven against the file
hash afterwards (``core.xetproof``); this module only refuses answers that cannot be followed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lazyfs.core.xorb import XorbChunk, parse_chunks
from lazyfs.errors import OriginProtocolError

# More terms or URLs than this for one window is not an answer for one window.
MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class Term:
    """Chunks ``[first, end)`` of xorb ``xorb`` (hex), which unpack to ``size`` bytes."""

    xorb: str
    first: int
    end: int
    size: int


@dataclass(frozen=True)
class XorbRange:
    """Chunks ``[first, end)`` of a xorb stored at bytes ``[start, stop]`` (inclusive)."""

    first: int
    end: int
    start: int
    stop: int

    @property
    def header(self) -> str:
        return f"{self.start}-{self.stop}"


@dataclass(frozen=True)
class XorbFetch:
    """One pre-signed URL of a xorb and the byte ranges it is signed for (asked all at once,
    in exactly this order)."""

    xorb: str
    url: str
    ranges: tuple[XorbRange, ...]

    @property
    def range_header(self) -> str:
        return "bytes=" + ",".join(part.header for part in self.ranges)


@dataclass(frozen=True)
class Reconstruction:
    offset: int  # bytes of the first term before the range asked for
    terms: tuple[Term, ...]
    fetches: tuple[XorbFetch, ...]

    def needed(self) -> list[XorbFetch]:
        """The fetches whose ranges the terms use, each once, in the order first used."""
        chosen: dict[tuple[str, str], XorbFetch] = {}
        for term in self.terms:
            fetch, _ = self.source_of(term)
            chosen.setdefault((fetch.xorb, fetch.url), fetch)
        return list(chosen.values())

    def fetch_size(self) -> int:
        """The bytes the needed fetches ask the data URLs for, all told."""
        return sum(part.stop - part.start + 1 for fetch in self.needed() for part in fetch.ranges)

    def source_of(self, term: Term) -> tuple[XorbFetch, XorbRange]:
        for fetch in self.fetches:
            if fetch.xorb != term.xorb:
                continue
            for part in fetch.ranges:
                if part.first <= term.first and term.end <= part.end:
                    return fetch, part
        raise OriginProtocolError(
            f"the reconstruction names no URL for chunks {term.first}-{term.end} of xorb "
            f"{term.xorb}"
        )


def parse_reconstruction(body: bytes, where: str) -> Reconstruction:
    """A v2 answer (``xorbs``) or a v1 answer (``fetch_info``)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise OriginProtocolError(f"{where}: the reconstruction is not JSON") from None
    if not isinstance(document, dict):
        raise OriginProtocolError(f"{where}: the reconstruction is not an object")
    offset, terms = document.get("offset_into_first_range"), document.get("terms")
    if not _is_count(offset) or not isinstance(terms, list) or len(terms) > MAX_ENTRIES:
        raise OriginProtocolError(f"{where}: the reconstruction lacks its offset or terms")
    assert isinstance(offset, int)
    parsed_terms = tuple(_term(term, where) for term in terms)
    fetches: list[XorbFetch] = []
    if isinstance(document.get("xorbs"), dict):
        for xorb, entries in _mapping(document["xorbs"], where).items():
            for entry in _list(entries, where):
                entry = _mapping(entry, where)
                ranges = tuple(
                    _xorb_range(part.get("chunks"), part.get("bytes"), where)
                    for part in map(lambda p: _mapping(p, where), _list(entry.get("ranges"), where))
                )
                fetches.append(XorbFetch(xorb, _url(entry.get("url"), where), ranges))
    elif isinstance(document.get("fetch_info"), dict):
        for xorb, entries in _mapping(document["fetch_info"], where).items():
            for entry in _list(entries, where):
                entry = _mapping(entry, where)
                part = _xorb_range(entry.get("range"), entry.get("url_range"), where)
                fetches.append(XorbFetch(xorb, _url(entry.get("url"), where), (part,)))
    else:
        raise OriginProtocolError(f"{where}: the reconstruction names no xorb URLs")
    if len(fetches) > MAX_ENTRIES:
        raise OriginProtocolError(f"{where}: the reconstruction names too many URLs")
    return Reconstruction(offset, parsed_terms, tuple(fetches))


def term_chunks(
    reconstruction: Reconstruction,
    fetched: Mapping[tuple[str, str], Sequence[bytes | bytearray]],
) -> list[XorbChunk]:
    """The chunks of every term in file order, from the bodies ``fetched`` (per fetch's
    (xorb, url), one body per signed range)."""
    chunks: list[XorbChunk] = []
    parsed: dict[tuple[str, str, int], list[XorbChunk]] = {}
    for term in reconstruction.terms:
        fetch, part = reconstruction.source_of(term)
        key = (fetch.xorb, fetch.url, fetch.ranges.index(part))
        if key not in parsed:
            bodies = fetched[(fetch.xorb, fetch.url)]
            body = bodies[key[2]]
            if len(body) != part.stop - part.start + 1:
                raise OriginProtocolError(
                    f"xorb {fetch.xorb} bytes {part.header}: got {len(body)} bytes"
                )
            found = parse_chunks(body)
            if len(found) != part.end - part.first:
                raise OriginProtocolError(
                    f"xorb {fetch.xorb} bytes {part.header} hold {len(found)} chunks, "
                    f"not {part.end - part.first}"
                )
            parsed[key] = found
        run = parsed[key][term.first - part.first : term.end - part.first]
        if sum(chunk.size for chunk in run) != term.size:
            raise OriginProtocolError(
                f"chunks {term.first}-{term.end} of xorb {term.xorb} do not unpack to "
                f"{term.size} bytes"
            )
        chunks += run
    return chunks


def _term(item: Any, where: str) -> Term:
    item = _mapping(item, where)
    xorb, size, span = item.get("hash"), item.get("unpacked_length"), item.get("range")
    first, end = _span(span, where)
    if not isinstance(xorb, str) or not _is_count(size):
        raise OriginProtocolError(f"{where}: a reconstruction term lacks its xorb or length")
    assert isinstance(size, int)
    return Term(xorb, first, end, size)


def _xorb_range(chunks: Any, byte_range: Any, where: str) -> XorbRange:
    first, end = _span(chunks, where)
    start, stop = _span(byte_range, where, inclusive=True)
    return XorbRange(first, end, start, stop)


def _span(value: Any, where: str, inclusive: bool = False) -> tuple[int, int]:
    value = _mapping(value, where)
    start, end = value.get("start"), value.get("end")
    if not _is_count(start) or not _is_count(end):
        raise OriginProtocolError(f"{where}: a range lacks its start or end")
    assert isinstance(start, int) and isinstance(end, int)
    if end < start or (end == start and not inclusive):
        raise OriginProtocolError(f"{where}: a range ends before it starts")
    return start, end


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OriginProtocolError(f"{where}: the reconstruction has a malformed entry")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise OriginProtocolError(f"{where}: the reconstruction has a malformed list")
    return value


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise OriginProtocolError(f"{where}: a xorb URL is not an http(s) URL")
    return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def split_byteranges(
    content_type: str, body: bytes, ranges: Sequence[XorbRange]
) -> list[bytes | bytearray]:
    """The bodies of ``ranges`` from a ``multipart/byteranges`` answer (RFC 9110 14.6), each
    part read by the length its Content-Range states, so data that happens to contain the
    boundary cannot cut it short."""
    boundary = _boundary(content_type)
    parts: dict[tuple[int, int], bytes | bytearray] = {}
    delimiter = b"--" + boundary
    position = body.find(delimiter)
    while position >= 0:
        position += len(delimiter)
        if body[position : position + 2] == b"--":
            break
        headers_end = body.find(b"\r\n\r\n", position)
        if headers_end < 0:
            raise OriginProtocolError("a multipart part has no end of headers")
        span = _content_range(body[position:headers_end])
        start = headers_end + 4
        data = body[start : start + span[1] - span[0] + 1]
        if len(data) != span[1] - span[0] + 1:
            raise OriginProtocolError("a multipart part is shorter than its Content-Range")
        parts[span] = data
        position = body.find(delimiter, start + len(data))
    missing = [part.header for part in ranges if (part.start, part.stop) not in parts]
    if missing:
        raise OriginProtocolError(f"the multipart answer lacks bytes {', '.join(missing)}")
    return [parts[(part.start, part.stop)] for part in ranges]


def slice_ranges(body: bytes, ranges: Sequence[XorbRange]) -> list[bytes | bytearray]:
    """The ranges cut from a whole object (a server that ignored Range)."""
    if any(part.stop >= len(body) for part in ranges):
        raise OriginProtocolError("the xorb is shorter than the ranges asked for")
    return [body[part.start : part.stop + 1] for part in ranges]


def _boundary(content_type: str) -> bytes:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    raise OriginProtocolError("a multipart answer names no boundary")


def _content_range(headers: bytes) -> tuple[int, int]:
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"content-range":
            continue
        unit, _, rest = value.strip().partition(b" ")
        span, _, _ = rest.partition(b"/")
        first, _, last = span.partition(b"-")
        if unit.lower() == b"bytes" and first.isdigit() and last.isdigit():
            return int(first), int(last)
    raise OriginProtocolError("a multipart part has no usable Content-Range")
