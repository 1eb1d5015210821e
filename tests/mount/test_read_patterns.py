"""The read path under every read pattern, on real mounts: exact bytes, bounded read-ahead,
small random reads, bounded memory. Behaviour only; scripts/bench measures speed."""

from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazyfs.daemon.runtime import pid_file
from tests.faultproxy import fault_proxy
from tests.mounts import Mounter, lazyfs, publish
from tests.origins import Origin, start_nginx_origin
from tests.waiting import wait_until

MIB = 1024 * 1024
BLOCK = 4 * MIB
# lazyfs's read-ahead bound at 4 MiB blocks (64 MiB of blocks nobody asked for yet).
MAX_WINDOW = 16


def fetched_blocks(origin: Origin, path: str, at_least: int = 0) -> list[int]:
    records = origin.requests(at_least, where=lambda r: r.path == f"/{path}" and bool(r.range))
    return [int(r.range.split("=")[1].split("-")[0]) // BLOCK for r in records if r.range]


def random_file(root: Path, name: str, size: int, seed: int) -> bytes:
    # 64 bits at a time: Generator.bytes would take 8 s of CPU for the GiB file below.
    words = np.random.default_rng(seed).integers(
        0, 2**64 - 1, size=-(-size // 8), dtype=np.uint64, endpoint=True
    )
    data = words.tobytes()[:size]
    (root / name).write_bytes(data)
    return data


@pytest.fixture
def nginx_origin(origin_root: Path, tmp_path: Path) -> Origin:
    served = start_nginx_origin(origin_root, tmp_path / "nginx")
    try:
        yield served  # type: ignore[misc]
    finally:
        served.stop()


def read_ahead_settled(mountpoint: Path) -> Callable[[], bool]:
    """A predicate: true once the daemon has no fetch in flight and its count of fetched blocks
    held still between two looks (each a `lazyfs status`, half a second apart or more)."""
    seen: list[object] = []

    def settled() -> bool:
        result = lazyfs("status", mountpoint, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        seen.append(report["blocks_fetched"] if report["fetches_in_flight"] == 0 else None)
        return len(seen) >= 2 and seen[-1] is not None and seen[-1] == seen[-2]

    return settled


def status_report(mountpoint: Path) -> dict[str, Any]:
    result = lazyfs("status", mountpoint, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def daemon_peak_rss(mountpoint: Path) -> int:
    pid = int(pid_file(mountpoint).read_text())
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_random_reads_fetch_only_the_blocks_they_touch(
    nginx_origin: Origin, mounter: Mounter
) -> None:
    data = random_file(nginx_origin.root, "weights.bin", 128 * MIB, seed=1)
    publish(nginx_origin.root, block_size="4M")
    mountpoint, _ = mounter.mount(nginx_origin.url)
    nginx_origin.clear_log()
    rng = random.Random(2)
    touched: set[int] = set()
    descriptor = os.open(mountpoint / "weights.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
        for _ in range(40):
            offset = rng.randrange(len(data) - 4096)
            assert os.pread(descriptor, 4096, offset) == data[offset : offset + 4096]
            touched.update({offset // BLOCK, (offset + 4095) // BLOCK})
    finally:
        os.close(descriptor)
    assert wait_until(lambda: set(fetched_blocks(nginx_origin, "weights.bin")) >= touched)
    fetched = fetched_blocks(nginx_origin, "weights.bin")
    assert sorted(fetched) == sorted(set(fetched)), "a block was fetched twice"
    # Reads a block apart may look sequential once in a while and fetch one block ahead;
    # never more than that.
    assert set(fetched) >= touched
    assert len(set(fetched) - touched) <= 2


def test_sequential_read_ahead_is_bounded_and_fetches_each_block_once(
    nginx_origin: Origin, mounter: Mounter
) -> None:
    # 32 blocks: room for the whole read-ahead window past the first 16 MiB, and more.
    data = random_file(nginx_origin.root, "big.bin", 128 * MIB, seed=3)
    publish(nginx_origin.root, block_size="4M")
    mountpoint, _ = mounter.mount(nginx_origin.url)
    nginx_origin.clear_log()

    with open(mountpoint / "big.bin", "rb") as handle:
        assert handle.read(16 * MIB) == data[: 16 * MIB]
    assert wait_until(read_ahead_settled(mountpoint), 60)  # to count all of it
    fetched = fetched_blocks(nginx_origin, "big.bin")
    assert sorted(fetched) == sorted(set(fetched))
    assert max(fetched) < 16 * MIB // BLOCK + MAX_WINDOW + 2, sorted(fetched)
    assert len(fetched) < len(data) // BLOCK, "read-ahead ran away"

    with open(mountpoint / "big.bin", "rb") as handle:
        assert handle.read() == data
    fetched = fetched_blocks(nginx_origin, "big.bin", len(data) // BLOCK)
    assert sorted(fetched) == list(range(len(data) // BLOCK)), "each block exactly once"


def test_every_read_pattern_returns_exact_bytes(nginx_origin: Origin, mounter: Mounter) -> None:
    size = 48 * MIB + 12345
    data = random_file(nginx_origin.root, "mixed.bin", size, seed=4)
    publish(nginx_origin.root, block_size="1M")
    mountpoint, _ = mounter.mount(nginx_origin.url)
    failures: list[str] = []

    def check(name: str, offsets: list[int], length: int) -> None:
        descriptor = os.open(mountpoint / "mixed.bin", os.O_RDONLY)
        try:
            for offset in offsets:
                if os.pread(descriptor, length, offset) != data[offset : offset + length]:
                    failures.append(f"{name} at {offset}")
        finally:
            os.close(descriptor)

    rng = random.Random(5)
    patterns = {
        "sequential": (list(range(0, size, 256 * 1024)), 256 * 1024),
        "backwards": (list(range(size - 100_000, 0, -777_777)), 100_000),
        "strided": (list(range(0, size, 3 * MIB + 4097)), 70_000),
        "random-small": ([rng.randrange(size) for _ in range(300)], 4096),
        "random-large": ([rng.randrange(size) for _ in range(40)], 3 * MIB),
        "tail": ([size - 1, size - 5000, size, size + 10], 9000),
    }
    threads = [
        threading.Thread(target=check, args=(name, offsets, length))
        for name, (offsets, length) in patterns.items()
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:10]


def test_daemon_memory_stays_bounded_whatever_the_pattern(
    nginx_origin: Origin, mounter: Mounter
) -> None:
    # Larger than the bound: a daemon that kept what it served would cross it.
    size = 512 * MIB
    data = random_file(nginx_origin.root, "stream.bin", size, seed=6)
    publish(nginx_origin.root, block_size="4M")
    mountpoint, _ = mounter.mount(nginx_origin.url)
    path = mountpoint / "stream.bin"
    with open(path, "rb", buffering=0) as handle:
        position = 0
        while chunk := handle.read(8 * MIB):
            assert chunk == data[position : position + len(chunk)]
            position += len(chunk)
    rng = random.Random(7)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        for _ in range(100):
            offset = rng.randrange(size - MIB)
            os.pread(descriptor, MIB, offset)
    finally:
        os.close(descriptor)
    peak = daemon_peak_rss(mountpoint)
    print(f"daemon peak RSS {peak / MIB:.0f} MiB")
    assert peak < 300 * MIB


def test_eight_readers_at_once_share_one_read_ahead_budget_and_a_ninth_is_not_queued(
    nginx_origin: Origin, mounter: Mounter
) -> None:
    """8 files read sequentially at once: exact bytes, each block fetched once, the budget never
    exceeded; and while read-ahead holds every transfer it may, a read of another file gets
    one (the origin stalls read-ahead's ranges, so this is behaviour, not timing)."""
    block, budget = MIB, 8 * MIB
    shards = {
        f"shard-{n}.bin": random_file(nginx_origin.root, f"shard-{n}.bin", 8 * MIB, seed=20 + n)
        for n in range(8)
    }
    other = random_file(nginx_origin.root, "other.bin", 2 * MIB, seed=30)
    publish(nginx_origin.root, block_size="1M")

    def past_the_first_block_of_a_shard(path: str, range_header: str | None) -> bool:
        start = int(range_header.split("=")[1].split("-")[0]) if range_header else 0
        return "/shard-" in path and start >= block

    with fault_proxy(nginx_origin.url) as proxy:
        mountpoint, _ = mounter.mount(proxy.url, "--read-ahead", "8M")
        nginx_origin.clear_log()
        proxy.hold(past_the_first_block_of_a_shard)
        descriptors = [os.open(mountpoint / name, os.O_RDONLY) for name in shards]
        try:
            for descriptor, data in zip(descriptors, shards.values(), strict=True):
                # No kernel read-ahead: the first block is read, lazyfs reads ahead the second.
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
                assert os.pread(descriptor, block, 0) == data[:block]
            # Read-ahead of block 1 of the eight shards, stalled: it holds every slot it may.
            assert wait_until(lambda: proxy.held >= 2, 30)
            got: list[bytes] = []
            ninth = threading.Thread(
                target=lambda: got.append((mountpoint / "other.bin").read_bytes()), daemon=True
            )
            ninth.start()
            assert wait_until(lambda: not ninth.is_alive(), 30), (
                f"a read of another file waited behind read-ahead ({proxy.held} held)"
            )
            assert got == [other]
            assert proxy.held == 2, "read-ahead used more transfers than it may"
        finally:
            proxy.release_held()
            for descriptor in descriptors:
                os.close(descriptor)

        failures: list[str] = []

        def stream(name: str) -> None:
            with open(mountpoint / name, "rb") as handle:
                if handle.read() != shards[name]:
                    failures.append(name)

        readers = [threading.Thread(target=stream, args=(name,)) for name in shards]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(120)
        assert not failures and not any(reader.is_alive() for reader in readers), failures
        assert wait_until(read_ahead_settled(mountpoint), 60)
        report = status_report(mountpoint)
        assert report["read_ahead_budget"] == budget
        assert 0 < report["read_ahead_peak_bytes"] <= budget
        # Every file is closed: nothing read ahead for them holds budget any more.
        assert wait_until(lambda: status_report(mountpoint)["read_ahead_bytes"] == 0)

    fetched = Counter(
        (r.path, int(r.range.split("=")[1].split("-")[0]) // block)
        for r in nginx_origin.requests()
        if r.range and r.path.startswith("/shard-")
    )
    assert set(fetched) == {(f"/{name}", index) for name in shards for index in range(8)}
    assert set(fetched.values()) == {1}, "every block fetched exactly once"
