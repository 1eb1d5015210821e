"""The mount's block cache: verified blocks in memory (RecentBlocks) in front of the disk store
(BlockStore), with the disk writes in the background.

The disk is not trusted: what is read back from it is checked before it is served, and a
block that fails is dropped (and fetched again by the caller). A read of part of a stored
block (``read_stored``) reads and checks only the 16 KiB pieces it serves, against the
checksums recorded when the block was verified (``core.pieces``); a whole block read back
(``get``) checks all of its pieces; a block stored without checksums is hashed with sha256.
Stored blocks stay open (a bounded number), so a warm read costs a ``pread``, not a query.

Writes of fetched blocks run in one background writer, in order, at most
``MAX_PENDING_STORES`` waiting; past that, whoever fetches waits for the disk, but not for
longer than ``STORE_WAIT_SECONDS``: a disk that slow is skipped and the block served
uncached. A failing disk (full, read-only) never fails a read either. Either way the warning
comes once a minute, not once per block.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import trio
from typing_extensions import Buffer

from lazyfs.cache.store import BlockStore, StoredBlock
from lazyfs.core.pieces import PieceSums
from lazyfs.errors import CacheError
from lazyfs.read.threads import run_in_thread
from lazyfs.sources.buffers import BufferPool

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 128 * 1024 * 1024
# Keys of blocks whose digest is not known until they are proven (see ``aliases``).
STAND_IN = "xet:"
# Fetched blocks waiting for their disk write; past this, fetching waits for the disk.
MAX_PENDING_STORES = 8
# How long a fetched block waits for room among the pending writes before it is served
# without being stored: a cache disk this slow must not slow every read to its pace.
STORE_WAIT_SECONDS = 1.0
STORE_DRAIN_SECONDS = 10.0
CACHE_WARNING_SECONDS = 60.0
# Stored blocks kept open for warm reads, and threads reading them at once.
OPEN_BLOCKS = 256
DISK_READ_THREADS = 4
DISK_AHEAD_THREADS = 8
READ_BUFFERS = 16


@dataclass
class CacheCounters:
    cache_hits: int = 0
    memory_hits: int = 0
    cache_verification_failures: int = 0
    cache_write_failures: int = 0
    # Fetched blocks served without being stored: the write backlog stayed full too long.
    cache_writes_skipped: int = 0


class CorruptBlock(Exception):
    """A stored block that fails its check (internal: the cache drops it and says so)."""


def _read_checked(
    stored: StoredBlock,
    start: int,
    end: int,
    buffers: BufferPool,
    block_size: int,
    now: bool = False,
) -> memoryview | None:
    """Bytes ``[start, end)`` of a stored block, each piece they touch checked, in a buffer
    from ``buffers``. With ``now``, only if the page cache holds them all (else None): the
    event loop's own try, before a thread waits for the disk."""
    sums = stored.sums
    assert sums is not None
    window = sums.window(start, end)
    wanted = window[1] - window[0]
    if wanted > block_size:
        raise CorruptBlock(f"its record says {sums.length} bytes, more than a block")
    view = memoryview(buffers.take(block_size))[:wanted]
    if now:
        if not stored.read_into_now(view, window[0]):
            return None
        count = wanted
    else:
        count = stored.read_into(view, window[0])
    _check_pieces(sums, view[:count], window)
    return view[start - window[0] : end - window[0]]


def _read_whole(stored: StoredBlock) -> bytes:
    data = stored.read_all()
    if stored.sums is None:
        _check_whole(stored, data)
    else:
        _check_pieces(stored.sums, data, (0, stored.sums.length))
    return data


def _check_pieces(sums: PieceSums, data: bytes | memoryview, window: tuple[int, int]) -> None:
    bad = sums.first_bad_piece(data, window)
    if bad is not None:
        raise CorruptBlock(f"piece {bad} does not match its checksum")


def _check_whole(stored: StoredBlock, block: bytes) -> None:
    actual = hashlib.sha256(block).hexdigest()
    if actual != stored.digest:
        raise CorruptBlock(f"its sha256 is {actual}")


