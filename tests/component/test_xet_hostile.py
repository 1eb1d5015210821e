"""lazyfs's Xet client (sources.xet) against a hostile CAS: the fake CAS (tests/fakexet.py),
filled by the real hf_xet client, with its answers rewritten. Every lie must end as a clean
SourceError, never another exception, a hang or bytes that were not proven."""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lazyfs.errors import SourceError
from lazyfs.sources.hubtoken import TokenSource
from lazyfs.sources.xet import XetFile
from tests.fakehubs import FakeHub, fake_hub
from tests.fakexet import FakeXetCas, fake_xet_cas
from tests.xetclient import fetch_through_xet_source
from tests.xetuploads import SessionUploads

PATH = "model.bin"
SIZE = 3 * 1024 * 1024 + 12_345
# The hub, the CAS, the file's xetHash and the commit.
Xet = tuple[FakeHub, FakeXetCas, str, str]


@pytest.fixture(scope="module")
def contents() -> bytes:
    return random.Random(7).randbytes(SIZE)


@pytest.fixture(scope="module")
def xet(contents: bytes, xet_uploads: SessionUploads) -> Iterator[Xet]:
    with fake_xet_cas() as cas, fake_hub("hf", cas=cas, upload=xet_uploads.upload) as hub:
        repo = hub.add_repo("org/model", {PATH: contents})
        found = repo.files_at("main")
        assert found is not None
        (xet_hash,) = [name for name, file in cas.files.items() if file.size == SIZE]
        yield hub, cas, xet_hash, found[0]


@pytest.fixture
def cas(xet: Xet) -> Iterator[FakeXetCas]:
    _, server, _, _ = xet
    try:
        yield server
    finally:
        server.rewrite.clear()
        server.heal()


def fetch(xet: Xet, start: int, length: int) -> bytes:
    """Bytes ``[start, start + length)`` through a fresh XetSource, as one fetch attempt."""
    hub, _, xet_hash, commit = xet
    file = XetFile(PATH, xet_hash, SIZE)
    return fetch_through_xet_source(
        hub, "org/model", commit, file, start, length, tokens=TokenSource(None), block_size=4 << 20
    )


def test_an_honest_cas_gives_the_bytes(xet: Xet, cas: FakeXetCas, contents: bytes) -> None:
    assert fetch(xet, 1_000_000, 100_000) == contents[1_000_000:1_100_000]


