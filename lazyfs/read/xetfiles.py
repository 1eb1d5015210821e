"""Xet files in the block pipeline: blocks whose digests are learnt by proving them.

A hub file stored in Xet has no block digests until its bytes are proven against the Hub's
``xetHash``. Its entry gets a stand-in key per block (``xet:HASH:INDEX``), fixed for the
mount, so the reader, read-ahead, tensor-aware fetches and prefetch treat it as any other
block; the block cache maps a stand-in to the block's sha256 once it is known, and stores
blocks by sha256 as always. Loading a block not known yet fetches it through a fetcher over
``sources.xet.XetSource`` (one window proof per attempt, retried and bounded like a block
fetch), records its digest (``cache.xetlists``: a remount reads it with no request at all)
and stores it.

When every block of a file is known, the file's sha256 is checked against the Hub's LFS
``oid`` as well, from the cache (the one hash the commit itself carries); a mismatch fails
every later read of the file. A file the CAS cannot prove window by window (no
``file-chunk-hashes``, a window that runs away) is verified whole instead, with one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import trio
from typing_extensions import Buffer

from lazyfs.cache.xetlists import XetLists
from lazyfs.core.attempts import AttemptLimits
from lazyfs.core.blocks import block_count, block_extent
from lazyfs.core.manifest import FileEntry
from lazyfs.errors import CacheError, IntegrityError, LazyfsError
from lazyfs.read.blockcache import STAND_IN, BlockCache
from lazyfs.read.fetcher import BlockFetcher
from lazyfs.read.transfers import Ticket
from lazyfs.read.wholefile import WholeFiles, stream_whole_file
from lazyfs.sources.xet import XetProofUnavailable, XetSource

log = logging.getLogger(__name__)

MODE_XET = "xet"
MODE_WHOLE = "whole"


# Blocks proven together at most: a 32 MiB window, one request of each kind.
MAX_BATCH_BLOCKS = 8


@dataclass(eq=False)
class _Batch:
    """Blocks ``[first, end)`` of a file, proven in one window."""

    first: int
    end: int
    ticket: Ticket
    # Closed: started, so no more blocks may join it.
    closed: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    blocks: dict[int, Buffer] = field(default_factory=dict)
    error: LazyfsError | None = None

    @property
    def size(self) -> int:
        return self.end - self.first


def stand_in(xet_hash: str, index: int) -> str:
    return f"{STAND_IN}{xet_hash}:{index}"


class XetFiles:
    def __init__(
        self,
        source: XetSource,
        cache: BlockCache,
        block_size: int,
        whole_files: WholeFiles,
        lists: XetLists | None,
        limits: AttemptLimits,
        observe_fetch: Callable[[float], None] | None = None,
    ) -> None:
        self.source = source
        self.cache = cache
        self.block_size = block_size
        self.whole_files = whole_files
        self.lists = lists
        self.fetcher = BlockFetcher([source], limits, observe_fetch)
        # The entries as listed (with the Hub's sha256), by path.
        self.listed: dict[str, FileEntry] = {}
        self.known: dict[str, dict[int, str]] = {}
        self.mode: dict[str, str] = {}
        self.failed: dict[str, IntegrityError] = {}
        self._checking: set[str] = set()
        self._checked: set[str] = set()
        # Proofs under way or about to start, per file.
        self._batches: dict[str, list[_Batch]] = {}
        # Windows proven (each serves one or more blocks).
        self.proofs = 0

    def entries(self, entries: Iterable[FileEntry]) -> tuple[FileEntry, ...]:
        """The mount's entries, Xet files given stand-in block keys (others as they are)."""
        result = []
        for entry in entries:
            if entry.xet_hash is None or entry.check is None or entry.path not in self.source.files:
                result.append(entry)
                continue
            count = block_count(entry.size, self.block_size)
            self.listed[entry.path] = entry
            self.known[entry.path] = {}
            self.mode[entry.path] = MODE_XET
            keys = tuple(stand_in(entry.xet_hash, index) for index in range(count))
            result.append(replace(entry, blocks=keys, check=None))
        return tuple(result)

    def load_lists(self) -> None:
        """The digests earlier mounts proved (blocking: run in a thread at mount)."""
        if self.lists is None:
            return
        for entry in self.listed.values():
            assert entry.xet_hash is not None
            count = block_count(entry.size, self.block_size)
            found = self.lists.load(entry.xet_hash, entry.size, self.block_size, count)
            self._learn(entry, found)

    def verified_bytes(self, path: str) -> int:
        entry = self.listed[path]
        return sum(
            block_extent(index, entry.size, self.block_size)[1] for index in self.known[path]
        )

    def check_readable(self, path: str) -> None:
        failure = self.failed.get(path)
        if failure is not None:
            raise failure

    async def load(self, entry: FileEntry, index: int, ticket: Ticket) -> Buffer:
        """Block ``index`` of Xet file ``entry``: proven, stored, its digest recorded.

        Loads of the next blocks of a file that arrive before a proof starts join it (read-ahead
        asks for several at once): one window, one proof, one request of each kind for all of
        them, up to ``MAX_BATCH_BLOCKS``."""
        while True:
            self.check_readable(entry.path)
            if self.mode[entry.path] == MODE_WHOLE:
                return await self._load_whole(entry, index)
            batch = self._joinable(entry.path, index)
            if batch is None:
                return await self._lead(entry, index, ticket)
            if not ticket.background:
                self.fetcher.gate.promote(batch.ticket)
            await batch.done.wait()
            if batch.error is not None:
                raise batch.error
            block = batch.blocks.get(index)
            if block is not None:
                return block
            # Its leader was cancelled, or the file turned to whole-file mode: ask again.

    def wanted(self, path: str, index: int) -> None:
        """A reader waits for block ``index``: the proof that will bring it goes first."""
        for batch in self._batches.get(path, ()):
            if batch.first <= index < batch.end:
                self.fetcher.gate.promote(batch.ticket)

    def _joinable(self, path: str, index: int) -> _Batch | None:
        for batch in self._batches.get(path, ()):
            if batch.first <= index < batch.end:
                return batch
            if not batch.closed and index == batch.end and batch.size < MAX_BATCH_BLOCKS:
                batch.end += 1
                return batch
        return None

    async def _lead(self, entry: FileEntry, index: int, ticket: Ticket) -> Buffer:
        batch = _Batch(index, index + 1, Ticket(ticket.background))
        batches = self._batches.setdefault(entry.path, [])
        batches.append(batch)
        try:
            # Loads started with this one (read-ahead's, a tensor's) join before it starts,
            # and so do those that come while every transfer slot is busy.
            await trio.sleep(0)
            await self.fetcher.gate.room(batch.ticket)
            batch.closed = True
            await self._prove(entry, batch)
        except XetProofUnavailable as exc:
            if self.mode[entry.path] != MODE_WHOLE:
                self.mode[entry.path] = MODE_WHOLE
                log.warning("%s; verifying %s whole instead", exc, entry.path)
        except LazyfsError as exc:
            batch.error = exc
            raise
        finally:
            batch.closed = True
            batches.remove(batch)
            if not batches:
                del self._batches[entry.path]
            batch.done.set()
        block = batch.blocks.get(index)
        if block is None:
            return await self._load_whole(entry, index)
        return block

    async def _prove(self, entry: FileEntry, batch: _Batch) -> None:
        start = batch.first * self.block_size
        stop = min(batch.end * self.block_size, entry.size)
        data, digests = await self.fetcher.fetch(
            entry.path, batch.first, start, stop - start, None, batch.ticket
        )
        self.proofs += 1
        # The fetcher counted one block per proof.
        self.fetcher.counters.blocks_fetched += batch.size - 1
        view = memoryview(data)
        learnt = {}
        for index, digest in zip(range(batch.first, batch.end), digests.split(" "), strict=True):
            at = index * self.block_size - start
            block = view[at : at + self.block_size]
            await self.cache.put(digest, block)
            batch.blocks[index] = block
            learnt[index] = digest
        self._learn(self.listed[entry.path], learnt)
        await self._record(entry.path, learnt)

    def _learn(self, listed: FileEntry, digests: dict[int, str]) -> None:
        assert listed.xet_hash is not None
        for index, digest in digests.items():
            self.known[listed.path][index] = digest
            self.cache.aliases[stand_in(listed.xet_hash, index)] = digest

    async def _record(self, path: str, digests: dict[int, str]) -> None:
        if self.lists is None:
            return
        listed = self.listed[path]
        assert listed.xet_hash is not None
        try:
            await trio.to_thread.run_sync(
                self.lists.add, listed.xet_hash, listed.size, self.block_size, digests.items()
            )
        except CacheError as exc:
            log.warning("%s", exc)

    async def _load_whole(self, entry: FileEntry, index: int) -> Buffer:
        listed = self.listed[entry.path]
        verified = await self.whole_files.verified(listed)
        digests = dict(enumerate(verified.blocks))
        if len(self.known[entry.path]) < len(digests):
            self._learn(listed, digests)
            self._checked.add(entry.path)  # verified whole against the Hub's sha256 already
        block = await self.cache.get(verified.blocks[index])
        if block is None:
            start, length = block_extent(index, entry.size, self.block_size)
            block, _ = await self.whole_files.fetcher.fetch(
                entry.path, index, start, length, verified.blocks[index]
            )
            await self.cache.put(verified.blocks[index], block)
        return block

    def complete(self, path: str) -> bool:
        """Whether every block's digest is known and the file still awaits its sha256 check."""
        listed = self.listed[path]
        return (
            path not in self._checked
            and path not in self._checking
            and len(self.known[path]) == block_count(listed.size, self.block_size)
        )

    async def check_whole(self, path: str) -> None:
        """Check a completely proven file's sha256 against the Hub's LFS oid, its blocks read
        from the cache (fetched again by digest if one was evicted)."""
        listed = self.listed[path]
        assert listed.check is not None
        self._checking.add(path)
        digests = self.known[path]

        async def cached(index: int) -> tuple[Buffer, str] | None:
            block = await self.cache.get(digests[index])
            return None if block is None else (block, digests[index])

        try:
            await stream_whole_file(
                self.whole_files.fetcher, listed, self.block_size, cached=cached
            )
        except IntegrityError as exc:
            self.failed[path] = exc
            log.error("%s; its reads fail from now on", exc)
            if self.lists is not None:
                # Proven against a xetHash that disagrees with the commit's sha256: a later
                # mount proves its blocks again rather than trusting them.
                assert listed.xet_hash is not None
                await trio.to_thread.run_sync(
                    self.lists.discard, listed.xet_hash, listed.size, self.block_size
                )
        except LazyfsError as exc:
            log.warning("could not check %s against the Hub's sha256 yet: %s", path, exc)
            return
        else:
            log.info("%s: every block proven, and the whole file matches the Hub's sha256", path)
        finally:
            self._checking.discard(path)
        self._checked.add(path)
