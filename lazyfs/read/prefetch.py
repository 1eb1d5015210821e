"""Prefetch inside the daemon: load (fetch, verify, cache) every block of chosen files.

Each request is a run: a few worker tasks share one queue of (file, block) pairs, so one
large file keeps several fetches in flight and many small files do not each start their
own. A run keeps a record that ``lazyfs status`` reports: bytes done, what failed, and, once
it has finished, what the cache did not keep (a selection larger than ``--cache-size``,
blocks evicted or pruned meanwhile, failed cache writes). A run can be cancelled (``lazyfs
prefetch --cancel``, or its client interrupted).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from lazyfs.core.blocks import block_extent, held_bytes
from lazyfs.core.manifest import FileEntry
from lazyfs.errors import CacheError, LazyfsError
from lazyfs.read.reader import BlockReader

log = logging.getLogger(__name__)

PREFETCH_WORKERS = 4
# Finished runs kept for status, beside the running ones.
KEEP_FINISHED_RUNS = 8


@dataclass
class PrefetchRun:
    """One prefetch request, as ``lazyfs status`` reports it."""

    id: int
    files: int
    bytes: int
    # Bytes whose blocks have been dealt with: loaded and kept, or failed.
    done_bytes: int = 0
    # Per file, the first error.
    errors: dict[str, str] = field(default_factory=dict)
    # Once finished: per file, the bytes the cache does not hold.
    not_kept: dict[str, int] = field(default_factory=dict)
    cache_write_failures: int = 0
    cache_error: str | None = None
    finished: bool = False
    cancelled: bool = False


class Prefetcher:
    def __init__(self, reader: BlockReader, nursery: trio.Nursery) -> None:
        self.reader = reader
        self._nursery = nursery
        self._runs: dict[int, PrefetchRun] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._last_id = 0

    @property
    def active(self) -> bool:
        return bool(self._scopes)

    def report(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "runs": [dataclasses.asdict(run) for run in self._runs.values()],
        }

    def start(self, entries: Sequence[FileEntry]) -> PrefetchRun:
        self._last_id += 1
        run = PrefetchRun(self._last_id, len(entries), sum(entry.size for entry in entries))
        self._runs[run.id] = run
        finished = [number for number, kept in self._runs.items() if kept.finished]
        for number in finished[: max(0, len(finished) - KEEP_FINISHED_RUNS)]:
            del self._runs[number]
        self._scopes[run.id] = trio.CancelScope()
        self._nursery.start_soon(self._run, run, list(entries))
        return run

    def cancel(self, run_id: int | None = None) -> list[int]:
        """Cancel run ``run_id`` (None: every run); the ids of the runs cancelled."""
        chosen = [number for number in self._scopes if run_id in (None, number)]
        for number in chosen:
            self._runs[number].cancelled = True
            self._scopes[number].cancel()
            log.info("prefetch run %d cancelled", number)
        return chosen

    async def _run(self, run: PrefetchRun, entries: list[FileEntry]) -> None:
        counters = self.reader.cache.counters
        write_failures = counters.cache_write_failures
        known = [self.reader.whole_files.known(entry) for entry in entries]
        # A file still to be verified whole is one item: verifying it caches it all.
        whole: list[tuple[FileEntry, int | None]] = [
            (entry, None) for entry in known if entry.check is not None
        ]
        blocks = [entry for entry in known if entry.check is None]
        try:
            with self._scopes[run.id]:
                work = iter(whole + list(await self._in_order(blocks)))
                async with trio.open_nursery() as workers:
                    for _ in range(PREFETCH_WORKERS):
                        workers.start_soon(self._worker, run, work)
                await self._account(run, entries)
        finally:
            run.cache_write_failures = counters.cache_write_failures - write_failures
            run.finished = True
            del self._scopes[run.id]
        if run.errors or run.not_kept or run.cache_error:
            log.warning(
                "prefetch run %d finished: %d file(s) failed, %d not kept in the cache",
                run.id,
                len(run.errors),
                len(run.not_kept),
            )
        else:
            log.info("prefetch run %d finished: %d file(s) cached", run.id, run.files)

    async def _in_order(self, entries: list[FileEntry]) -> list[tuple[FileEntry, int]]:
        """The blocks of ``entries``: model files' headers first, then their tensors in the
        order loaders want them (``TensorReads.loader_ordered``), if the reader knows maps."""
        tensors = self.reader.tensors
        if tensors is not None:
            try:
                return await tensors.loader_ordered(entries)
            except LazyfsError as exc:
                log.warning("prefetch in file order: a tensor map could not be read: %s", exc)
        return [(entry, index) for entry in entries for index in range(len(entry.blocks))]

    async def _worker(self, run: PrefetchRun, work: Iterator[tuple[FileEntry, int | None]]) -> None:
        for entry, index in work:
            try:
                if index is None:
                    await self.reader.whole_files.verified(entry)
                else:
                    await self.reader.keep_block(entry, index)
            except LazyfsError as exc:
                run.errors.setdefault(entry.path, str(exc))
                where = "all" if index is None else f"block {index}"
                log.error("prefetch of %s of %s failed: %s", where, entry.path, exc)
            except Exception as exc:
                # A bug: logged and reported, but a prefetch must not end the mount.
                run.errors.setdefault(entry.path, f"internal error: {exc!r}")
                log.exception("prefetch of %s failed", entry.path)
            if index is None:
                run.done_bytes += entry.size
            else:
                run.done_bytes += block_extent(index, entry.size, self.reader.block_size)[1]

    async def _account(self, run: PrefetchRun, entries: list[FileEntry]) -> None:
        """What the cache holds of the run's files now that the work is done."""
        store = self.reader.store
        try:
            await trio.to_thread.run_sync(store.sync_index)
        except CacheError as exc:
            run.cache_error = str(exc)
            return
        for entry in map(self.reader.whole_files.known, entries):
            if entry.path in run.errors:
                continue
            keys = self.reader.stored_keys(entry)
            held = held_bytes(keys, entry.size, self.reader.block_size, store.held)
            if held < entry.size:
                run.not_kept[entry.path] = entry.size - held
