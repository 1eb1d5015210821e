"""lazyfs's Xet client (sources.xet) as the component tests drive it: one fetch through a fresh
XetSource over a fake hub, so each call exchanges a fresh CAS token."""

from __future__ import annotations

import trio

from lazyfs.core.hubs import HF, HubRepo
from lazyfs.sources.hubtoken import TokenSource
from lazyfs.sources.rangeget import ConnectionPool
from lazyfs.sources.transport import Timeouts, Transport
from lazyfs.sources.xet import XetFile, XetSource
from tests.fakehubs import FakeHub

TIMEOUTS = Timeouts(connect=5.0, read=10.0, request=20.0)


def fetch_through_xet_source(
    hub: FakeHub,
    repo_id: str,
    commit: str,
    file: XetFile,
    start: int,
    length: int,
    *,
    tokens: TokenSource,
    block_size: int,
) -> bytes:
    """Bytes ``[start, start + length)`` of ``file`` at ``repo_id``'s ``commit``, as one fetch
    attempt of a XetSource that serves only that file."""
    transport = Transport.from_environment(environ={})

    async def main() -> bytes:
        async with transport.open_client(TIMEOUTS) as client:
            source = XetSource(
                HubRepo(HF, repo_id, "main"),
                commit,
                hub.endpoint,
                tokens,
                client,
                transport,
                ConnectionPool(TIMEOUTS, transport),
                {file.path: file},
                block_size,
            )
            with trio.fail_after(30):
                block, _ = await source.fetch_block(file.path, start, length)
            return bytes(block)

    return trio.run(main)
