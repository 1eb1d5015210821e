"""What the block store holds, known in memory: status costs no store lookup per block.

Component tier: a real BlockStore (diskcache, SQLite) in a temporary directory, no FUSE.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.cache.store import BlockStore
from lazyfs.core.manifest import FileEntry, Manifest
from lazyfs.core.namespace import Tree
from lazyfs.daemon.control import mount_status
from lazyfs.read.reader import BlockReader

BS = 4096


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_of(path: str, data: bytes) -> FileEntry:
    blocks = tuple(sha(data[i : i + BS]) for i in range(0, len(data), BS))
    return FileEntry(path, len(data), False, sha(data), blocks)


DATA = random.Random(5).randbytes(400 * BS + 100)
ENTRY = entry_of("weights.bin", DATA)
OTHER = entry_of("other.bin", random.Random(6).randbytes(3 * BS))


def block(data: bytes, index: int) -> bytes:
    return data[index * BS : (index + 1) * BS]


class NoSource:
    def url_for(self, path: str) -> str:
        return f"http://origin.test/{path}"

    async def fetch_block(
        self, path: str, start: int, length: int, *, no_cache: bool = False
    ) -> tuple[bytes, str]:
        raise AssertionError("status never fetches")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlockStore]:
    opened = BlockStore(tmp_path / "blocks", 1 << 40)
    yield opened
    opened.close()


def status_of(store: BlockStore) -> dict[str, int]:
    reader = BlockReader(NoSource(), store, BS)
    report = mount_status(Tree(Manifest(BS, (ENTRY, OTHER))), reader)
    return {item["path"]: item["cached_bytes"] for item in report["files"]}


def statements_of(store: BlockStore) -> list[str]:
    """Every SQL statement the store runs from now on, in this thread."""
    statements: list[str] = []
    store._cache._con.set_trace_callback(statements.append)
    return statements


def test_status_costs_no_store_lookup_per_block(store: BlockStore) -> None:
    for index in range(0, 401, 2):
        store.put(ENTRY.blocks[index], block(DATA, index))
    expected = 200 * BS + 100  # blocks 0, 2, ..., 400; the last one is 100 bytes
    assert status_of(store) == {"weights.bin": expected, "other.bin": 0}

    statements = statements_of(store)
    assert status_of(store) == {"weights.bin": expected, "other.bin": 0}
    assert len(statements) < 10, statements


def test_status_follows_puts_evictions_and_discards_without_a_reload(tmp_path: Path) -> None:
    # Room for about 20 blocks besides the database itself.
    store = BlockStore(tmp_path / "blocks", 0)
    store.size_limit = store.statistics().volume + 20 * BS
    try:
        assert status_of(store) == {"weights.bin": 0, "other.bin": 0}
        statements = statements_of(store)
        for index in range(60):
            store.put(ENTRY.blocks[index], block(DATA, index))
        store.discard(ENTRY.blocks[59])
        held = set(store.digests())
        assert 5 < len(held) < 25  # most were evicted on the way
        assert ENTRY.blocks[58] in held and ENTRY.blocks[0] not in held
        before = len(statements)
        assert status_of(store)["weights.bin"] == len(held) * BS
        assert not [sql for sql in statements[before:] if "SELECT key FROM Cache" in sql]
    finally:
        store.close()


def test_another_process_changing_the_store_is_noticed(store: BlockStore, tmp_path: Path) -> None:
    for index in range(10):
        store.put(ENTRY.blocks[index], block(DATA, index))
    assert status_of(store)["weights.bin"] == 10 * BS
    # Another mount, or `lazyfs cache prune`, sharing the directory.
    other = BlockStore(tmp_path / "blocks", 1 << 40)
    try:
        other.discard(ENTRY.blocks[3])
        other.put(OTHER.blocks[1], block(OTHER_DATA, 1))
        other.put(OTHER.blocks[2], block(OTHER_DATA, 2))
        assert status_of(store) == {"weights.bin": 9 * BS, "other.bin": 2 * BS}
        assert other.clear() == 11
    finally:
        other.close()
    assert status_of(store) == {"weights.bin": 0, "other.bin": 0}


OTHER_DATA = random.Random(6).randbytes(3 * BS)


def test_status_of_a_failing_store_is_a_cache_error(store: BlockStore, tmp_path: Path) -> None:
    from lazyfs.errors import CacheError

    store.put(ENTRY.blocks[0], block(DATA, 0))
    with sqlite3.connect(tmp_path / "blocks" / "cache.db") as database:
        database.execute("DROP TABLE Settings")
    with pytest.raises(CacheError, match="Settings"):
        status_of(store)


def test_changes_during_a_reload_are_kept() -> None:
    from lazyfs.cache.index import DigestIndex

    index = DigestIndex()
    index.add("old")
    index.begin_reload()
    index.add("stored-meanwhile")
    index.discard("evicted-meanwhile")
    index.finish_reload(["evicted-meanwhile", "loaded"])
    assert index.loaded
    names = ("old", "stored-meanwhile", "evicted-meanwhile", "loaded")
    assert {name for name in names if name in index} == {"stored-meanwhile", "loaded"}

    index.begin_reload()
    index.clear()
    index.add("after-clear")
    index.finish_reload(["read-before-the-clear"])
    assert len(index) == 1 and "after-clear" in index
