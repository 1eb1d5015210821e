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
from dataclasses import replace

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
        """Block ``index`` of Xet file ``entry``: proven, stored, its digest recorded."""
        self.check_readable(entry.path)
        if self.mode[entry.path] == MODE_WHOLE:
            return await self._load_whole(entry, index)
        start, length = block_extent(index, entry.size, self.block_size)
        try:
            block, digest = await self.fetcher.fetch(entry.path, index, start, length, None, ticket)
        except XetProofUnavailable as exc:
            if self.mode[entry.path] != MODE_WHOLE:
                self.mode[entry.path] = MODE_WHOLE
                log.warning("%s; verifying %s whole instead", exc, entry.path)
            return await self._load_whole(entry, index)
        await self.cache.put(digest, block)
        self._learn(self.listed[entry.path], {index: digest})
        await self._record(entry.path, {index: digest})
        return block

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
        except LazyfsError as exc:
            log.warning("could not check %s against the Hub's sha256 yet: %s", path, exc)
            return
        else:
            log.info("%s: every block proven, and the whole file matches the Hub's sha256", path)
        finally:
            self._checking.discard(path)
        self._checked.add(path)