class RecentBlocks:
    """The most recently used verified blocks, in memory, bounded in bytes.

    Blocks fetched (or read back whole) are held so that the kernel's 128 KiB to 1 MiB
    requests for the rest of the block cost no further fetch or check.
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
        self._write_queue: tuple[
            trio.MemorySendChannel[tuple[str, Buffer]],
            trio.MemoryReceiveChannel[tuple[str, Buffer]],
        ] = trio.open_memory_channel(MAX_PENDING_STORES)
        self._writer_started = False
        # Blocks handed to the writer and not yet written (at most MAX_PENDING_STORES).
        self._unwritten: dict[str, Buffer] = {}
        # Index queries off the read path (contains, discard) go one at a time, so a burst of
        # them does not queue on SQLite's lock with sleeps in between. Opening a block is a
        # read-only query and runs in the disk threads instead.
        self._index_thread = trio.CapacityLimiter(1)
        self._disk_threads = trio.CapacityLimiter(DISK_READ_THREADS)
        # Blocks asked into the page cache ahead of a reader: the disk works on several.
        self._ahead_threads = trio.CapacityLimiter(DISK_AHEAD_THREADS)
        # Pieces read back land in reused buffers, held until their reply is sent.
        self._buffers = BufferPool(max_buffers=READ_BUFFERS)
        self._opened: OrderedDict[str, StoredBlock] = OrderedDict()
        # Opened blocks that served a read: each counts once as a cache hit while open.
        self._served: set[str] = set()
        self._warned_at = -math.inf
        # Stand-in keys (``STAND_IN``...) of blocks whose digest is learnt only when they are
        # proven (Xet files), by the digest they turned out to have. In memory a block stays
        # under the key its file uses; on disk it is stored by digest.
        self.aliases: dict[str, str] = {}

    def stored_as(self, key: str) -> str | None:
        """The digest the store keeps the block under, or None if it is not known yet."""
        digest = self.aliases.get(key, key)
        return None if digest.startswith(STAND_IN) else digest

    def in_memory(self, digest: str) -> bool:
        return digest in self.recent or digest in self._unwritten

    def from_memory(self, digest: str) -> Buffer | None:
        block = self.recent.get(digest)
        if block is None:
            # Still in memory while it waits for its disk write, whoever else dropped it.
            block = self._unwritten.get(digest)
        if block is not None:
            self.counters.memory_hits += 1
        return block

    def hold(self, digest: str, block: Buffer) -> None:
        """Keep a verified block in memory (the least recently used make room)."""
        self.recent.put(digest, block)

    def on_disk(self, key: str) -> bool:
        """Whether the disk store is known to hold ``key`` (the in-memory index; unchecked:
        reading it checks it)."""
        digest = self.stored_as(key)
        return digest is not None and (digest in self._opened or digest in self.store.held)

    async def get(self, key: str) -> Buffer | None:
        """The whole block from the disk store if it is there and still matches its digest."""
        digest = self.stored_as(key)
        if digest is None:
            return None
        if self.store.held.loaded and not self.on_disk(digest):
            # Known not to be stored (by this process's index): no query. A block another
            # process stored since the index was loaded is fetched again, harmlessly.
            return None
        stored = await self._open(digest)
        if stored is None:
            return None
        try:
            block = await run_in_thread(_read_whole, stored, limiter=self._disk_threads)
        except CorruptBlock as exc:
            await self._drop_corrupt(digest, exc)
            return None
        except CacheError as exc:
            log.warning("%s; fetching the block instead", exc)
            self._close(digest)
            return None
        self._hit(digest)
        return block

    async def read_stored(self, key: str, start: int, end: int) -> Buffer | None:
        """Bytes ``[start, end)`` of the stored block, or None if the store does not hold it
        or it failed its check (then it is dropped, and the caller fetches it)."""
        digest = self.stored_as(key)
        if digest is None:
            return None
        stored = await self._open(digest)
        if stored is None:
            return None
        if stored.sums is None:
            # Stored before blocks had checksums: checked whole once, then held in memory.
            block = await self.get(digest)
            if block is None:
                return None
            self.hold(digest, block)
            return memoryview(block)[start:end]
        try:
            # Data the page cache holds costs no thread hand-off (most of a sequential read,
            # whose next blocks were asked into the page cache ahead of it).
            part = _read_checked(stored, start, end, self._buffers, self.block_size, now=True)
            if part is None:
                part = await run_in_thread(
                    _read_checked,
                    stored,
                    start,
                    end,
                    self._buffers,
                    self.block_size,
                    limiter=self._disk_threads,
                )
        except CorruptBlock as exc:
            await self._drop_corrupt(digest, exc)
        except CacheError as exc:
            log.warning("%s; fetching the block instead", exc)
            self._close(digest)
        else:
            self._hit(digest)
            return part
        return None

    async def load_soon(self, key: str) -> None:
        """Have the kernel read a stored block into the page cache ahead of its reader (a
        warm sequential read's read-ahead: the disk works while earlier blocks are served)."""
        digest = self.stored_as(key)
        if digest is None:
            return
        stored = await self._open(digest)
        if stored is not None:
            # Only a hint: nothing it raises may end the nursery it runs in.
            try:
                await run_in_thread(stored.load_soon, limiter=self._ahead_threads)
            except Exception:
                log.exception("reading cached block %s ahead failed", digest)

    async def _open(self, digest: str) -> StoredBlock | None:
        stored = self._opened.get(digest)
        if stored is not None:
            self._opened.move_to_end(digest)
            return stored
        try:
            # A read-only query and an open: several at once (each thread has its own SQLite
            # connection; opening a file may wait for the disk).
            stored = await run_in_thread(self.store.open_block, digest, limiter=self._disk_threads)
        except CacheError as exc:
            log.warning("%s; fetching the block instead", exc)
            return None
        if stored is None:
            return None
        if digest in self._opened:  # opened meanwhile by another reader
            stored.close()
            return self._opened[digest]
        self._opened[digest] = stored
        while len(self._opened) > OPEN_BLOCKS:
            self._close(next(iter(self._opened)))
        return stored

    def _hit(self, digest: str) -> None:
        if digest not in self._served:
            self._served.add(digest)
            self.counters.cache_hits += 1

    def _close(self, digest: str) -> None:
        self._served.discard(digest)
        stored = self._opened.pop(digest, None)
        if stored is not None:
            stored.close()

    async def _drop_corrupt(self, digest: str, problem: CorruptBlock) -> None:
        self.counters.cache_verification_failures += 1
        log.warning("cached block %s is corrupt (%s); dropping it", digest, problem)
        self._close(digest)
        await self.discard(digest)

    async def contains(self, key: str) -> bool:
        """Whether the disk store holds ``key`` (not checked: reading it would check)."""
        digest = self.stored_as(key)
        if digest is None:
            return False
        try:
            return await run_in_thread(self.store.contains, digest, limiter=self._index_thread)
        except CacheError as exc:
            log.warning("%s", exc)
            return False

    async def put(self, digest: str, block: Buffer) -> None:
        """Store a verified block on disk, in the background if there is one; waits only for
        room in the bounded backlog of writes, and not for long (see STORE_WAIT_SECONDS)."""
        if self._background is None:
            await self.put_now(digest, block)
            return
        with trio.move_on_after(STORE_WAIT_SECONDS):
            await self._reserve_write(digest)
            if not self._writer_started:
                self._writer_started = True
                self._background.start_soon(self._writer)
            self._unwritten[digest] = block
            self._write_queue[0].send_nowait((digest, block))
            return
        self.counters.cache_writes_skipped += 1
        self._warn(
            f"the cache disk is slow (a block waited {STORE_WAIT_SECONDS:g}s for a write)",
            "serving blocks without caching them",
        )

    async def put_now(self, digest: str, block: Buffer) -> None:
        """Store a block on disk and return once it is written (or the write failed)."""
        await self._reserve_write(digest)
        await self._write(digest, block)

    async def keep(self, key: str, block: Buffer) -> bool:
        """Make sure the disk holds ``block``: wait for its write if one is under way, else
        write it. Whether the store holds it afterwards (a failing disk, or a cache smaller
        than the work, may not)."""
        digest = self.stored_as(key)
        if digest is None:
            return False
        writing = self._writing.get(digest)
        if writing is not None:
            await writing.wait()
        elif digest not in self.store.held:
            await self.put_now(digest, block)
        return digest in self.store.held

    async def discard(self, digest: str) -> None:
        self._close(digest)
        try:
            await run_in_thread(self.store.discard, digest, limiter=self._index_thread)
        except CacheError as exc:
            log.warning("%s", exc)

    async def drain(self) -> None:
        """Let the writes under way finish (briefly, even if we are being cancelled): blocks
        already fetched and verified are worth keeping."""
        with trio.CancelScope(shield=True), trio.move_on_after(STORE_DRAIN_SECONDS):
            for _ in range(MAX_PENDING_STORES):
                await self._store_slots.acquire()
        for digest in list(self._opened):
            self._close(digest)

    async def _reserve_write(self, digest: str) -> None:
        await self._store_slots.acquire()
        self._writing.setdefault(digest, trio.Event())

    async def _writer(self) -> None:
        """The one background writer: blocks are written one after another, so the store's
        SQLite write lock is never contended by our own threads."""
        async for digest, block in self._write_queue[1]:
            await self._write(digest, block)

    async def _write(self, digest: str, block: Buffer) -> None:
        try:
            await run_in_thread(self.store.put, digest, block)
        except CacheError as exc:
            self.counters.cache_write_failures += 1
            self._warn(
                str(exc),
                f"serving blocks without caching them "
                f"({self.counters.cache_write_failures} cache writes failed so far)",
            )
        finally:
            self._store_slots.release()
            self._unwritten.pop(digest, None)
            written = self._writing.pop(digest, None)
            if written is not None:
                written.set()

    def _warn(self, problem: str, consequence: str) -> None:
        # A full or slow disk fails every write: say so once a minute, not once per block.
        now = time.monotonic()
        if now - self._warned_at >= CACHE_WARNING_SECONDS:
            self._warned_at = now
            log.warning("%s; %s", problem, consequence)
