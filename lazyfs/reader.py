"""Reads of manifest files, served only from verified blocks.

A block is read from the store if it is there; otherwise one task fetches it (others that
want the same digest wait for that task, so concurrent readers cost one GET), hashes it in a
worker thread, checks it against the manifest, stores it and hands it to every waiter. No lock
is held across a fetch: a slow block stalls only the reads that need that block.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Protocol

import trio

from lazyfs.blocks import BlockSlice, block_extent, read_plan
from lazyfs.cache import BlockStore
from lazyfs.errors import BlockIntegrityError, CacheError, LazyfsError
from lazyfs.manifest import FileEntry

log = logging.getLogger(__name__)


class BlockSource(Protocol):
    def url_for(self, path: str) -> str: ...

    async def fetch_range(self, path: str, start: int, length: int) -> bytes: ...


@dataclass
class ReadCounters:
    """Mount-wide counters; status and metrics read them."""

    blocks_fetched: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    verification_failures: int = 0
    cache_write_failures: int = 0


@dataclass(eq=False)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    block: bytes | None = None
    error: LazyfsError | None = None


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlockReader:
    def __init__(self, source: BlockSource, store: BlockStore, block_size: int) -> None:
        self.source = source
        self.store = store
        self.block_size = block_size
        self.counters = ReadCounters()
        self._pending: dict[str, _Pending] = {}

    async def read(self, entry: FileEntry, offset: int, length: int) -> bytes:
        """Exactly the file's bytes ``[offset, offset + length)``, short only at end of file."""
        plan = read_plan(offset, length, entry.size, self.block_size)
        if len(plan) == 1:
            return await self.read_slice(entry, plan[0])
        parts: list[bytes] = [b""] * len(plan)

        async def read_part(position: int, piece: BlockSlice) -> None:
            parts[position] = await self.read_slice(entry, piece)

        async with trio.open_nursery() as nursery:
            for position, piece in enumerate(plan):
                nursery.start_soon(read_part, position, piece)
        return b"".join(parts)

    async def read_slice(self, entry: FileEntry, piece: BlockSlice) -> bytes:
        digest = entry.blocks[piece.index]
        cached = await self._read_cached(digest, piece)
        if cached is not None:
            return cached
        while (pending := self._pending.get(digest)) is not None:
            await pending.done.wait()
            if pending.block is not None:
                return pending.block[piece.start : piece.end]
            if pending.error is not None:
                raise pending.error
        pending = self._pending[digest] = _Pending()
        try:
            # Checked again now that this task owns the digest: another task may have stored
            # the block between our first look and taking ownership.
            cached = await self._read_cached(digest, piece)
            if cached is not None:
                return cached
            pending.block = await self._fetch_verified(entry, piece.index)
            return pending.block[piece.start : piece.end]
        except LazyfsError as exc:
            pending.error = exc
            raise
        finally:
            pending.done.set()
            try:
                # Still registered while storing: a reader arriving now takes the block from
                # memory instead of missing the cache and fetching it a second time.
                if pending.block is not None:
                    await self._store(digest, pending.block)
            finally:
                del self._pending[digest]

    async def _read_cached(self, digest: str, piece: BlockSlice) -> bytes | None:
        try:
            data = await trio.to_thread.run_sync(
                self.store.read_slice, digest, piece.start, piece.end
            )
        except CacheError as exc:
            log.warning("%s; fetching the block instead", exc)
            return None
        if data is not None:
            self.counters.cache_hits += 1
        return data

    async def _store(self, digest: str, block: bytes) -> None:
        try:
            await trio.to_thread.run_sync(self.store.put, digest, block)
        except CacheError as exc:
            self.counters.cache_write_failures += 1
            log.warning("%s; serving the block without caching it", exc)

    async def _fetch_verified(self, entry: FileEntry, index: int) -> bytes:
        """Fetch block ``index`` of ``entry``; a mismatch is fetched once more, then fails."""
        start, length = block_extent(index, entry.size, self.block_size)
        expected = entry.blocks[index]
        attempts = 2
        for attempt in range(1, attempts + 1):
            block = await self.source.fetch_range(entry.path, start, length)
            self.counters.blocks_fetched += 1
            self.counters.bytes_fetched += len(block)
            actual = await trio.to_thread.run_sync(_sha256_hex, block)
            if actual == expected:
                return block
            self.counters.verification_failures += 1
            if attempt < attempts:
                log.warning(
                    "block %d of %s from %s does not match its digest (expected %s, got %s); "
                    "fetching it again",
                    index,
                    entry.path,
                    self.source.url_for(entry.path),
                    expected,
                    actual,
                )
        error = BlockIntegrityError(
            entry.path, index, self.source.url_for(entry.path), expected, actual, attempts
        )
        log.error("%s", error)
        raise error
