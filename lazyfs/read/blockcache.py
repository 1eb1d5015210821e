"""The mount's block cache: verified blocks in memory (RecentBlocks) in front of the disk store
(BlockStore), with the disk writes in the background.

The disk is not trusted: a block read back from it is hashed again and dropped if it does not
match its digest. Writes of fetched blocks run in the background, at most
``MAX_PENDING_STORES`` at a time; past that, whoever fetches waits for the disk. A failing
disk (full, read-only) never fails a read: the block is served uncached, and the warning comes
once a minute, not once per block.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO

import trio
from typing_extensions import Buffer

from lazyfs.cache.store import BlockStore
from lazyfs.errors import CacheError

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 128 * 1024 * 1024
# Fetched blocks waiting for their disk write; past this, fetching waits for the disk.
MAX_PENDING_STORES = 8
STORE_DRAIN_SECONDS = 10.0
CACHE_WARNING_SECONDS = 60.0


@dataclass
class CacheCounters:
    cache_hits: int = 0
    memory_hits: int = 0
    cache_verification_failures: int = 0
    cache_write_failures: int = 0


def _read_and_hash(handle: BinaryIO, block_size: int) -> tuple[bytes, str]:
    try:
        with handle:
            # The cache directory is not trusted: a planted huge file must not be read whole.
            block = handle.read(block_size + 1)
    except OSError as exc:
        raise CacheError(f"cannot read a cached block: {exc.strerror}") from None
    return block, hashlib.sha256(block).hexdigest()


class RecentBlocks:
    """The most recently used verified blocks, in memory, bounded in bytes.

    The kernel asks for 128 KiB to 1 MiB at a time; holding the block serves all of a 4 MiB
    block's requests with one load and one digest check.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._blocks: OrderedDict[str, Buffer] = OrderedDict()

    def get(self, digest: str) -> Buffer | None:
        block = self._blocks.get(digest)
        if block is not None:
            self._blocks.move_to_end(digest)
        return block

    def __contains__(self, digest: str) -> bool:
        return digest in self._blocks

    def put(self, digest: str, block: Buffer) -> None:
        size = len(memoryview(block))
        if digest in self._blocks or size > self.capacity:
            return
        self._blocks[digest] = block
        self.size += size
        while self.size > self.capacity:
            _, evicted = self._blocks.popitem(last=False)
            self.size -= len(memoryview(evicted))


class BlockCache:
    """Verified blocks by digest: memory, then disk. ``background``, if given, runs the disk
    writes of ``put``; without it ``put`` writes before it returns."""

    def __init__(
        self,
        store: BlockStore,
        block_size: int,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        background: trio.Nursery | None = None,
    ) -> None:
        self.store = store
        self.block_size = block_size
        self.recent = RecentBlocks(memory_bytes)
        self.counters = CacheCounters()
        self._background = background
        self._store_slots = trio.Semaphore(MAX_PENDING_STORES)
        # Blocks whose disk write is under way: keep() waits for it instead of writing twice.
        self._writing: dict[str, trio.Event] = {}
        # One thread at a time in the index: concurrent lookups (each one marks the block
        # used, a write) would queue on SQLite's lock with sleeps in between.
        self._index_thread = trio.CapacityLimiter(1)
        self._warned_at = -math.inf

    def in_memory(self, digest: str) -> bool:
        return digest in self.recent

    def from_memory(self, digest: str) -> Buffer | None:
        block = self.recent.get(digest)
        if block is not None:
            self.counters.memory_hits += 1
        return block

    def hold(self, digest: str, block: Buffer) -> None:
        """Keep a verified block in memory (the least recently used make room)."""
        self.recent.put(digest, block)

    async def get(self, digest: str) -> Buffer | None:
        """The block from the disk store if it is there and still matches its digest."""
        try:
            handle = await trio.to_thread.run_sync(
                self.store.open_block, digest, limiter=self._index_thread
            )
            if handle is None:
                return None
            try:
                block, actual = await trio.to_thread.run_sync(
                    _read_and_hash, handle, self.block_size
                )
            finally:
                handle.close()  # already closed unless cancelled before the read started
        except CacheError as exc:
            log.warning("%s; fetching the block instead", exc)
            return None
        if actual == digest:
            self.counters.cache_hits += 1
            return block
        self.counters.cache_verification_failures += 1
        log.warning("cached block %s is corrupt (sha256 %s); dropping it", digest, actual)
        await self.discard(digest)
        return None

    async def contains(self, digest: str) -> bool:
        """Whether the disk store holds ``digest`` (not checked: reading it would check)."""
        try:
            return await trio.to_thread.run_sync(
                self.store.contains, digest, limiter=self._index_thread
            )
        except CacheError as exc:
            log.warning("%s", exc)
            return False

    async def put(self, digest: str, block: Buffer) -> None:
        """Store a verified block on disk, in the background if there is one; waits only for
        room in the bounded backlog of writes."""
        await self._reserve_write(digest)
        if self._background is not None:
            self._background.start_soon(self._write, digest, block)
        else:
            await self._write(digest, block)

    async def put_now(self, digest: str, block: Buffer) -> None:
        """Store a block on disk and return once it is written (or the write failed)."""
        await self._reserve_write(digest)
        await self._write(digest, block)

    async def keep(self, digest: str, block: Buffer) -> bool:
        """Make sure the disk holds ``block``: wait for its write if one is under way, else
        write it. Whether the store holds it afterwards (a failing disk, or a cache smaller
        than the work, may not)."""
        writing = self._writing.get(digest)
        if writing is not None:
            await writing.wait()
        elif digest not in self.store.held:
            await self.put_now(digest, block)
        return digest in self.store.held

    async def discard(self, digest: str) -> None:
        try:
            await trio.to_thread.run_sync(self.store.discard, digest)
        except CacheError as exc:
            log.warning("%s", exc)

    async def drain(self) -> None:
        """Let the writes under way finish (briefly, even if we are being cancelled): blocks
        already fetched and verified are worth keeping."""
        with trio.CancelScope(shield=True), trio.move_on_after(STORE_DRAIN_SECONDS):
            for _ in range(MAX_PENDING_STORES):
                await self._store_slots.acquire()

    async def _reserve_write(self, digest: str) -> None:
        await self._store_slots.acquire()
        self._writing.setdefault(digest, trio.Event())

    async def _write(self, digest: str, block: Buffer) -> None:
        try:
            await trio.to_thread.run_sync(self.store.put, digest, block)
        except CacheError as exc:
            self.counters.cache_write_failures += 1
            # A full disk fails every write: say so once a minute, not once per block.
            now = time.monotonic()
            if now - self._warned_at >= CACHE_WARNING_SECONDS:
                self._warned_at = now
                log.warning(
                    "%s; serving blocks without caching them (%d cache writes failed so far)",
                    exc,
                    self.counters.cache_write_failures,
                )
        finally:
            self._store_slots.release()
            written = self._writing.pop(digest, None)
            if written is not None:
                written.set()
