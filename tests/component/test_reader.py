"""BlockReader over an in-memory fake origin and a real BlockStore; BlockStore on its own.

Component tier: no FUSE, no network. Every test drives the reader inside its own ``trio.run``;
ordering is proven with events, never with wall-clock thresholds.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyfs.cache.store import BlockStore
from lazyfs.core.blocks import block_count
from lazyfs.core.manifest import MAX_BLOCK_SIZE, FileEntry
from lazyfs.core.readahead import ReadPattern
from lazyfs.errors import (
    BlockIntegrityError,
    CacheError,
    LazyfsError,
    OriginHTTPError,
    OriginUnreachable,
    SourceError,
)
from lazyfs.read.reader import BlockReader, open_block_reader
from tests.waiting import wait_until_async

KIB = 1024
MIB = 1024 * KIB
BS = 64 * KIB
STORE_LIMIT = 64 * MIB
TIMEOUT = 10  # seconds: only ever reached by a hang


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def randbytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def make_entry(path: str, data: bytes, block_size: int = BS) -> FileEntry:
    blocks = tuple(sha(data[i : i + block_size]) for i in range(0, len(data), block_size))
    assert len(blocks) == block_count(len(data), block_size)
    return FileEntry(path, len(data), False, sha(data), blocks)


DATA = randbytes(3 * BS + 1000, seed=1)  # four blocks, the last one 1000 bytes
SIZE = len(DATA)
ENTRY = make_entry("model/weights.bin", DATA)

Key = tuple[str, int]


class FakeSource:
    """An in-memory origin that records every fetch and misbehaves on request, per block."""

    def __init__(self, files: dict[str, bytes], block_size: int = BS) -> None:
        self.files = files
        self.block_size = block_size
        self.calls: list[Key] = []
        self.uncached: list[Key] = []  # the fetches asked past any cache (no_cache)
        self.corrupt_once: set[Key] = set()
        self.corrupt_always: set[Key] = set()
        self.errors: dict[Key, SourceError] = {}
        self.errors_once: dict[Key, SourceError] = {}
        self.gates: dict[Key, trio.Event] = {}  # a fetch of the block waits for its gate
        self.gate_all: trio.Event | None = None
        self.started: dict[Key, trio.Event] = {}  # set when a fetch of the block begins

    def url_for(self, path: str) -> str:
        return f"http://origin.test/repo/{path}"

    async def fetch_block(
        self, path: str, start: int, length: int, *, no_cache: bool = False
    ) -> tuple[bytes, str]:
        if no_cache:
            self.uncached.append((path, start // self.block_size))
        data = await self.fetch_range(path, start, length)
        return data, hashlib.sha256(data).hexdigest()

    async def fetch_range(self, path: str, start: int, length: int) -> bytes:
        assert start % self.block_size == 0 and 0 < length <= self.block_size
        key = (path, start // self.block_size)
        self.calls.append(key)
        if key in self.started:
            self.started[key].set()
        gate = self.gates.get(key, self.gate_all)
        if gate is not None:
            await gate.wait()
        else:
            await trio.lowlevel.checkpoint()
        if key in self.errors:
            raise self.errors[key]
        if key in self.errors_once:
            raise self.errors_once.pop(key)
        data = self.files[path][start : start + length]
        assert len(data) == length
        if key in self.corrupt_always or key in self.corrupt_once:
            self.corrupt_once.discard(key)
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def fetches(self, key: Key) -> int:
        return self.calls.count(key)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlockStore]:
    block_store = BlockStore(tmp_path / "blocks", STORE_LIMIT)
    yield block_store
    block_store.close()


@pytest.fixture
def source() -> FakeSource:
    return FakeSource({ENTRY.path: DATA})


@pytest.fixture
def reader(source: FakeSource, store: BlockStore) -> BlockReader:
    return BlockReader(source, store, BS)


def run(fn: Callable[[], Awaitable[object]]) -> None:
    async def main() -> None:
        with trio.fail_after(TIMEOUT):
            await fn()

    trio.run(main)


def read(reader: BlockReader, offset: int, length: int, entry: FileEntry = ENTRY) -> bytes:
    async def main() -> bytes:
        with trio.fail_after(TIMEOUT):
            return await reader.read(entry, offset, length)

    return trio.run(main)


async def until_waiting(reader: BlockReader, digest: str, count: int) -> None:
    """Until ``count`` tasks wait on the in-flight fetch of ``digest`` (white-box, to make
    the concurrency tests deterministic)."""
    while reader.loading.waiting(digest) < count:
        await trio.sleep(0.001)


# -- exact bytes -----------------------------------------------------------------------------

READS = [
    (0, 0),
    (0, 1),
    (0, BS),
    (0, BS + 1),
    (1, BS - 2),
    (BS - 1, 2),
    (BS, BS),
    (BS - 10, 2 * BS + 20),
    (0, SIZE),
    (0, SIZE + 12345),
    (3 * BS, 1000),
    (3 * BS + 999, 1),
    (3 * BS + 500, 10_000),
    (SIZE - 1, 1),
    (SIZE - 1, 100),
    (SIZE, 0),
    (SIZE, 100),
    (SIZE + 1, 100),
    (10 * SIZE, BS),
    (12345, 0),
]


@pytest.mark.parametrize(("offset", "length"), READS)
def test_read_returns_exactly_the_files_bytes(
    reader: BlockReader, source: FakeSource, store: BlockStore, offset: int, length: int
) -> None:
    expected = DATA[offset : offset + length]
    assert read(reader, offset, length) == expected  # fetched
    end = min(SIZE, offset + length)
    touched = [i for i in range(4) if offset < end and i * BS < end and offset < (i + 1) * BS]
    assert sorted(i for _, i in source.calls) == touched
    assert read(reader, offset, length) == expected  # held by the reader
    remount = BlockReader(source, store, BS)
    assert read(remount, offset, length) == expected  # from the disk store
    assert len(source.calls) == len(touched)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    offset=st.integers(0, SIZE + BS),
    length=st.integers(0, SIZE + BS),
    warm=st.sets(st.integers(0, 3)),
)
def test_read_matches_slicing_property(offset: int, length: int, warm: set[int]) -> None:
    """Any read, with any subset of the blocks already cached, is the file's slice; each block
    is fetched at most once and only if it was not cached."""
    with tempfile.TemporaryDirectory() as directory:
        store = BlockStore(Path(directory), STORE_LIMIT)
        try:
            for index in warm:
                block = DATA[index * BS : (index + 1) * BS]
                store.put(ENTRY.blocks[index], block)
            source = FakeSource({ENTRY.path: DATA})
            reader = BlockReader(source, store, BS)
            assert read(reader, offset, length) == DATA[offset : offset + length]
            assert len(source.calls) == len(set(source.calls))
            assert not {index for _, index in source.calls} & warm
            assert read(reader, offset, length) == DATA[offset : offset + length]
            assert len(source.calls) == len(set(source.calls))
        finally:
            store.close()


# -- the cache and coalescing ---------------------------------------------------------------


def test_second_read_of_a_block_is_a_cache_hit(
    reader: BlockReader, source: FakeSource, store: BlockStore
) -> None:
    assert read(reader, BS + 10, 100) == DATA[BS + 10 : BS + 110]
    assert source.calls == [(ENTRY.path, 1)]
    assert reader.counters.cache_hits == 0
    assert reader.counters.blocks_fetched == 1
    assert reader.counters.bytes_fetched == BS
    assert store.contains(ENTRY.blocks[1])

    # The same reader: from the block it holds in memory.
    assert read(reader, BS + 5000, 3000) == DATA[BS + 5000 : BS + 8000]
    assert source.calls == [(ENTRY.path, 1)]
    assert reader.counters.memory_hits + reader.counters.cache_hits == 1
    assert reader.counters.blocks_fetched == 1

    # A new reader over the same store (a remount): from the disk store.
    again = BlockReader(source, store, BS)
    assert read(again, BS, BS) == DATA[BS : 2 * BS]
    assert read(again, BS + 1, 10) == DATA[BS + 1 : BS + 11]
    assert source.calls == [(ENTRY.path, 1)]
    assert again.counters.cache_hits == 1
    assert again.counters.blocks_fetched == 0


def test_memory_is_bounded_and_evicted_blocks_come_from_the_store(
    source: FakeSource, store: BlockStore
) -> None:
    reader = BlockReader(source, store, BS, memory_bytes=2 * BS, readahead_bytes=0)
    for index in range(4):
        assert read(reader, index * BS, BS) == DATA[index * BS : (index + 1) * BS]
        assert reader.cache.recent.size <= 2 * BS
    assert read(reader, 0, 10) == DATA[:10]  # block 0 was pushed out of memory
    assert reader.counters.cache_hits == 1
    assert read(reader, 0, 10) == DATA[:10]  # and is held again
    assert reader.counters.cache_hits == 1
    assert len(source.calls) == 4


def test_concurrent_reads_of_one_block_fetch_it_once(
    reader: BlockReader, source: FakeSource, store: BlockStore
) -> None:
    key = (ENTRY.path, 2)
    slices = [(2 * BS + 3000 * i, 1000 + i) for i in range(20)]
    results: dict[int, bytes] = {}

    async def main() -> None:
        source.gates[key] = gate = trio.Event()

        async def one(i: int) -> None:
            offset, length = slices[i]
            results[i] = await reader.read(ENTRY, offset, length)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
            await until_waiting(reader, ENTRY.blocks[2], 19)
            gate.set()

    run(main)
    assert source.calls == [key]
    assert reader.counters.blocks_fetched == 1
    for i, (offset, length) in enumerate(slices):
        assert results[i] == DATA[offset : offset + length]
    assert store.contains(ENTRY.blocks[2])
    assert len(reader.loading) == 0


def test_identical_blocks_of_two_files_are_fetched_and_stored_once(store: BlockStore) -> None:
    shared = randbytes(BS, seed=7)
    a_data = randbytes(BS, seed=8) + shared
    b_data = shared + randbytes(500, seed=9)
    a, b = make_entry("a.bin", a_data), make_entry("b/b.bin", b_data)
    assert a.blocks[1] == b.blocks[0]
    source = FakeSource({a.path: a_data, b.path: b_data})
    reader = BlockReader(source, store, BS)
    results: dict[str, bytes] = {}

    async def main() -> None:
        source.gate_all = gate = trio.Event()

        async def one(entry: FileEntry, offset: int, length: int) -> None:
            results[entry.path] = await reader.read(entry, offset, length)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, a, BS + 100, 200)
            nursery.start_soon(one, b, 100, 200)
            await until_waiting(reader, shared_digest, 1)
            gate.set()

    shared_digest = sha(shared)
    run(main)
    assert results == {a.path: shared[100:300], b.path: shared[100:300]}
    assert len(source.calls) == 1
    assert store.statistics().blocks == 1

    # Sequentially, from the other file: served from the store.
    assert read(reader, 0, BS, entry=b) == shared
    assert read(reader, BS, BS, entry=a) == shared
    assert len(source.calls) == 1
    assert store.statistics().blocks == 1


# -- verification ----------------------------------------------------------------------------


def test_block_corrupt_once_is_refetched(
    reader: BlockReader, source: FakeSource, store: BlockStore
) -> None:
    key = (ENTRY.path, 1)
    source.corrupt_once.add(key)
    assert read(reader, BS, BS) == DATA[BS : 2 * BS]
    assert source.calls == [key, key]
    assert reader.counters.verification_failures == 1
    assert reader.counters.blocks_fetched == 2
    assert store.contains(ENTRY.blocks[1])
    # Stored verified: the next read is a hit with the right bytes.
    assert read(reader, BS, 10) == DATA[BS : BS + 10]
    assert len(source.calls) == 2


def test_block_corrupt_always_fails_after_two_fetches(
    reader: BlockReader, source: FakeSource, store: BlockStore
) -> None:
    key = (ENTRY.path, 2)
    source.corrupt_always.add(key)
    block = DATA[2 * BS : 3 * BS]
    bad = bytes([block[0] ^ 0xFF]) + block[1:]
    with pytest.raises(BlockIntegrityError) as info:
        read(reader, 2 * BS + 7, 100)
    error = info.value
    assert (error.path, error.index) == (ENTRY.path, 2)
    assert error.url == source.url_for(ENTRY.path)
    assert (error.expected, error.actual) == (ENTRY.blocks[2], sha(bad))
    for part in (ENTRY.path, "block 2", error.url, error.expected, error.actual, "2 fetches"):
        assert part in str(error)
    assert source.calls == [key, key]
    assert reader.counters.verification_failures == 2
    assert not store.contains(ENTRY.blocks[2])
    assert store.read_block(ENTRY.blocks[2]) is None
    assert len(reader.loading) == 0

    # The other blocks of the file are unaffected.
    assert read(reader, 0, 2 * BS) == DATA[: 2 * BS]
    assert read(reader, 3 * BS, 1000) == DATA[3 * BS :]
    # A failure is not remembered: the next read of the block tries the origin again.
    with pytest.raises(BlockIntegrityError):
        read(reader, 2 * BS, 1)
    assert source.fetches(key) == 4


@pytest.mark.parametrize("failure", ["integrity", "source"])
def test_failing_block_in_a_multi_block_read_raises_the_lazyfs_error(
    reader: BlockReader, source: FakeSource, failure: str
) -> None:
    key = (ENTRY.path, 1)
    if failure == "integrity":
        source.corrupt_always.add(key)
    else:
        source.errors[key] = OriginUnreachable("origin.test: connection refused")
    with pytest.raises(LazyfsError):
        read(reader, BS - 100, 200)  # the end of block 0 and the start of block 1


# -- origin failures -------------------------------------------------------------------------


def test_source_error_propagates(reader: BlockReader, source: FakeSource) -> None:
    key = (ENTRY.path, 0)
    source.errors[key] = OriginHTTPError("http://origin.test/repo/x: HTTP 404", 404)
    with pytest.raises(OriginHTTPError) as info:
        read(reader, 10, 10)
    assert info.value.status == 404
    assert len(reader.loading) == 0
    assert reader.counters.blocks_fetched == 0
    del source.errors[key]
    assert read(reader, 10, 10) == DATA[10:20]


def test_fetch_times_retries_and_failures_are_counted(
    source: FakeSource, store: BlockStore
) -> None:
    seconds: list[float] = []
    reader = BlockReader(source, store, BS, observe_fetch=seconds.append)
    source.corrupt_once.add((ENTRY.path, 0))
    source.errors[(ENTRY.path, 1)] = OriginHTTPError("http://origin.test/repo/x: HTTP 404", 404)
    assert read(reader, 0, 10) == DATA[:10]
    with pytest.raises(OriginHTTPError):
        read(reader, BS, 10)
    # Two transfers completed (the bad copy and the good one): the metrics saw both.
    assert len(seconds) == 2 and all(elapsed >= 0 for elapsed in seconds)
    counters = reader.fetcher.counters
    assert (counters.retries, counters.errors, counters.fetches_in_flight) == (1, 1, 0)
    assert reader.counters.blocks_fetched == 2


def test_source_error_reaches_every_waiter_without_a_hang(
    reader: BlockReader, source: FakeSource
) -> None:
    key = (ENTRY.path, 3)
    source.errors[key] = OriginUnreachable("origin.test: timed out")
    outcomes: list[BaseException | bytes] = []

    async def main() -> None:
        source.gates[key] = gate = trio.Event()

        async def one(offset: int) -> None:
            try:
                outcomes.append(await reader.read(ENTRY, offset, 10))
            except LazyfsError as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, 3 * BS + 10 * i)
            await until_waiting(reader, ENTRY.blocks[3], 19)
            gate.set()

    run(main)  # fail_after: a waiter left hanging fails the test
    assert len(outcomes) == 20
    assert all(isinstance(outcome, OriginUnreachable) for outcome in outcomes)
    # One loader for all twenty readers; a timeout is worth asking again, so its fetch made
    # both of the reader's attempts (2 by default) before giving up.
    assert source.calls == [key] * 2
    assert len(reader.loading) == 0


def test_cancelled_fetch_hands_the_block_to_a_waiter(
    reader: BlockReader, source: FakeSource
) -> None:
    """The fetching task is cancelled (its FUSE request interrupted): a task waiting for the
    same block must not hang; it fetches the block itself."""
    key = (ENTRY.path, 0)
    results: list[bytes] = []

    async def main() -> None:
        source.gates[key] = gate = trio.Event()
        source.started[key] = started = trio.Event()
        first = trio.CancelScope()

        async def owner() -> None:
            with first:
                await reader.read(ENTRY, 0, 10)

        async def waiter() -> None:
            results.append(await reader.read(ENTRY, 5, 10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner)
            await started.wait()
            nursery.start_soon(waiter)
            await until_waiting(reader, ENTRY.blocks[0], 1)
            first.cancel()
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert first.cancelled_caught

    run(main)
    assert results == [DATA[5:15]]
    assert source.calls == [key, key]
    assert len(reader.loading) == 0


def test_slow_block_does_not_delay_another_block(reader: BlockReader, source: FakeSource) -> None:
    slow = (ENTRY.path, 0)
    order: list[str] = []

    async def main() -> None:
        source.gates[slow] = gate = trio.Event()
        source.started[slow] = started = trio.Event()

        async def slow_read() -> None:
            assert await reader.read(ENTRY, 0, 100) == DATA[:100]
            order.append("slow done")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_read)
            await started.wait()
            # Block 0 is in flight and stalled; blocks 1 and 3 (and a slice of the same file
            # far from block 0) are served meanwhile.
            assert await reader.read(ENTRY, BS + 1, 100) == DATA[BS + 1 : BS + 101]
            assert await reader.read(ENTRY, 3 * BS, 1000) == DATA[3 * BS :]
            order.append("fast done")
            assert not gate.is_set()
            gate.set()

    run(main)
    assert order == ["fast done", "slow done"]


# -- cache failures --------------------------------------------------------------------------


def test_cache_write_failure_still_serves_the_data(
    reader: BlockReader, source: FakeSource, store: BlockStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_put(digest: str, block: bytes) -> None:
        raise CacheError("cannot store block in cache: disk full")

    monkeypatch.setattr(store, "put", broken_put)
    assert read(reader, 100, 1000) == DATA[100:1100]
    assert reader.counters.cache_write_failures == 1
    assert not store.contains(ENTRY.blocks[0])
    assert len(reader.loading) == 0
    # Nothing was stored, so a reader without the block in memory fetches it again.
    again = BlockReader(source, store, BS)
    assert read(again, 0, BS) == DATA[:BS]
    assert source.calls == [(ENTRY.path, 0)] * 2
    assert again.counters.cache_write_failures == 1


def test_cache_read_failure_falls_back_to_the_origin(
    reader: BlockReader, source: FakeSource, store: BlockStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert read(reader, 0, 10) == DATA[:10]
    assert store.contains(ENTRY.blocks[0])

    def broken_query(*args: object, **kwargs: object) -> object:
        raise sqlite3.DatabaseError("database disk image is malformed")

    # Every query fails (BlockStore maps it to CacheError); the index says the block is held.
    monkeypatch.setattr(type(store._cache), "_sql", property(lambda cache: broken_query))
    again = BlockReader(source, store, BS)
    assert read(again, 0, 10) == DATA[:10]
    assert source.calls == [(ENTRY.path, 0)] * 2


def test_truncated_cached_block_is_fetched_again(
    reader: BlockReader, source: FakeSource, store: BlockStore, tmp_path: Path
) -> None:
    assert read(reader, 0, BS) == DATA[:BS]
    (block_file,) = (tmp_path / "blocks").rglob("*.val")
    os.truncate(block_file, BS // 2)
    again = BlockReader(source, store, BS)
    assert read(again, 0, 10) == DATA[:10]
    assert read(again, BS - 10, 10) == DATA[BS - 10 : BS]
    assert source.calls == [(ENTRY.path, 0)] * 2


def test_corrupted_cached_block_is_dropped_and_fetched_again(
    reader: BlockReader, source: FakeSource, store: BlockStore, tmp_path: Path
) -> None:
    """The cache directory is not trusted: a stored block whose bytes changed on disk is
    detected, dropped, fetched again and stored again."""
    assert read(reader, BS, BS) == DATA[BS : 2 * BS]
    (block_file,) = (tmp_path / "blocks").rglob("*.val")
    with open(block_file, "r+b") as handle:
        handle.seek(1234)
        handle.write(b"\0" * 8)
    again = BlockReader(source, store, BS)
    assert read(again, BS + 1230, 20) == DATA[BS + 1230 : BS + 1250]
    assert again.counters.cache_verification_failures == 1
    assert again.counters.cache_hits == 0
    assert source.calls == [(ENTRY.path, 1)] * 2
    third = BlockReader(source, store, BS)
    assert read(third, BS, BS) == DATA[BS : 2 * BS]
    assert third.counters.cache_hits == 1
    assert len(source.calls) == 2


# -- BlockStore ------------------------------------------------------------------------------


def digest_of(i: int) -> str:
    return f"{i:064x}"


def test_store_read_block(store: BlockStore) -> None:
    block = randbytes(BS, seed=3)
    assert store.read_block(sha(block)) is None
    store.put(sha(block), block)
    assert store.contains(sha(block))
    assert store.read_block(sha(block)) == block
    assert store.read_block(sha(b"absent")) is None
    store.put(sha(block), block)  # putting it again is harmless
    assert store.statistics().blocks == 1


def test_store_truncated_block_file_reads_back_short(store: BlockStore, tmp_path: Path) -> None:
    block = randbytes(BS, seed=4)
    store.put(sha(block), block)
    (block_file,) = (tmp_path / "blocks").rglob("*.val")
    assert block_file.stat().st_size == BS
    os.truncate(block_file, BS - 1)
    # The store hands back what is on disk; the reader's digest check rejects it.
    assert store.read_block(sha(block)) == block[:-1]


def test_store_reads_a_planted_huge_block_file_only_past_the_largest_block(
    store: BlockStore, tmp_path: Path
) -> None:
    block = randbytes(BS, seed=6)
    store.put(sha(block), block)
    (block_file,) = (tmp_path / "blocks").rglob("*.val")
    os.truncate(block_file, MAX_BLOCK_SIZE + 4096)  # sparse: costs no disk
    read = store.read_block(sha(block))
    assert read is not None and len(read) == MAX_BLOCK_SIZE + 1
    assert store.verify() == (1, [sha(block)])


def test_store_deleted_block_file_reads_as_missing(store: BlockStore, tmp_path: Path) -> None:
    block = randbytes(BS, seed=5)
    store.put(sha(block), block)
    (block_file,) = (tmp_path / "blocks").rglob("*.val")
    block_file.unlink()
    assert store.read_block(sha(block)) is None


STORE_BLOCK = 256 * KIB
SMALL_LIMIT = 2 * MIB
DB_SLACK = 128 * KIB  # diskcache counts its sqlite file in volume()


def test_store_volume_stays_bounded(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks", SMALL_LIMIT)
    try:
        block = bytes(STORE_BLOCK)
        for i in range(30):
            store.put(digest_of(i), block)
            assert store.statistics().volume <= SMALL_LIMIT + STORE_BLOCK + DB_SLACK
        assert store.contains(digest_of(29))
        assert not store.contains(digest_of(0))
        assert len(list((tmp_path / "blocks").rglob("*.val"))) == store.statistics().blocks
    finally:
        store.close()


def test_store_eviction_keeps_the_most_recent_blocks(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks", SMALL_LIMIT)
    try:
        block = bytes(STORE_BLOCK)
        fits = (SMALL_LIMIT - DB_SLACK) // STORE_BLOCK  # 7
        for i in range(30):
            store.put(digest_of(i), block)
            assert store.contains(digest_of(i)), f"block {i} evicted by its own put"
            if i >= fits:
                # Full: evicting one or two blocks per put keeps it near the limit, and the
                # most recently used blocks are the ones that remain.
                assert store.statistics().volume >= SMALL_LIMIT - 2 * STORE_BLOCK
                assert all(store.contains(digest_of(j)) for j in range(i - fits + 2, i + 1))
    finally:
        store.close()


def test_store_evicts_least_recently_used_not_oldest(tmp_path: Path) -> None:
    """A block read recently survives eviction while blocks put after it do not."""
    block_size = 16 * KIB
    store = BlockStore(tmp_path / "blocks", SMALL_LIMIT)
    try:
        block = bytes(block_size)
        capacity = SMALL_LIMIT // block_size  # 128
        for i in range(capacity // 2):
            store.put(digest_of(i), block)
        for i in range(capacity // 2, 2 * capacity):
            assert store.read_block(digest_of(0)) == block  # keep block 0 in use
            store.put(digest_of(i), block)
            assert store.statistics().volume <= SMALL_LIMIT + block_size + DB_SLACK
        assert store.contains(digest_of(0))
        assert not store.contains(digest_of(1))
        assert store.contains(digest_of(2 * capacity - 1))
    finally:
        store.close()


def test_a_read_within_one_block_is_a_view_of_the_block_not_a_copy(
    reader: BlockReader,
) -> None:
    async def main() -> None:
        first = await reader.read(ENTRY, 100, 1000)
        second = await reader.read(ENTRY, 5000, 1000)
        assert isinstance(first, memoryview) and isinstance(second, memoryview)
        # Both views share the one block held in memory.
        assert first.obj is second.obj
        assert len(memoryview(first.obj)) == BS
        assert bytes(first) == DATA[100:1100] and bytes(second) == DATA[5000:6000]

    trio.run(main)


def test_read_ahead_follows_a_sequential_reader_and_stays_bounded(
    source: FakeSource, store: BlockStore
) -> None:
    data = randbytes(40 * BS, seed=9)
    entry = make_entry("long.bin", data)
    source.files[entry.path] = data

    async def main() -> None:
        async with open_block_reader(source, store, BS, readahead_bytes=4 * BS) as reader:

            def read_ahead_done() -> bool:  # white-box: no block left that it means to fetch
                assert reader.ahead is not None
                return reader.ahead.under_way == 0

            pattern = ReadPattern()
            for index in range(6):
                await reader.read(entry, index * BS, BS, pattern)
            assert await wait_until_async(read_ahead_done)
            fetched = {index for path, index in source.calls if path == entry.path}
            # Blocks 0-5 were read; at most the 4-block window beyond them was fetched.
            assert set(range(6)) <= fetched <= set(range(10))
            assert reader.counters.blocks_read_ahead > 0

            random_reader = ReadPattern()
            before = len(source.calls)
            for index in (30, 20, 35, 25):
                await reader.read(entry, index * BS + 7, 10, random_reader)
            assert await wait_until_async(read_ahead_done)
            assert len(source.calls) - before == 4, "random reads fetched only their blocks"

    trio.run(main)


# -- keeping blocks on disk (prefetch) -------------------------------------------------------


def test_keep_block_writes_a_block_held_only_in_memory(
    source: FakeSource, store: BlockStore
) -> None:
    async def main() -> None:
        async with open_block_reader(source, store, BS) as reader:
            assert await reader.read(ENTRY, 0, 10) == DATA[:10]
            assert await reader.keep_block(ENTRY, 0)  # waits for the background write
            store.discard(ENTRY.blocks[0])  # evicted from disk, still in memory
            assert await reader.keep_block(ENTRY, 0)
            assert store.contains(ENTRY.blocks[0])

    run(main)
    assert source.calls == [(ENTRY.path, 0)]


def test_keep_block_writes_each_fetched_block_once(
    source: FakeSource, store: BlockStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    puts: list[str] = []
    put = store.put

    def counting_put(digest: str, block: bytes) -> None:
        puts.append(digest)
        put(digest, block)

    monkeypatch.setattr(store, "put", counting_put)

    async def main() -> None:
        async with open_block_reader(source, store, BS) as reader:
            for index in range(4):
                assert await reader.keep_block(ENTRY, index)
                assert store.contains(ENTRY.blocks[index])
            assert await reader.keep_block(ENTRY, 1)

    run(main)
    assert puts == list(ENTRY.blocks)
    assert len(source.calls) == 4


def test_keep_block_says_so_when_the_write_fails(
    source: FakeSource, store: BlockStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_put(digest: str, block: bytes) -> None:
        raise CacheError("cannot store block in cache: disk full")

    monkeypatch.setattr(store, "put", broken_put)

    async def main() -> None:
        async with open_block_reader(source, store, BS) as reader:
            assert not await reader.keep_block(ENTRY, 2)
            assert reader.counters.cache_write_failures == 1

    run(main)
