"""The daemon's prefetcher over a fake origin and a real BlockStore: runs end, say what the
cache did not keep, and can be cancelled.

Component tier: no FUSE, no network.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lazyfs.cache.store import BlockStore
from lazyfs.errors import OriginUnreachable
from lazyfs.read.prefetch import Prefetcher
from lazyfs.read.reader import open_block_reader
from tests.component.test_reader import BS, DATA, ENTRY, FakeSource, make_entry, randbytes, run

OTHER_DATA = randbytes(5 * BS, seed=30)
OTHER = make_entry("other.bin", OTHER_DATA)
EMPTY = make_entry("empty", b"")


@pytest.fixture
def source() -> FakeSource:
    return FakeSource({ENTRY.path: DATA, OTHER.path: OTHER_DATA})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlockStore]:
    opened = BlockStore(tmp_path / "blocks", 1 << 30)
    yield opened
    opened.close()


async def until_finished(prefetcher: Prefetcher, run_id: int) -> dict[str, object]:
    while True:
        (record,) = [item for item in prefetcher.report()["runs"] if item["id"] == run_id]
        if record["finished"]:
            return record
        await trio.sleep(0.01)


def test_a_run_that_fits_is_done_and_kept(source: FakeSource, store: BlockStore) -> None:
    records = []

    async def main() -> None:
        async with open_block_reader(source, store, BS) as reader, trio.open_nursery() as nursery:
            prefetcher = Prefetcher(reader, nursery)
            started = prefetcher.start([ENTRY, OTHER, EMPTY])
            assert prefetcher.active
            records.append(await until_finished(prefetcher, started.id))
            assert not prefetcher.active

    run(main)
    (record,) = records
    assert record["files"] == 3 and record["bytes"] == len(DATA) + len(OTHER_DATA)
    assert record["done_bytes"] == record["bytes"]
    assert record["errors"] == {} and record["not_kept"] == {} and not record["cancelled"]
    assert set(store.digests()) == {*ENTRY.blocks, *OTHER.blocks}


def test_a_run_larger_than_the_cache_ends_and_says_what_it_did_not_keep(
    source: FakeSource, store: BlockStore
) -> None:
    store.size_limit = store.statistics().volume + 3 * BS
    records = []

    async def main() -> None:
        async with open_block_reader(source, store, BS) as reader, trio.open_nursery() as nursery:
            prefetcher = Prefetcher(reader, nursery)
            records.append(await until_finished(prefetcher, prefetcher.start([ENTRY, OTHER]).id))

    run(main)
    (record,) = records
    held = set(store.digests())
    assert 0 < len(held) <= 3
    missing = {
        entry.path: sum(
            min(BS, entry.size - index * BS)
            for index, digest in enumerate(entry.blocks)
            if digest not in held
        )
        for entry in (ENTRY, OTHER)
    }
    assert record["not_kept"] == {path: size for path, size in missing.items() if size}
    assert record["done_bytes"] == record["bytes"] and record["errors"] == {}


def test_errors_are_recorded_per_file(source: FakeSource, store: BlockStore) -> None:
    source.errors[(OTHER.path, 3)] = OriginUnreachable("origin.test: connection refused")
    records = []

    async def main() -> None:
        async with open_block_reader(source, store, BS) as reader, trio.open_nursery() as nursery:
            prefetcher = Prefetcher(reader, nursery)
            records.append(await until_finished(prefetcher, prefetcher.start([ENTRY, OTHER]).id))

    run(main)
    (record,) = records
    assert record["errors"] == {OTHER.path: "origin.test: connection refused"}
    assert record["not_kept"] == {}


def test_cancel_ends_a_run_whose_fetches_hang(source: FakeSource, store: BlockStore) -> None:
    source.gate_all = trio.Event()  # never set: every fetch hangs
    records = []

    async def main() -> None:
        async with open_block_reader(source, store, BS) as reader, trio.open_nursery() as nursery:
            prefetcher = Prefetcher(reader, nursery)
            first = prefetcher.start([ENTRY])
            second = prefetcher.start([OTHER])
            while len(source.calls) < 2:
                await trio.sleep(0.01)
            assert prefetcher.cancel(first.id) == [first.id]
            records.append(await until_finished(prefetcher, first.id))
            assert prefetcher.active
            assert prefetcher.cancel() == [second.id]
            records.append(await until_finished(prefetcher, second.id))
            assert not prefetcher.active and prefetcher.cancel() == []

    run(main)
    assert [record["cancelled"] for record in records] == [True, True]
    assert all(record["finished"] for record in records)