def _each_range(answer: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> None:
    for entries in answer["xorbs"].values():
        for entry in entries:
            for part in entry["ranges"]:
                change(part)


def _resign(cas: FakeXetCas) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Sign each URL again for the ranges the answer now states (a CAS that lies coherently:
    the data server then answers the ranges asked)."""

    def rewrite(answer: dict[str, Any]) -> dict[str, Any]:
        for xorb, entries in answer["xorbs"].items():
            for entry in entries:
                ranges = [(p["bytes"]["start"], p["bytes"]["end"]) for p in entry["ranges"]]
                entry["url"] = cas.sign(xorb, ranges)
        return answer

    return rewrite


def _then(*steps: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def rewrite(answer: Any) -> Any:
        for step in steps:
            answer = step(copy.deepcopy(answer))
        return answer

    return rewrite


def _huge_range(answer: dict[str, Any]) -> dict[str, Any]:
    def grow(part: dict[str, Any]) -> None:
        part["bytes"]["end"] = part["bytes"]["start"] + (1 << 50)

    _each_range(answer, grow)
    return answer


def test_a_xorb_range_of_a_petabyte_is_refused_before_anything_is_allocated(
    xet: Xet, cas: FakeXetCas, caplog: pytest.LogCaptureFixture
) -> None:
    cas.rewrite["reconstructions-v2"] = _then(_huge_range, _resign(cas))
    with pytest.raises(SourceError):
        fetch(xet, 1_000_000, 100_000)


@pytest.mark.parametrize(
    "token",
    ["xet_secret\r\nX-Injected: 1", "xet_secret_\u00e9t\u00e9"],
    ids=["newline", "not-ascii"],
)
def test_a_token_no_header_can_carry_fails_cleanly_and_is_never_shown(
    xet: Xet,
    cas: FakeXetCas,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    token: str,
) -> None:
    """The token reaches no header (where it could smuggle another) and no message."""
    monkeypatch.setattr(cas, "mint_token", lambda ttl=3600: (token, int(time.time()) + ttl))
    caplog.set_level(logging.DEBUG, logger="lazyfs")
    before = len(cas.requests)
    with pytest.raises(SourceError) as failure:
        fetch(xet, 0, 100_000)
    assert "secret" not in str(failure.value)
    assert not [r for r in caplog.records if "secret" in r.getMessage()]
    assert cas.requests[before:] == []


def _terms(change: Callable[[list[Any]], list[Any]]) -> Callable[[Any], Any]:
    def rewrite(answer: dict[str, Any]) -> dict[str, Any]:
        answer["terms"] = change(answer["terms"])
        return answer

    return rewrite


def _field(name: str, value: Any) -> Callable[[Any], Any]:
    def rewrite(answer: dict[str, Any]) -> dict[str, Any]:
        answer[name] = value
        return answer

    return rewrite


def _chunk_count(delta: int) -> Callable[[Any], Any]:
    def rewrite(answer: dict[str, Any]) -> dict[str, Any]:
        def change(part: dict[str, Any]) -> None:
            part["chunks"]["end"] += delta

        _each_range(answer, change)
        return answer

    return rewrite


def _gaps(change: Callable[[list[Any]], Any]) -> Callable[[Any], Any]:
    def rewrite(answer: dict[str, Any]) -> dict[str, Any]:
        change(answer["hashRanges"])
        return answer

    return rewrite


def _first_gap(change: Callable[[dict[str, Any]], None]) -> Callable[[list[Any]], None]:
    def rewrite(gaps: list[Any]) -> None:
        change(next(gap for gap in gaps if gap is not None))

    return rewrite


HOSTILE_RECONSTRUCTIONS: dict[str, Callable[[Any], Any]] = {
    "duplicate-term": _terms(lambda terms: terms + terms),
    "no-terms": _terms(lambda terms: []),
    "reversed-terms": _terms(lambda terms: terms[::-1] if len(terms) > 1 else terms * 2),
    "offset-huge": _field("offset_into_first_range", 1 << 60),
    "offset-negative": _field("offset_into_first_range", -1),
    "terms-not-a-list": _field("terms", {"a": 1}),
    "not-an-object": lambda answer: "just a string",
    "more-chunks-than-stored": _chunk_count(+1),
    "fewer-chunks-than-stored": _chunk_count(-1),
    "unpacked-length-lies": _terms(
        lambda terms: [{**term, "unpacked_length": term["unpacked_length"] + 1} for term in terms]
    ),
}

HOSTILE_PROOFS: dict[str, Callable[[Any], Any]] = {
    "window-elsewhere": _field("windows", [{"dirtyByteRange": [0, 1]}]),
    "window-reversed": _field("windows", [{"dirtyByteRange": [2_000_000, 1_000_000]}]),
    "file-size-huge": _field("fileSize", 1 << 62),
    "no-gaps": _field("hashRanges", []),
    "gap-levels-lie": _gaps(_first_gap(lambda gap: gap.update(levels=[[len(gap["nodes"]), 0]]))),
    "gap-levels-many": _gaps(
        _first_gap(lambda gap: gap.update(levels=[[0, 0]] * 50_000 + gap["levels"]))
    ),
    "gap-nodes-not-objects": _gaps(_first_gap(lambda gap: gap.update(nodes=["x"]))),
    "gap-flags-flipped": _gaps(
        _first_gap(lambda gap: gap.update(at_start=not gap["at_start"], at_end=True))
    ),
    "gap-empty": _gaps(_first_gap(lambda gap: gap.update(nodes=[], levels=[]))),
    "gap-size-zero": _gaps(
        _first_gap(lambda gap: gap.update(nodes=[{**n, "size": 0} for n in gap["nodes"]]))
    ),
    "gaps-dropped": _gaps(lambda gaps: gaps.__setitem__(slice(None), [None] * len(gaps))),
}


def _clean_error_or_the_bytes(xet: Xet, contents: bytes) -> None:
    """A lie that changes nothing proven (a term repeated after the window, a node placed on
    another level: a node is only its hash and size) may still read the right bytes; any
    other outcome must be a SourceError."""
    try:
        got = fetch(xet, 1_000_000, 100_000)
    except SourceError:
        return
    assert got == contents[1_000_000:1_100_000]


@pytest.mark.parametrize("name", sorted(HOSTILE_RECONSTRUCTIONS))
def test_a_lying_reconstruction_is_a_clean_error(
    xet: Xet, cas: FakeXetCas, contents: bytes, name: str
) -> None:
    cas.rewrite["reconstructions-v2"] = _then(HOSTILE_RECONSTRUCTIONS[name], _resign_any(cas))
    _clean_error_or_the_bytes(xet, contents)


@pytest.mark.parametrize("name", sorted(HOSTILE_PROOFS))
def test_a_lying_proof_is_a_clean_error(
    xet: Xet, cas: FakeXetCas, contents: bytes, name: str
) -> None:
    cas.rewrite["file-chunk-hashes"] = _then(HOSTILE_PROOFS[name])
    _clean_error_or_the_bytes(xet, contents)


def _resign_any(cas: FakeXetCas) -> Callable[[Any], Any]:
    resign = _resign(cas)

    def rewrite(answer: Any) -> Any:
        return resign(answer) if isinstance(answer, dict) and "xorbs" in answer else answer

    return rewrite
