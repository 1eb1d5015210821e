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
import trio

from lazyfs.core.hubs import HF, HubRepo
from lazyfs.errors import SourceError
from lazyfs.sources.rangeget import ConnectionPool
from lazyfs.sources.transport import Timeouts, Transport
from lazyfs.sources.xet import XetFile, XetSource
from tests.fakehubs import FakeHub, fake_hub
from tests.fakexet import FakeXetCas, fake_xet_cas

PATH = "model.bin"
SIZE = 3 * 1024 * 1024 + 12_345
# The hub, the CAS, the file's xetHash and the commit.
Xet = tuple[FakeHub, FakeXetCas, str, str]
TIMEOUTS = Timeouts(connect=5.0, read=10.0, request=20.0)


@pytest.fixture(scope="module")
def contents() -> bytes:
    return random.Random(7).randbytes(SIZE)


@pytest.fixture(scope="module")
def xet(contents: bytes) -> Iterator[Xet]:
    with fake_xet_cas() as cas, fake_hub("hf", cas=cas) as hub:
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
    transport = Transport.from_environment(environ={})

    async def main() -> bytes:
        async with transport.open_client(TIMEOUTS) as client:
            source = XetSource(
                HubRepo(HF, "org/model", "main"),
                commit,
                hub.endpoint,
                {},
                client,
                transport,
                ConnectionPool(TIMEOUTS, transport),
                {PATH: XetFile(PATH, xet_hash, SIZE)},
            )
            with trio.fail_after(30):
                block, _ = await source.fetch_block(PATH, start, length)
            return bytes(block)

    return trio.run(main)


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
