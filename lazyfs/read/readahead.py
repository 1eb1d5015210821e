"""Read-ahead under one mount-wide budget: blocks fetched ahead of sequential readers are held
here, outside the memory cache's LRU, until a reader first takes them.

``core.aheadbudget`` decides (budget taken before a fetch starts, fair shares between open
files, what to drop when a reader jumps, closes its file or leaves a block unread too long);
this module carries it out: one task per block in the reader's nursery, at read-ahead's place
in the queue for transfer slots (``TransferGate``), loading through the reader's single flight,
so a read that wants a block read-ahead is fetching waits for that fetch (and promotes it)
instead of fetching the block again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass

import trio
from typing_extensions import Buffer

from lazyfs.core.aheadbudget import DEFAULT_HOLD_SECONDS, ReadAheadBudget
from lazyfs.core.blocks import block_count, block_extent
from lazyfs.core.manifest import FileEntry
from lazyfs.errors import LazyfsError
from lazyfs.read.blockcache import BlockCache
from lazyfs.read.singleflight import SingleFlight
from lazyfs.read.transfers import Ticket, TransferGate

log = logging.getLogger(__name__)

LOADED_SOON_REMEMBERED = 256

# Loads block ``index`` of a file (disk, else fetched at the ticket's place), without keeping it.
Load = Callable[[FileEntry, int, Ticket], Awaitable[Buffer]]


@dataclass(frozen=True)
class ReadAheadCounters:
    budget_bytes: int = 0
    bytes_held: int = 0
    peak_bytes: int = 0
    blocks_started: int = 0
    blocks_dropped: int = 0
    blocks_refused: int = 0


class ReadAhead:
    def __init__(
        self,
        budget_bytes: int,
        block_size: int,
        max_window: int,
        cache: BlockCache,
        loading: SingleFlight[str, Buffer],
        gate: TransferGate,
        load: Load,
        background: trio.Nursery,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
    ) -> None:
        self.budget = ReadAheadBudget(budget_bytes, hold_seconds)
        self.block_size = block_size
        self.max_window = max_window
        self.cache = cache
        self.loading = loading
        self.gate = gate
        self._load = load
        self._background = background
        # Fetched ahead and not yet taken by a reader, by digest; each holds its budget.
        self._unread: dict[str, Buffer] = {}
        # The read-ahead fetches under way, by digest: a reader that waits for one promotes it.
        self._tickets: dict[str, Ticket] = {}
        self._started = self._dropped = self._refused = 0
        # Stored blocks lately asked into the page cache ahead of a reader (asked once).
        self._loaded_soon: OrderedDict[str, None] = OrderedDict()

    @property
    def counters(self) -> ReadAheadCounters:
        return ReadAheadCounters(
            budget_bytes=self.budget.capacity,
            bytes_held=self.budget.used,
            peak_bytes=self.budget.peak,
            blocks_started=self._started,
            blocks_dropped=self._dropped,
            blocks_refused=self._refused,
        )

    @property
    def under_way(self) -> int:
        """Read-ahead fetches started and not yet ended."""
        return len(self._tickets)

    def follow(
        self, owner: Hashable, entry: FileEntry, first: int, last: int, ahead: range
    ) -> None:
        """``owner`` (an open file) read blocks ``first..last`` of ``entry``: start fetching
        the blocks ``ahead`` that the budget allows, in order, and drop what it left behind."""
        self.expire()
        # One block behind still counts: the kernel's requests come a little out of order.
        self._drop(self.budget.outside(owner, first - 1, last + self.max_window))
        self.fetch(owner, entry, ahead)

    def fetch(
        self, owner: Hashable, entry: FileEntry, indices: Iterable[int], urgent: bool = False
    ) -> int:
        """Start fetching the blocks ``indices`` of ``entry`` for ``owner``, in order, as far
        as the budget allows; ``urgent``: at a demand fetch's place in the queue (the rest of
        a tensor a reader is in). Returns how many blocks this asked for or found under way."""
        count = block_count(entry.size, self.block_size)
        asked = 0
        for index in indices:
            if index >= count:
                break
            digest = entry.blocks[index]
            if (
                digest in self._unread
                or digest in self.budget
                or digest in self.loading
                or self.cache.in_memory(digest)
            ):
                asked += 1
                continue
            if self.cache.on_disk(digest):
                # Served from disk piece by piece when asked; until then, into the page cache.
                self._load_soon(digest)
                asked += 1
                continue
            size = block_extent(index, entry.size, self.block_size)[1]
            if not self.budget.take(owner, digest, index, size):
                # Not queued: the next read asks again, with the budget as it is then.
                self._refused += 1
                break
            ticket = self._tickets[digest] = Ticket(background=not urgent)
            self._started += 1
            asked += 1
            self._background.start_soon(self._fetch, entry, index, ticket)
        return asked

    def expire(self) -> None:
        """Drop what was fetched ahead and left unread too long."""
        self._drop(self.budget.expire(trio.current_time()))

    def _load_soon(self, digest: str) -> None:
        if digest in self._loaded_soon:
            return
        self._loaded_soon[digest] = None
        if len(self._loaded_soon) > LOADED_SOON_REMEMBERED:
            self._loaded_soon.popitem(last=False)
        self._background.start_soon(self.cache.load_soon, digest)

    def take(self, digest: str) -> Buffer | None:
        """A reader's first use of a block read ahead: its budget is freed, and the block moves
        to the memory cache with the others readers are working in."""
        block = self._unread.pop(digest, None)
        if block is not None:
            self.budget.release(digest)
            self.cache.hold(digest, block)
        return block

    def wanted(self, digest: str) -> None:
        """A reader is about to wait for ``digest``: a read-ahead fetch of it goes first now."""
        ticket = self._tickets.get(digest)
        if ticket is not None:
            self.gate.promote(ticket)

    def forget(self, owner: Hashable) -> None:
        """``owner`` closed its file: what was read ahead for it no longer holds budget."""
        self._drop(self.budget.forget(owner))

    def _drop(self, digests: Iterable[str]) -> None:
        for digest in digests:
            # Already written to the disk cache: a later read finds it there.
            self._unread.pop(digest, None)
            self._dropped += 1

    async def _fetch(self, entry: FileEntry, index: int, ticket: Ticket) -> None:
        digest = entry.blocks[index]
        try:
            # A read may have loaded the block, or started to, since this task was started.
            if not self.cache.in_memory(digest) and digest not in self.loading:
                await self.loading.run(digest, lambda: self._load_and_keep(entry, index, ticket))
        except LazyfsError as exc:
            # The reader that needs this block will fetch it again and see the error.
            log.debug("read-ahead of block %d of %s failed: %s", index, entry.path, exc)
        except Exception:
            # A bug must not end the reader's nursery, and with it the mount.
            log.exception("read-ahead of block %d of %s failed", index, entry.path)
        finally:
            del self._tickets[digest]
            if digest not in self._unread:
                # Failed, cancelled, not needed, or dropped on arrival: its budget is free.
                self.budget.release(digest)

    async def _load_and_keep(self, entry: FileEntry, index: int, ticket: Ticket) -> Buffer:
        block = await self._load(entry, index, ticket)
        digest = entry.blocks[index]
        if self.budget.fetched(digest, trio.current_time()):
            self._unread[digest] = block
        elif not ticket.background:
            # Its reader moved on, but another read waits for it.
            self.cache.hold(digest, block)
        return block
