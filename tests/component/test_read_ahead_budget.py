"""Read-ahead under the mount-wide budget, over a fake origin and a real BlockStore: many
sequential readers at once stay within the budget and fetch each block once; a read is never
queued behind other files' read-ahead; a read that wants a block read-ahead is fetching waits
for that fetch.

Component tier: no FUSE, no network; ordering is proven with events, never with timings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from lazyfs.cache.store import BlockStore
from lazyfs.core.readahead import ReadPattern
from lazyfs.read.reader import BlockReader, open_block_reader
from tests.component.test_reader import BS, TIMEOUT, FakeSource, make_entry, randbytes
from tests.waiting import wait_until_async

FILES = {f"shard-{n}.bin": randbytes(16 * BS, seed=100 + n) for n in range(8)}
ENTRIES = {path: make_entry(path, data) for path, data in FILES.items()}
# Three transfer slots (the fetcher's default for a source that does not say): two for
# read-ahead, one always left for reads.
READ_AHEAD_SLOTS = 2


@pytest.fixture
def source() -> FakeSource:
    return FakeSource(dict(FILES))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlockStore]:
    opened = BlockStore(tmp_path / "blocks", 1 << 30)
    yield opened
    opened.close()


def read_ahead_idle(reader: BlockReader) -> bool:
    assert reader.ahead is not None
    return reader.ahead.under_way == 0


def test_eight_sequential_readers_stay_within_the_budget_and_fetch_each_block_once(
    source: FakeSource, store: BlockStore
) -> None:
    budget = 6 * BS
    results: dict[str, bytes] = {}

    async def stream(reader: BlockReader, path: str, pattern: ReadPattern) -> None:
        parts = []
        for index in range(16):
            # Half-block reads, as the kernel splits a block into several requests.
            for half in (0, BS // 2):
                parts.append(
                    bytes(await reader.read(ENTRIES[path], index * BS + half, BS // 2, pattern))
                )
        results[path] = b"".join(parts)

    async def main() -> None:
        with trio.fail_after(TIMEOUT):
            # A memory cache of two blocks: read-ahead must not depend on the LRU keeping its
            # blocks until they are read.
            async with open_block_reader(
                source, store, BS, memory_bytes=2 * BS, readahead_bytes=budget
            ) as reader:
                patterns = {path: ReadPattern() for path in FILES}
                async with trio.open_nursery() as readers:
                    for path in FILES:
                        readers.start_soon(stream, reader, path, patterns[path])
                assert await wait_until_async(lambda: read_ahead_idle(reader))
                counters = reader.counters
                assert counters.blocks_read_ahead > 0
                assert counters.read_ahead_budget == budget
                assert 0 < counters.read_ahead_peak_bytes <= budget
                for pattern in patterns.values():
                    reader.closed(pattern)
                assert reader.counters.read_ahead_bytes == 0

    trio.run(main)
    assert results == FILES
    fetches = Counter(source.calls)
    assert set(fetches) == {(path, index) for path in FILES for index in range(16)}
    assert set(fetches.values()) == {1}, "every block fetched exactly once"


def test_a_read_is_not_queued_behind_other_files_read_ahead(
    source: FakeSource, store: BlockStore
) -> None:
    # Block 1 of every shard is stalled at the origin until the test lets it go.
    stalled = {(path, 1) for path in FILES}
    release = trio.Event()
    for key in stalled:
        source.gates[key] = release
        source.started[key] = trio.Event()
    other = make_entry("other.bin", randbytes(3 * BS, seed=7))
    source.files[other.path] = randbytes(3 * BS, seed=7)

    def stalled_in_transfer() -> int:
        return sum(source.started[key].is_set() for key in stalled)

    async def main() -> None:
        with trio.fail_after(TIMEOUT):
            async with open_block_reader(source, store, BS) as reader:
                for path in FILES:
                    # One block each: read-ahead of block 1 starts for all eight shards.
                    assert (
                        await reader.read(ENTRIES[path], 0, BS, ReadPattern()) == FILES[path][:BS]
                    )
                assert await wait_until_async(lambda: stalled_in_transfer() == READ_AHEAD_SLOTS)
                assert reader.ahead is not None and reader.ahead.under_way == len(FILES)
                # Read-ahead holds every slot it may have; a read of another file still gets one.
                assert await reader.read(other, 0, 3 * BS) == source.files[other.path]
                assert stalled_in_transfer() == READ_AHEAD_SLOTS
                release.set()
                assert await wait_until_async(lambda: read_ahead_idle(reader))

    trio.run(main)


def test_a_read_waits_for_the_read_ahead_of_its_block_and_promotes_it(
    source: FakeSource, store: BlockStore
) -> None:
    *others, wanted = sorted(FILES)
    release = trio.Event()
    for path in others:
        source.gates[(path, 1)] = release
        source.started[(path, 1)] = trio.Event()

    def stalled_in_transfer() -> int:
        return sum(source.started[(path, 1)].is_set() for path in others)

    async def main() -> None:
        with trio.fail_after(TIMEOUT):
            async with open_block_reader(source, store, BS) as reader:
                for path in others:
                    await reader.read(ENTRIES[path], 0, BS, ReadPattern())
                assert await wait_until_async(lambda: stalled_in_transfer() == READ_AHEAD_SLOTS)
                pattern = ReadPattern()
                await reader.read(ENTRIES[wanted], 0, BS, pattern)
                # Its read-ahead of block 1 waits for a slot read-ahead may use: none is free.
                await trio.testing.wait_all_tasks_blocked()
                assert source.fetches((wanted, 1)) == 0
                # Reading block 1 promotes that fetch to a read's place instead of fetching
                # the block a second time, or waiting for the stalled read-ahead.
                got = await reader.read(ENTRIES[wanted], BS, BS, pattern)
                assert got == FILES[wanted][BS : 2 * BS]
                release.set()
                assert await wait_until_async(lambda: read_ahead_idle(reader))

    trio.run(main)
    assert source.fetches((wanted, 1)) == 1
