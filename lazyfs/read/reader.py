"""Reads of manifest files, served only from verified blocks.

``BlockReader`` composes the block pipeline: a block comes from the cache (``BlockCache``:
memory, else the disk store, verified again on the way in because the cache directory is not
trusted), else from the sources through the ``BlockFetcher``, whose copies are hashed as they
arrive and checked against the manifest before they are kept or served. One task loads a
given digest (``SingleFlight``); others that want it wait for that task, so concurrent
readers cost one GET. No lock is held across a fetch: a slow block stalls only its own
readers. A new kind of source plugs in by implementing ``sources.base.BlockSource``.

With a nursery (``open_block_reader``), a reader that moves through a file sequentially gets
the next blocks fetched ahead of it, within one mount-wide budget (``read.readahead``), and
fetched blocks are written to disk in the background.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from typing_extensions import Buffer

from lazyfs.cache.blocklists import BlockLists
from lazyfs.cache.store import BlockStore
from lazyfs.cache.xetlists import XetLists
from lazyfs.core.attempts import AttemptLimits
from lazyfs.core.blocks import BlockSlice, block_extent, read_plan
from lazyfs.core.manifest import FileEntry, Manifest
from lazyfs.core.readahead import ReadPattern
from lazyfs.errors import LazyfsError
from lazyfs.read.blockcache import DEFAULT_MEMORY_BYTES, BlockCache
from lazyfs.read.fetcher import BlockFetcher, FetchCounters
from lazyfs.read.readahead import ReadAhead, ReadAheadCounters
from lazyfs.read.singleflight import SingleFlight
from lazyfs.read.tensorreads import TensorReads
from lazyfs.read.transfers import DEMAND, Ticket
from lazyfs.read.wholefile import WholeFiles
from lazyfs.read.xetfiles import XetFiles
from lazyfs.sources.base import BlockSource
from lazyfs.sources.xet import CasCounters, XetSource

log = logging.getLogger(__name__)

# Read-ahead never holds more than this many bytes of blocks nobody has asked for yet, in
# all the mount's files together.
DEFAULT_READAHEAD_BYTES = 64 * 1024 * 1024
MAX_READAHEAD_BLOCKS = 64
# Without limits given: a bad copy is fetched once more, with no deadline.
DEFAULT_LIMITS = AttemptLimits(attempts=2)


@dataclass(frozen=True)
class ReadCounters:
    """Mount-wide counters, as status and metrics show them (a snapshot)."""

    # Reads asked of the reader (each FUSE read request is one).
    read_requests: int = 0
    blocks_fetched: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    memory_hits: int = 0
    blocks_read_ahead: int = 0
    verification_failures: int = 0
    cache_verification_failures: int = 0
    cache_write_failures: int = 0
    cache_writes_skipped: int = 0
    fetches_in_flight: int = 0
    # The read-ahead budget: its size, what is held now, the most ever held at once; blocks
    # dropped unread and blocks not read ahead for want of budget.
    read_ahead_budget: int = 0
    read_ahead_bytes: int = 0
    read_ahead_peak_bytes: int = 0
    read_ahead_dropped: int = 0
    read_ahead_refused: int = 0
    # Xet: windows proven through the CAS (each one or more blocks), the CAS's requests
    # (token, proofs, reconstructions, data) and the xorb bytes it sent.
    xet_proofs: int = 0
    cas_requests: int = 0
    cas_bytes: int = 0


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
        limits: AttemptLimits = DEFAULT_LIMITS,
        observe_fetch: Callable[[float], None] | None = None,
        tensor_aware: bool = True,
        xet: XetSource | None = None,
        xet_lists: XetLists | None = None,
        tiers: Sequence[Sequence[BlockSource]] = (),
    ) -> None:
        """``limits``: how hard each block fetch tries (attempts, one deadline, backoff);
        ``observe_fetch`` is told how long each fetch took (the metrics histogram)."""
        self.store = store
        self.tensor_aware = tensor_aware
        self.block_size = block_size
        self.fetcher = BlockFetcher([source, *mirrors], limits, observe_fetch, tiers)
        self.max_window = min(MAX_READAHEAD_BLOCKS, readahead_bytes // block_size)
        # ``memory_bytes`` bounds the blocks in memory, read-ahead's included; read-ahead holds
        # its own (up to its budget), the cache the rest: at least the block a reader is in
        # and the next.
        recent = max(memory_bytes - readahead_bytes, 2 * block_size)
        self.cache = BlockCache(store, block_size, recent, background)
        # The digests being loaded, and who waits for them.
        self.loading: SingleFlight[str, Buffer] = SingleFlight()
        self.ahead: ReadAhead | None = None
        if background is not None:
            self.ahead = ReadAhead(
                readahead_bytes,
                block_size,
                self.max_window,
                self.cache,
                self.loading,
                self.fetcher.gate,
                self.load,
                background,
            )
        # Hub files without block digests yet are verified whole on first read, through the
        # same fetcher and cache as any block.
        self.whole_files = WholeFiles(self.fetcher, self.cache, block_size, block_lists)
        # Hub files stored in Xet: blocks proven window by window (``adopt`` gives them keys).
        self.xet: XetFiles | None = None
        if xet is not None:
            self.xet = XetFiles(
                xet, self.cache, block_size, self.whole_files, xet_lists, limits, observe_fetch
            )
            # One queue for transfers: a read's fetch goes first whichever source serves it.
            self.xet.fetcher.gate = self.fetcher.gate
        self._read_requests = 0
        self._background = background
        # Model files' tensor maps, once ``know_files`` has said which files there are.
        self.tensors: TensorReads | None = None
        # Prefetch fetches under way, by digest: a reader that waits for one promotes it.
        self._prefetch_tickets: dict[str, Ticket] = {}

    async def adopt(self, manifest: Manifest) -> Manifest:
        """The mount's files as the reader serves them: Xet files (if there is a Xet source)
        get stand-in block keys, and the digests earlier mounts proved."""
        if self.xet is None:
            return manifest
        entries = self.xet.entries(manifest.files)
        await trio.to_thread.run_sync(self.xet.load_lists)
        return Manifest(manifest.block_size, entries)

    def know_files(self, entries: Iterable[FileEntry]) -> None:
        """The mount's files: with them (and ``tensor_aware``), reads of model files follow
        their tensor maps (``read.tensorreads``)."""
        if not self.tensor_aware or self.ahead is None or self._background is None:
            return
        files = {entry.path: entry for entry in entries}

        def entry_of(path: str) -> FileEntry | None:
            found = files.get(path)
            return None if found is None else self.whole_files.known(found)

        self.tensors = TensorReads(
            self.read_range,
            entry_of,
            self.ahead,
            self.block_size,
            self.max_window,
            self._background,
        )

    def stored_keys(self, entry: FileEntry) -> tuple[str, ...]:
        """The digests the disk store keeps ``entry``'s blocks under ("" for a Xet block not
        proven yet): what to look for in the store's index."""
        if self.xet is None or entry.path not in self.xet.listed:
            return entry.blocks
        return tuple(self.cache.stored_as(key) or "" for key in entry.blocks)

    def opened(self, entry: FileEntry) -> None:
        """A reader opened ``entry`` (a model file's tensor map is read then)."""
        if self.tensors is not None:
            self.tensors.opened(self.whole_files.known(entry))

    @property
    def counters(self) -> ReadCounters:
        cache, fetches = self.cache.counters, self.fetcher.counters
        ahead = ReadAheadCounters() if self.ahead is None else self.ahead.counters
        proven = FetchCounters() if self.xet is None else self.xet.fetcher.counters
        cas = CasCounters() if self.xet is None else self.xet.source.counters
        return ReadCounters(
            read_requests=self._read_requests,
            blocks_fetched=fetches.blocks_fetched + proven.blocks_fetched,
            bytes_fetched=fetches.bytes_fetched + proven.bytes_fetched,
            cache_hits=cache.cache_hits,
            memory_hits=cache.memory_hits,
            blocks_read_ahead=ahead.blocks_started,
            verification_failures=fetches.verification_failures + cas.proof_failures,
            cache_verification_failures=cache.cache_verification_failures,
            cache_write_failures=cache.cache_write_failures,
            cache_writes_skipped=cache.cache_writes_skipped,
            fetches_in_flight=fetches.fetches_in_flight + proven.fetches_in_flight,
            read_ahead_budget=ahead.budget_bytes,
            read_ahead_bytes=ahead.bytes_held,
            read_ahead_peak_bytes=ahead.peak_bytes,
            read_ahead_dropped=ahead.blocks_dropped,
            read_ahead_refused=ahead.blocks_refused,
            xet_proofs=0 if self.xet is None else self.xet.proofs,
            cas_requests=cas.requests + cas.token_refreshes,
            cas_bytes=cas.data_bytes,
        )

    async def read(
        self, entry: FileEntry, offset: int, length: int, pattern: ReadPattern | None = None
    ) -> Buffer:
        """Exactly the file's bytes ``[offset, offset + length)``, short only at end of file.

        ``pattern`` is the reading file's history; with it, sequential reads fetch ahead.
        """
        self._read_requests += 1
        entry = await self.whole_files.verified(entry)
        if self.xet is not None:
            self.xet.check_readable(entry.path)
        plan = read_plan(offset, length, entry.size, self.block_size)
        if not plan:
            return b""
        if pattern is not None and self.ahead is not None:
            first, last = plan[0].index, plan[-1].index
            ahead = pattern.record(first, last, self.max_window)
            if self.tensors is not None:
                self.tensors.follow(entry, offset, length)
                ahead = self.tensors.plain_window(entry, offset + length, ahead)
            self.ahead.follow(pattern, entry, first, last, ahead)
        return await self._read_plan(entry, plan)

    async def read_range(self, entry: FileEntry, offset: int, length: int) -> Buffer:
        """Like ``read``, for the reader's own use: no read-ahead, not counted as a request."""
        entry = await self.whole_files.verified(entry)
        return await self._read_plan(entry, read_plan(offset, length, entry.size, self.block_size))

    async def _read_plan(self, entry: FileEntry, plan: list[BlockSlice]) -> Buffer:
        if not plan:
            return b""
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
        digest = entry.blocks[piece.index]
        block = self._known(digest)
        if block is None and digest not in self.loading and self.cache.on_disk(digest):
            # Warm: read and check only the pieces asked for, not the whole block.
            part = await self.cache.read_stored(digest, piece.start, piece.end)
            if part is not None:
                return part
        if block is None:
            block = await self.block(entry, piece.index)
        # A view, not a copy: serving 128 KiB must not cost copying the block.
        return memoryview(block)[piece.start : piece.end]

    def closed(self, pattern: Hashable) -> None:
        """The open file whose history is ``pattern`` was closed: nothing is read ahead for it
        any more."""
        if self.ahead is not None:
            self.ahead.forget(pattern)

    async def block(self, entry: FileEntry, index: int) -> Buffer:
        """Block ``index`` of ``entry``, verified; one task loads a digest, others wait."""
        digest = entry.blocks[index]
        if self.ahead is not None:
            self.ahead.wanted(digest)
        if self.xet is not None:
            self.xet.wanted(entry.path, index)
        prefetching = self._prefetch_tickets.get(digest)
        if prefetching is not None:
            self.fetcher.gate.promote(prefetching)
        return await self.loading.run(
            digest, lambda: self._load_and_hold(entry, index), lambda: self._known(digest)
        )

    def _known(self, digest: str) -> Buffer | None:
        found = None if self.ahead is None else self.ahead.take(digest)
        return self.cache.from_memory(digest) if found is None else found

    async def keep_block(self, entry: FileEntry, index: int) -> bool:
        """Make sure the disk store holds block ``index`` of ``entry`` (prefetch): fetched
        behind every reader's fetch (a reader that comes to wait for it promotes it), and
        written even when it came from memory. Whether the store holds it afterwards: a
        failing disk, or a cache smaller than the work, may not."""
        digest = entry.blocks[index]
        if await self.cache.contains(digest):
            return True
        ticket = self._prefetch_tickets.setdefault(digest, Ticket(background=True))
        try:
            block = await self.loading.run(
                digest, lambda: self.load(entry, index, ticket), lambda: self._known(digest)
            )
        finally:
            if self._prefetch_tickets.get(digest) is ticket:
                del self._prefetch_tickets[digest]
        return await self.cache.keep(digest, block)

    async def _load_and_hold(self, entry: FileEntry, index: int) -> Buffer:
        block = await self.load(entry, index)
        self.cache.hold(entry.blocks[index], block)
        return block

    async def load(self, entry: FileEntry, index: int, ticket: Ticket = DEMAND) -> Buffer:
        """Block ``index`` of ``entry`` from the disk cache, else fetched (at ``ticket``'s
        place in the queue for transfers) and written to the disk cache; not kept in memory."""
        key = entry.blocks[index]
        block = await self.cache.get(key)
        if block is not None:
            return block
        digest = self.cache.stored_as(key)
        if digest is None:
            # A Xet block not proven yet: proving it yields its digest.
            assert self.xet is not None
            block = await self.xet.load(entry, index, ticket)
            if self.xet.complete(entry.path) and self._background is not None:
                self._background.start_soon(self.xet.check_whole, entry.path)
            return block
        start, length = block_extent(index, entry.size, self.block_size)
        block, _ = await self.fetcher.fetch(entry.path, index, start, length, digest, ticket)
        await self.cache.put(digest, block)
        return block


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
            await reader.cache.drain()
            nursery.cancel_scope.cancel()
