"""A bad copy from a cache in front of the files is asked for again past the cache
(``Cache-Control: no-cache``), and the cache keeps its place: real HTTP, an nginx origin with
two fault proxies in front of it, one a stale cache, the other a mirror."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import trio

from lazyfs.core.attempts import RetryPolicy
from lazyfs.read.fetcher import BlockFetcher
from lazyfs.sources.origin import HttpOrigin, make_client
from lazyfs.sources.transport import Transport
from tests.faultproxy import fault_proxy
from tests.origins import start_nginx_origin

BS = 64 * 1024
DATA = bytes(range(256)) * (3 * BS // 256)
TRANSPORT = Transport.from_environment(environ={})
POLICY = RetryPolicy(attempts=4, first_delay=0.01, max_delay=0.05, deadline=20.0)


def block_range(index: int) -> str:
    return f"bytes={index * BS}-{(index + 1) * BS - 1}"


def test_a_bad_cached_copy_is_refetched_past_the_cache_and_the_cache_is_not_benched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "w.bin").write_bytes(DATA)
    origin = start_nginx_origin(root, tmp_path / "nginx")
    try:
        with fault_proxy(origin.url) as cache, fault_proxy(origin.url) as mirror:
            cache.bad_copies.add(block_range(0))

            async def main() -> list[bytes]:
                async with make_client(POLICY, TRANSPORT) as client:
                    sources = [
                        HttpOrigin(url, client, POLICY, transport=TRANSPORT)
                        for url in (cache.url, mirror.url)
                    ]
                    try:
                        fetcher = BlockFetcher(sources, POLICY.limits)
                        blocks = []
                        for index in range(2):
                            expected = hashlib.sha256(DATA[index * BS : (index + 1) * BS])
                            data, _ = await fetcher.fetch(
                                "w.bin", index, index * BS, BS, expected.hexdigest()
                            )
                            blocks.append(bytes(data))
                        return blocks
                    finally:
                        for source in sources:
                            source.close()

            with caplog.at_level(logging.WARNING, logger="lazyfs.read.fetcher"):
                blocks = trio.run(main)
    finally:
        origin.stop()
    assert blocks == [DATA[:BS], DATA[BS : 2 * BS]]
    # Block 0: the bad copy, then the same cache asked past itself; the mirror never asked.
    assert cache.seen[:2] == [
        ("/w.bin", block_range(0), None),
        ("/w.bin", block_range(0), "no-cache"),
    ]
    assert not cache.bad_copies  # the cache's copy was repaired
    # Block 1: the cache again first (not benched), asked once, plainly.
    assert cache.seen[2:] == [("/w.bin", block_range(1), None)]
    assert mirror.seen == []
    assert f"asking {cache.url}/w.bin again without its cache" in caplog.text
