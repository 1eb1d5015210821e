"""Reads of manifest files, served only from verified blocks.

A block comes from memory (recently used, verified), else from the disk store (verified again
on the way in: the cache directory is not trusted), else from the origin. One task loads a
given digest; others that want it wait for that task, so concurrent readers cost one GET.
Fetched blocks are hashed in a worker thread and checked against the manifest before they are
stored or served. No lock is held across a fetch: a slow block stalls only its own readers.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import trio

from lazyfs.blocks import BlockSlice, block_extent, read_plan
from lazyfs.cache import BlockStore
from lazyfs.errors import BlockIntegrityError, CacheError, LazyfsError
from lazyfs.manifest import FileEntry

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024


class BlockSource(Protocol):
    def url_for(self, path: str) -> str: ...

    async def fetch_range(self, path: str, start: int, length: int) -> bytes: ...


@dataclass
class ReadCounters:
    """Mount-wide counters; status and metrics read them."""

    blocks_fetched: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    memory_hits: int = 0
    verification_failures: int = 0
    cache_verification_failures: int = 0
    cache_write_failures: int = 0


@dataclass(eq=False)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    error: LazyfsError | None = None


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RecentBlocks:
    """The most recently used verified blocks, in memory, bounded in bytes.

    The kernel asks for 128 KiB at a time; holding the block serves a 4 MiB block's 32
    requests with one disk read and one digest check instead of 32.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._blocks: OrderedDict[str, bytes] = OrderedDict()

    def get(self, digest: str) -> bytes | None:
        block = self._blocks.get(digest)
        if block is not None:
            self._blocks.move_to_end(digest)
        return block

    def put(self, digest: str, block: bytes) -> None:
        if digest in self._blocks or len(block) > self.capacity:
            return
        self._blocks[digest] = block
        self.size += len(block)
        while self.size > self.capacity:
            _, evicted = self._blocks.popitem(last=False)
            self.size -= len(evicted)


class BlockReader:
    def __init__(
        self,
        source: BlockSource,
        store: BlockStore,
        block_size: int,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> None:
        self.source = source
        self.store = store
        self.block_size = block_size
        self.counters = ReadCounters()
        self._recent = RecentBlocks(max(memory_bytes, 2 * block_size))
        self._pending: dict[str, _Pending] = {}

    async def read(self, entry: FileEntry, offset: int, length: int) -> bytes:
        """Exactly the file's bytes ``[offset, offset + length)``, short only at end of file."""
        plan = read_plan(offset, length, entry.size, self.block_size)
        if len(plan) == 1:
            return await self.read_slice(entry, plan[0])
        parts: list[bytes] = [b""] * len(plan)
        errors: list[LazyfsError] = []

        async def read_part(position: int, piece: BlockSlice) -> None:
            try:
                parts[position] = await self.read_slice(entry, piece)
            except LazyfsError as exc:
                # Kept out of the nursery, which would wrap it in an ExceptionGroup.
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for position, piece in enumerate(plan):
                nursery.start_soon(read_part, position, piece)
        if errors:
            raise errors[0]
        return b"".join(parts)

    async def read_slice(self, entry: FileEntry, piece: BlockSlice) -> bytes:
        block = await self.block(entry, piece.index)
        return block[piece.start : piece.end]

    async def block(self, entry: FileEntry, index: int) -> bytes:
        """Block ``index`` of ``entry``, verified; one task loads a digest, others wait."""
        digest = entry.blocks[index]
        while True:
            block = self._recent.get(digest)
            if block is not None:
                self.counters.memory_hits += 1
                return block
            pending = self._pending.get(digest)
            if pending is None:
                break
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
        pending = self._pending[digest] = _Pending()
        try:
            block = await self._load(entry, index)
            self._recent.put(digest, block)
            return block
        except LazyfsError as exc:
            pending.error = exc
            raise
        finally:
            del self._pending[digest]
            pending.done.set()

    async def _load(self, entry: FileEntry, index: int) -> bytes:
        digest = entry.blocks[index]
        block = await self._read_cached(digest)
        if block is not None:
            self.counters.cache_hits += 1
            return block
        block = await self._fetch_verified(entry, index)
        await self._store(digest, block)
        return block

    async def _read_cached(self, digest: str) -> bytes | None:
        """The stored block if it is there and still matches its digest."""
        try:
            found = await trio.to_thread.run_sync(self._read_and_hash, digest)
        except CacheError as exc:
            log.warning("%s; fetching the block instead", exc)
            return None
        if found is None:
            return None
        block, actual = found
        if actual == digest:
            return block
        self.counters.cache_verification_failures += 1
        log.warning("cached block %s is corrupt (sha256 %s); dropping it", digest, actual)
        try:
            await trio.to_thread.run_sync(self.store.discard, digest)
        except CacheError as exc:
            log.warning("%s", exc)
        return None

    def _read_and_hash(self, digest: str) -> tuple[bytes, str] | None:
        block = self.store.read_block(digest)
        return None if block is None else (block, _sha256_hex(block))

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
        # Logged once, with the read that failed, where fs.py turns it into EIO.
        raise BlockIntegrityError(
            entry.path, index, self.source.url_for(entry.path), expected, actual, attempts
        )
