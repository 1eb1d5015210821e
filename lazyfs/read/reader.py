"""Reads of manifest files, served only from verified blocks.

A block comes from memory (recently used, verified), else from the disk store (verified again
on the way in: the cache directory is not trusted), else from the origin, whose bytes are
hashed as they arrive and checked against the manifest before they are kept or served. One
task loads a given digest; others that want it wait for that task, so concurrent readers cost
one GET. No lock is held across a fetch: a slow block stalls only its own readers.

With a nursery (``open_block_reader``), a reader that moves through a file sequentially gets
the next blocks fetched ahead of it, and fetched blocks are written to disk in the background.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import trio
from typing_extensions import Buffer

from lazyfs.cache.blocklists import BlockLists
from lazyfs.cache.store import BlockStore
from lazyfs.core.blocks import BlockSlice, block_count, block_extent, read_plan
from lazyfs.core.manifest import FileEntry
from lazyfs.core.readahead import ReadPattern
from lazyfs.core.rotation import SourceRotation
from lazyfs.errors import (
    BlockIntegrityError,
    CacheError,
    LazyfsError,
    OriginUnreachable,
    SourceError,
)
from lazyfs.read.singleflight import SingleFlight
from lazyfs.read.wholefile import WholeFiles
from lazyfs.sources.base import BlockSource

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 128 * 1024 * 1024
# Read-ahead never holds more than this many bytes of blocks nobody has asked for yet.
DEFAULT_READAHEAD_BYTES = 64 * 1024 * 1024
MAX_READAHEAD_BLOCKS = 64
# Fetched blocks waiting for their disk write; past this, fetching waits for the disk.
MAX_PENDING_STORES = 8
STORE_DRAIN_SECONDS = 10.0
CACHE_WARNING_SECONDS = 60.0


@dataclass
class ReadCounters:
    """Mount-wide counters; status and metrics read them."""

    blocks_fetched: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    memory_hits: int = 0
    blocks_read_ahead: int = 0
    verification_failures: int = 0
    cache_verification_failures: int = 0
    cache_write_failures: int = 0
    fetches_in_flight: int = 0


def _sha256_hex(data: Buffer) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_and_hash(handle: BinaryIO, block_size: int) -> tuple[bytes, str]:
    try:
        with handle:
            # The cache directory is not trusted: a planted huge file must not be read whole.
            block = handle.read(block_size + 1)
    except OSError as exc:
        raise CacheError(f"cannot read a cached block: {exc.strerror}") from None
    return block, _sha256_hex(block)


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


class BlockReader:
    def __init__(
        self,
        source: BlockSource,
        store: BlockStore,
        block_size: int,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        readahead_bytes: int = DEFAULT_READAHEAD_BYTES,
        background: trio.Nursery | None = None,
        block_lists: BlockLists | None = None,
        mirrors: Sequence[BlockSource] = (),
        fetch_attempts: int = 2,
        deadline: float = math.inf,
    ) -> None:
        self.source = source
        self.rotation = SourceRotation([source, *mirrors])
        self.fetch_attempts = fetch_attempts
        # A block fetch (all its attempts, from every source) ends within this many seconds.
        self.deadline = deadline
        self._cache_warned_at = -math.inf
        self.store = store
        self.block_size = block_size
        self.counters = ReadCounters()
        self.max_window = min(MAX_READAHEAD_BLOCKS, readahead_bytes // block_size)
        # Room for a full read-ahead window beside the blocks readers are working in.
        floor = (self.max_window + 2) * block_size
        self._recent = RecentBlocks(max(memory_bytes, floor))
        # The digests being loaded, and who waits for them.
        self.loading: SingleFlight[str, Buffer] = SingleFlight()
        # Read-ahead started but not yet running, so a burst of reads starts it once.
        self._scheduled: set[str] = set()
        self._background = background
        self._store_slots = trio.Semaphore(MAX_PENDING_STORES)
        # Blocks whose disk write is under way: prefetch waits for it instead of writing twice.
        self._writing: dict[str, trio.Event] = {}
        self._index_thread = trio.CapacityLimiter(1)
        # Hub files without block digests yet are verified whole on first read; their
        # fetches are counted like any other.
        counted = _Counted(source, self)
        self.whole_files = WholeFiles(
            counted, store, block_size, block_lists, self._read_cached, self._store_now
        )
        # Told how long each successful block fetch took (the metrics histogram).
        self.observe_fetch: Callable[[float], None] = lambda seconds: None

    async def read(
        self, entry: FileEntry, offset: int, length: int, pattern: ReadPattern | None = None
    ) -> Buffer:
        """Exactly the file's bytes ``[offset, offset + length)``, short only at end of file.

        ``pattern`` is the reading file's history; with it, sequential reads fetch ahead.
        """
        entry = await self.whole_files.verified(entry)
        plan = read_plan(offset, length, entry.size, self.block_size)
        if not plan:
            return b""
        if pattern is not None and self._background is not None:
            ahead = pattern.record(plan[0].index, plan[-1].index, self.max_window)
            self._read_ahead(entry, ahead)
        if len(plan) == 1:
            return await self.read_slice(entry, plan[0])
        parts: list[Buffer] = [b""] * len(plan)
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

    async def read_slice(self, entry: FileEntry, piece: BlockSlice) -> Buffer:
        block = await self.block(entry, piece.index)
        # A view, not a copy: serving 128 KiB must not cost copying the block.
        return memoryview(block)[piece.start : piece.end]

    def _read_ahead(self, entry: FileEntry, indices: range) -> None:
        assert self._background is not None
        last = block_count(entry.size, self.block_size)
        for index in indices:
            if index >= last:
                break
            digest = entry.blocks[index]
            if digest in self._recent or digest in self.loading or digest in self._scheduled:
                continue
            self._scheduled.add(digest)
            self.counters.blocks_read_ahead += 1
            self._background.start_soon(self._prefetch, entry, index)

    async def _prefetch(self, entry: FileEntry, index: int) -> None:
        try:
            await self.block(entry, index)
        except LazyfsError as exc:
            # The reader that needs this block will fetch it again and see the error.
            log.debug("read-ahead of block %d of %s failed: %s", index, entry.path, exc)
        except Exception:
            # A bug must not end the reader's nursery, and with it the mount.
            log.exception("read-ahead of block %d of %s failed", index, entry.path)
        finally:
            self._scheduled.discard(entry.blocks[index])

    async def block(self, entry: FileEntry, index: int) -> Buffer:
        """Block ``index`` of ``entry``, verified; one task loads a digest, others wait."""
        digest = entry.blocks[index]
        return await self.loading.run(
            digest, lambda: self._load(entry, index), lambda: self._from_memory(digest)
        )

    def _from_memory(self, digest: str) -> Buffer | None:
        block = self._recent.get(digest)
        if block is not None:
            self.counters.memory_hits += 1
        return block

    async def keep_block(self, entry: FileEntry, index: int) -> bool:
        """Make sure the disk store holds block ``index`` of ``entry`` (prefetch): loaded as a
        read would load it, and written even when it came from memory. Whether the store
        holds it afterwards: a failing disk, or a cache smaller than the work, may not."""
        digest = entry.blocks[index]
        if await self.is_cached(digest):
            return True
        block = await self.block(entry, index)
        writing = self._writing.get(digest)
        if writing is not None:
            await writing.wait()
        elif digest not in self.store.held:
            await self._store_now(digest, block)
        return digest in self.store.held

    async def is_cached(self, digest: str) -> bool:
        """Whether the disk store holds ``digest`` (not checked: reading it would check)."""
        try:
            return await trio.to_thread.run_sync(
                self.store.contains, digest, limiter=self._index_thread
            )
        except CacheError as exc:
            log.warning("%s", exc)
            return False

    async def _load(self, entry: FileEntry, index: int) -> Buffer:
        digest = entry.blocks[index]
        block = await self._read_cached(digest)
        if block is not None:
            self.counters.cache_hits += 1
        else:
            block = await self._fetch_verified(entry, index)
            await self._reserve_write(digest)
            if self._background is not None:
                self._background.start_soon(self._store, digest, block)
            else:
                await self._store(digest, block)
        self._recent.put(digest, block)
        return block

    async def _read_cached(self, digest: str) -> Buffer | None:
        """The stored block if it is there and still matches its digest."""
        try:
            # One thread at a time in the index: concurrent lookups (each one marks the block
            # used, a write) would queue on SQLite's lock with sleeps in between.
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
            return block
        self.counters.cache_verification_failures += 1
        log.warning("cached block %s is corrupt (sha256 %s); dropping it", digest, actual)
        try:
            await trio.to_thread.run_sync(self.store.discard, digest)
        except CacheError as exc:
            log.warning("%s", exc)
        return None

    async def _reserve_write(self, digest: str) -> None:
        await self._store_slots.acquire()
        self._writing.setdefault(digest, trio.Event())

    async def _store_now(self, digest: str, block: Buffer) -> None:
        await self._reserve_write(digest)
        await self._store(digest, block)

    async def _store(self, digest: str, block: Buffer) -> None:
        try:
            await trio.to_thread.run_sync(self.store.put, digest, block)
        except CacheError as exc:
            self.counters.cache_write_failures += 1
            # A full disk fails every write: say so once a minute, not once per block.
            now = time.monotonic()
            if now - self._cache_warned_at >= CACHE_WARNING_SECONDS:
                self._cache_warned_at = now
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

    async def fetch_counted(
        self, source: BlockSource, path: str, start: int, length: int
    ) -> tuple[Buffer, str]:
        """``source.fetch_block``, counted: every fetch from an origin goes through here, so
        each byte fetched is counted once, whichever path asked for it."""
        began = time.monotonic()
        self.counters.fetches_in_flight += 1
        try:
            fetched = await source.fetch_block(path, start, length)
        finally:
            self.counters.fetches_in_flight -= 1
        self.observe_fetch(time.monotonic() - began)
        self.counters.blocks_fetched += 1
        self.counters.bytes_fetched += length
        return fetched

    async def _fetch_verified(self, entry: FileEntry, index: int) -> Buffer:
        """Fetch block ``index`` of ``entry`` until a copy matches its digest: up to
        ``fetch_attempts`` fetches (every source at least once), all within ``deadline``. A
        source that fails or sends a bad copy is skipped for the rest of this block while
        another remains, and benched for a while."""
        with trio.move_on_after(self.deadline):
            return await self._fetch_until_verified(entry, index, time.monotonic() + self.deadline)
        raise OriginUnreachable(
            f"block {index} of {entry.path}: no verified copy within {self.deadline:g}s"
        )

    async def _fetch_until_verified(self, entry: FileEntry, index: int, ends: float) -> Buffer:
        start, length = block_extent(index, entry.size, self.block_size)
        expected = entry.blocks[index]
        order = self.rotation.order()
        mirrored = len(order) > 1
        attempts = max(self.fetch_attempts, len(order))
        failed_here: list[BlockSource] = []
        bad_copies: list[tuple[str, str]] = []
        errors: list[str] = []
        for attempt in range(1, attempts + 1):
            fresh = [source for source in order if source not in failed_here]
            source = fresh[0] if fresh else order[attempt % len(order)]
            url = source.url_for(entry.path)
            # With mirrors, one hung source must not eat the whole deadline: each attempt
            # gets its share of what is left.
            share = (ends - time.monotonic()) / (attempts - attempt + 1) if mirrored else math.inf
            try:
                with trio.move_on_after(share) as slot:
                    block, actual = await self.fetch_counted(source, entry.path, start, length)
                if slot.cancelled_caught:
                    raise OriginUnreachable(f"{url}: no answer within {share:.1f}s")
            except SourceError as exc:
                if not mirrored:
                    raise
                errors.append(str(exc))
                failed_here.append(source)
                self.rotation.failed(source)
                log.warning("block %d of %s: %s; trying another source", index, entry.path, exc)
                continue
            if actual == expected:
                return block
            self.counters.verification_failures += 1
            bad_copies.append((url, actual))
            failed_here.append(source)
            if mirrored:
                self.rotation.failed(source)
            if attempt < attempts:
                log.warning(
                    "block %d of %s from %s does not match its digest (expected %s, got %s); "
                    "fetching it again",
                    index,
                    entry.path,
                    url,
                    expected,
                    actual,
                )
        if not bad_copies:
            raise OriginUnreachable(f"block {index} of {entry.path}: {'; '.join(errors)}")
        urls = ", ".join(dict.fromkeys(url for url, _ in bad_copies))
        # Logged once, with the read that failed, where fs.py turns it into EIO.
        raise BlockIntegrityError(
            entry.path, index, urls, expected, bad_copies[-1][1], len(bad_copies)
        )


@dataclass(frozen=True)
class _Counted:
    """A source whose fetches ``reader`` counts (for the whole-file streams)."""

    source: BlockSource
    reader: BlockReader

    def url_for(self, path: str) -> str:
        return self.source.url_for(path)

    async def fetch_block(self, path: str, start: int, length: int) -> tuple[Buffer, str]:
        return await self.reader.fetch_counted(self.source, path, start, length)


@asynccontextmanager
async def open_block_reader(
    source: BlockSource,
    store: BlockStore,
    block_size: int,
    block_lists: BlockLists | None = None,
    mirrors: Sequence[BlockSource] = (),
    **options: Any,
) -> AsyncIterator[BlockReader]:
    """A reader whose read-ahead and background writes live in (and end with) a nursery."""
    async with trio.open_nursery() as nursery:
        reader = BlockReader(
            source,
            store,
            block_size,
            background=nursery,
            block_lists=block_lists,
            mirrors=mirrors,
            **options,
        )
        try:
            yield reader
        finally:
            # Blocks already fetched and verified are worth keeping: let their disk writes
            # finish (briefly, even if we are being cancelled), then stop read-ahead.
            with trio.CancelScope(shield=True), trio.move_on_after(STORE_DRAIN_SECONDS):
                for _ in range(MAX_PENDING_STORES):
                    await reader._store_slots.acquire()
            nursery.cancel_scope.cancel()
