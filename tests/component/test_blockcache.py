"""The block cache's disk side: warm reads check only the pieces they serve, blocks stored
before checksums existed are still checked whole, and a slow disk is skipped, not waited on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from lazyfs.cache.store import BlockStore, StoredBlock
from lazyfs.core.pieces import PIECE_SIZE
from lazyfs.read import blockcache
from lazyfs.read.reader import BlockReader, open_block_reader
from tests.component.test_reader import BS, DATA, ENTRY, FakeSource, read, run, source, store

__all__ = ["source", "store"]  # fixtures

KIB = 1024


def fill(store: BlockStore, source: FakeSource) -> None:
    assert read(BlockReader(source, store, BS), 0, len(DATA)) == DATA
    source.calls.clear()


def test_a_warm_read_reads_and_checks_only_its_pieces(
    store: BlockStore, source: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(store, source)
    windows: list[tuple[int, int]] = []
    original = StoredBlock.read_into

    def recording_read(self: StoredBlock, buffer: memoryview, start: int) -> int:
        windows.append((start, start + len(buffer)))
        return original(self, buffer, start)

    monkeypatch.setattr(StoredBlock, "read_into", recording_read)
    original_now = StoredBlock.read_into_now

    def recording_read_now(self: StoredBlock, buffer: memoryview, start: int) -> bool:
        done = original_now(self, buffer, start)
        if done:
            windows.append((start, start + len(buffer)))
        return done

    monkeypatch.setattr(StoredBlock, "read_into_now", recording_read_now)
    warm = BlockReader(source, store, BS)
    offset = BS + PIECE_SIZE // 2  # 4 KiB inside block 1's only piece (BS is one piece)
    assert read(warm, offset, 4 * KIB) == DATA[offset : offset + 4 * KIB]
    assert windows == [(0, PIECE_SIZE)]
    assert source.calls == []
    assert warm.counters.cache_hits == 1
    assert not warm.cache.in_memory(ENTRY.blocks[1])  # served from disk, not loaded whole


def test_a_block_stored_without_checksums_is_checked_whole(
    store: BlockStore, source: FakeSource, tmp_path: Path
) -> None:
    fill(store, source)
    # As an older lazyfs stored it: no record of piece checksums.
    store._cache._sql("UPDATE Cache SET tag = NULL")
    warm = BlockReader(source, store, BS)
    assert read(warm, 0, len(DATA)) == DATA
    assert source.calls == []
    (block_file,) = [p for p in (tmp_path / "blocks").rglob("*.val") if p.stat().st_size == 1000]
    block_file.write_bytes(bytes(1000))  # the last block, zero-filled
    again = BlockReader(source, store, BS)
    assert read(again, 3 * BS, 1000) == DATA[3 * BS :]
    assert again.counters.cache_verification_failures == 1
    assert source.calls == [(ENTRY.path, 3)]


def test_a_stalled_cache_disk_is_skipped_and_the_block_served(
    store: BlockStore, source: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes that do not finish fill the backlog; after that, fetched blocks are served
    without being stored instead of waiting for the disk."""
    released = threading.Event()
    put = store.put

    def stalled_put(digest: str, block: bytes) -> None:
        released.wait(30)
        put(digest, block)

    monkeypatch.setattr(store, "put", stalled_put)
    monkeypatch.setattr(blockcache, "MAX_PENDING_STORES", 1)
    monkeypatch.setattr(blockcache, "STORE_WAIT_SECONDS", 0.2)

    async def main() -> None:
        with trio.fail_after(20):
            await stalled_reads()

    async def stalled_reads() -> None:
        async with open_block_reader(source, store, BS) as reader:
            for index in range(4):
                start = index * BS
                assert await reader.read(ENTRY, start, 100) == DATA[start : start + 100]
            assert reader.counters.cache_writes_skipped >= 2
            released.set()

    run(main)
    assert len(source.calls) == 4
