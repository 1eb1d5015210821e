"""The shipped nginx cache tier (scripts/cluster/): a request with `Cache-Control: no-cache`
(what lazyfs sends when a block fails verification) fetches the block from upstream again and
replaces a bad cached copy; and its generator refuses bad input with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.origins import (
    CACHE_CONFIG,
    Origin,
    cached_slice,
    nginx_origin,
    start_cache_tier,
    tier_answer,
)
from tests.waiting import wait_until

BLOCK = 64 * 1024
BLOCKS = 4
BAD = 2  # the block whose cached copy is damaged


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    with nginx_origin(tmp_path) as served:
        yield served


def test_no_cache_refetches_a_block_and_replaces_the_bad_cached_copy(
    origin: Origin, tmp_path: Path
) -> None:
    data = os.urandom(BLOCK * BLOCKS)
    (origin.root / "weights.bin").write_bytes(data)
    tier, cache_dir = start_cache_tier(origin, tmp_path / "tier-nginx", "64K")
    try:
        start = BAD * BLOCK
        block = {"Range": f"bytes={start}-{start + BLOCK - 1}"}
        good = data[start : start + BLOCK]
        with httpx.Client(base_url=tier.url) as client:
            first = client.get("/weights.bin", headers=block)
            assert (first.status_code, first.content) == (206, good)
            assert first.headers["x-cache-status"] == "MISS"

            stored = cached_slice(cache_dir, f"/weights.bin{block['Range']}")
            raw = bytearray(stored.read_bytes())
            raw[-100] ^= 0x01  # in the body, which ends the file
            stored.write_bytes(raw)
            damaged = client.get("/weights.bin", headers=block)
            assert damaged.headers["x-cache-status"] == "HIT"
            assert damaged.content != good  # the tier serves what it has: it is not trusted

            before = len(origin.requests(at_least=1))  # the first miss
            again = client.get("/weights.bin", headers={**block, "Cache-Control": "no-cache"})
            assert (again.status_code, again.content) == (206, good)
            assert again.headers["x-cache-status"] == "BYPASS"
            refetched = origin.requests(at_least=before + 1)[before:]
            assert [(r.path, r.range) for r in refetched] == [("/weights.bin", block["Range"])]

            # The good copy replaces the bad one once nginx has renamed it into place.
            assert wait_until(lambda: tier_answer(client, "/weights.bin", block) == ("HIT", good))
        assert len(origin.requests()) == before + 1
    finally:
        tier.stop()


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--upstream", "http://origin/repo"], "--upstream: 'http://origin/repo' must be"),
        (["--upstream", "origin:8000"], "--upstream: 'origin:8000' is not an http"),
        (["--block-size", "3M"], "--block-size: '3M' is not a power of two from 64K to 64M"),
        (["--block-size", "lots"], "--block-size: 'lots' is not a size"),
        (["--cache-dir", "relative/dir"], "--cache-dir: 'relative/dir' must be an absolute"),
        (["--listen", "port"], "--listen: 'port' is not PORT or ADDRESS:PORT"),
    ],
)
def test_cache_config_refuses_bad_input_with_one_line(arguments: list[str], complaint: str) -> None:
    defaults = {"--upstream": "http://origin:8000", "--block-size": "4M", "--cache-dir": "/c"}
    defaults.update(zip(arguments[::2], arguments[1::2], strict=True))
    command = [sys.executable, str(CACHE_CONFIG), *(x for pair in defaults.items() for x in pair)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"cache-config: {complaint}")
    assert result.stderr.count("\n") == 1
