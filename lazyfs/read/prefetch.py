"""Prefetch inside the daemon: load (fetch, verify, cache) every block of chosen files.

A few worker tasks share one queue of (file, block) pairs, so one large file keeps several
fetches in flight and many small files do not each start their own. Progress is what the
cache holds (``lazyfs status``): a block counts once it is verified and stored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import trio

from lazyfs.core.manifest import FileEntry
from lazyfs.errors import LazyfsError
from lazyfs.read.reader import BlockReader

log = logging.getLogger(__name__)

PREFETCH_WORKERS = 4


class Prefetcher:
    def __init__(self, reader: BlockReader, nursery: trio.Nursery) -> None:
        self.reader = reader
        self.errors: dict[str, str] = {}
        self.active = 0
        self._nursery = nursery

    def start(self, entries: Sequence[FileEntry]) -> None:
        work = iter(
            [
                (known, index)
                for known in map(self.reader.whole_files.known, entries)
                # A file still to be verified whole is one item: verifying it caches it all.
                for index in (range(len(known.blocks)) if known.check is None else [None])
            ]
        )
        for _ in range(PREFETCH_WORKERS):
            self.active += 1
            self._nursery.start_soon(self._worker, work)

    async def _worker(self, work: Iterator[tuple[FileEntry, int | None]]) -> None:
        try:
            for entry, index in work:
                try:
                    if index is None:
                        await self.reader.whole_files.verified(entry)
                    elif not await self.reader.is_cached(entry.blocks[index]):
                        await self.reader.block(entry, index)
                except LazyfsError as exc:
                    self.errors.setdefault(entry.path, str(exc))
                    where = "all" if index is None else f"block {index}"
                    log.error("prefetch of %s of %s failed: %s", where, entry.path, exc)
        finally:
            self.active -= 1
