"""Origin once: mounts on many nodes reading the same file through the shipped nginx cache tier
(scripts/cluster/) cost the origin one transfer of each block, and every reader gets the right
bytes (issue 14)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.mounts import Mounter, publish
from tests.origins import (
    Origin,
    cached_slice,
    nginx_origin,
    start_cache_tier,
    tier_answer,
)
from tests.waiting import wait_until

MIB = 1 << 20
BLOCK = 4 * MIB  # lazyfs's default block size, and the tier's slice
FILE_SIZE = 256 * MIB
MOUNTS = 3
CHUNK = MIB  # what each reader asks for at a time


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    # Rate-limited, so the mounts' misses of one block overlap at the tier, as a fleet's do.
    with nginx_origin(tmp_path, limit_rate="100m") as served:
        yield served


@pytest.fixture
def tier(origin: Origin, tmp_path: Path) -> Iterator[Origin]:
    cache, _ = start_cache_tier(origin, tmp_path / "tier-nginx", "4M")
    try:
        yield cache
    finally:
        cache.stop()


def _read_all(path: Path, expected: bytes, failures: list[str]) -> None:
    try:
        with open(path, "rb") as handle:
            for offset in range(0, len(expected), CHUNK):
                if handle.read(CHUNK) != expected[offset : offset + CHUNK]:
                    failures.append(f"{path}: wrong bytes at {offset}")
                    return
            if handle.read(1):
                failures.append(f"{path}: longer than {len(expected)} bytes")
    except OSError as error:
        failures.append(f"{path}: {error}")


def test_three_mounts_through_the_tier_cost_the_origin_each_block_once(
    origin: Origin, tier: Origin, mounter: Mounter
) -> None:
    # Every block differs (identical blocks would be stored, and fetched, once per mount), and
    # costs no random bytes of its own: its number, then the same 4 MiB.
    noise = os.urandom(BLOCK)
    data = b"".join(n.to_bytes(8, "big") + noise[8:] for n in range(FILE_SIZE // BLOCK))
    (origin.root / "weights.bin").write_bytes(data)
    publish(origin.root, "4M")
    mountpoints = [
        mounter.mount(f"{tier.url}/", cache_dir=mounter.cache_dir(f"cache{n}"))[0]
        for n in range(MOUNTS)
    ]

    failures: list[str] = []
    readers = [
        threading.Thread(target=_read_all, args=(mountpoint / "weights.bin", data, failures))
        for mountpoint in mountpoints
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert failures == []

    blocks = [f"bytes={start}-{start + BLOCK - 1}" for start in range(0, FILE_SIZE, BLOCK)]
    transfers = origin.requests(len(blocks), where=lambda r: r.path == "/weights.bin")
    ranges = sorted(record.range or "" for record in transfers)
    assert ranges == sorted(blocks)  # each block once, as one slice
    assert sum(record.bytes_sent for record in transfers) == FILE_SIZE
    assert {record.status for record in transfers} == {206}
    # The readers' requests all went to the tier, none around it.
    assert len([r for r in tier.requests() if r.path == "/weights.bin"]) >= len(blocks)


def test_a_bad_cached_block_is_repaired_through_the_tier_and_never_served(
    origin: Origin, mounter: Mounter, tmp_path: Path
) -> None:
    block = 64 * 1024
    data = os.urandom(4 * block)
    (origin.root / "weights.bin").write_bytes(data)
    publish(origin.root)
    tier, cache_dir = start_cache_tier(origin, tmp_path / "small-tier", "64K")
    try:
        # The tier holds block 2, then its copy rots on disk.
        bad = f"bytes={2 * block}-{3 * block - 1}"
        with httpx.Client(base_url=tier.url) as client:
            assert client.get("/weights.bin", headers={"Range": bad}).status_code == 206
            stored = cached_slice(cache_dir, f"/weights.bin{bad}")
            raw = bytearray(stored.read_bytes())
            raw[-100] ^= 0x01
            stored.write_bytes(raw)
            before = len(origin.requests(at_least=1))  # the first miss
            mountpoint, _ = mounter.mount(tier.url)
            assert (mountpoint / "weights.bin").read_bytes() == data
            # The mount asked the tier again past its cache: of the origin's transfers (blocks 0,
            # 1 and 3 missed, block 2 asked again) one was for that block, and the tier now holds
            # a good copy.
            since = origin.requests(at_least=before + 4)[before:]
            again = [r.range for r in since if r.path == "/weights.bin"]
            assert again.count(bad) == 1
            good = ("HIT", data[2 * block : 3 * block])
            assert wait_until(lambda: tier_answer(client, "/weights.bin", {"Range": bad}) == good)
        assert "without its cache" in mounter.log_text()
    finally:
        tier.stop()


def test_a_tier_of_two_caches_shares_the_blocks_and_survives_one_stopping(
    origin: Origin, mounter: Mounter, tmp_path: Path
) -> None:
    block = 64 * 1024
    data = os.urandom(64 * block)
    (origin.root / "weights.bin").write_bytes(data)
    publish(origin.root)
    first, _ = start_cache_tier(origin, tmp_path / "tier-a", "64K")
    second, _ = start_cache_tier(origin, tmp_path / "tier-b", "64K")
    try:
        mountpoint, _ = mounter.mount(origin.url, "--tier", f"{first.url}|{second.url}")
        path = mountpoint / "weights.bin"
        half = 32 * block
        with open(path, "rb") as handle:
            assert handle.read(half) == data[:half]
        asked = [
            len([r for r in cache.requests() if r.path == "/weights.bin"])
            for cache in (first, second)
        ]
        # Each member got a share of the blocks, none twice (the shares add up to the blocks
        # read, give or take read-ahead).
        assert all(count >= 4 for count in asked), asked
        # The manifest never comes from a tier.
        assert not [
            r for cache in (first, second) for r in cache.requests() if "manifest" in r.path
        ]
        second.stop()
        with open(path, "rb") as handle:
            handle.seek(half)
            assert handle.read() == data[half:]
    finally:
        first.stop()
        second.stop()


def test_a_group_of_caches_is_a_tier_not_a_mirror(mounter: Mounter) -> None:
    from tests.mounts import lazyfs

    result = lazyfs(
        "mount",
        "http://127.0.0.1:9/repo",
        mounter.new_mountpoint(),
        "--mirror",
        "http://127.0.0.1:9/a|http://127.0.0.1:9/b",
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "a group of caches is a --tier" in result.stderr
