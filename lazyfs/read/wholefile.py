"""Files verified whole: for hub files without a block manifest.

The first read of such a file streams all of it (several ranges in flight, hashed in order as
they arrive, no second pass) and serves nothing until the hub's digest matches. Streaming
also yields each block's sha256, so once the file matches it is an ordinary block-verified
file: its blocks are in the cache and its block list is kept (``verified/`` in the cache
directory), so later reads, and later mounts, fetch and verify single blocks again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio
from typing_extensions import Buffer

from lazyfs.cache.blocklists import BlockLists
from lazyfs.core.blocks import block_count, block_extent
from lazyfs.core.filehashes import FileHashes
from lazyfs.core.manifest import FileEntry
from lazyfs.core.sizes import format_size
from lazyfs.errors import CacheError, IntegrityError, LazyfsError
from lazyfs.read.blockcache import BlockCache
from lazyfs.read.fetcher import BlockFetcher
from lazyfs.read.singleflight import SingleFlight

log = logging.getLogger(__name__)

# Blocks fetched ahead of the one being hashed: 8 x 4 MiB in memory at most.
STREAM_WINDOW = 8
PROGRESS_SECONDS = 5.0


class FileIntegrityError(IntegrityError):
    def __init__(self, path: str, url: str, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{path} from {url} does not match the hub's {algorithm} (expected {expected}, "
            f"got {actual}); none of it is served"
        )


# A copy of block ``index`` from somewhere cheaper than the origin, if there is one.
CachedBlock = Callable[[int], Awaitable[tuple[Buffer, str] | None]]


async def stream_whole_file(
    fetcher: BlockFetcher,
    entry: FileEntry,
    block_size: int,
    keep: Callable[[str, Buffer], Awaitable[None]] | None = None,
    progress: Callable[[int], None] = lambda done: None,
    window: int = STREAM_WINDOW,
    cached: CachedBlock | None = None,
) -> FileEntry:
    """Fetch all of ``entry`` through ``fetcher``, check it against ``entry.check``, and
    return it with its block digests and sha256. ``keep`` is given each fetched block (in
    order) before the check; ``cached`` may supply blocks instead of the sources (they are
    checked the same)."""
    assert entry.check is not None
    count = block_count(entry.size, block_size)
    # Created as needed: a huge file must not cost memory per block before its first byte.
    arrived: dict[int, trio.Event] = {}
    results: dict[int, tuple[Buffer, str, bool]] = {}
    failures: list[LazyfsError] = []
    slots = trio.Semaphore(window)
    hashes = FileHashes(entry)
    digests: list[str] = []

    async def fetch(index: int, nursery: trio.Nursery) -> None:
        start, length = block_extent(index, entry.size, block_size)
        try:
            found = await cached(index) if cached is not None else None
            if found is not None:
                results[index] = (*found, True)
            else:
                fetched = await fetcher.fetch(entry.path, index, start, length)
                results[index] = (*fetched, False)
        except LazyfsError as exc:
            failures.append(exc)
            nursery.cancel_scope.cancel()
        finally:
            arrived.setdefault(index, trio.Event()).set()

    async def start_fetches(nursery: trio.Nursery) -> None:
        for index in range(count):
            await slots.acquire()
            nursery.start_soon(fetch, index, nursery)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start_fetches, nursery)
        done = 0
        for index in range(count):
            await arrived.setdefault(index, trio.Event()).wait()
            del arrived[index]
            if failures:
                break
            block, digest, from_cache = results.pop(index)
            await trio.to_thread.run_sync(hashes.update, block)
            digests.append(digest)
            if keep is not None and not from_cache:
                await keep(digest, block)
            slots.release()
            done += len(memoryview(block))
            progress(done)
    if failures:
        raise failures[0]
    if count == 0:
        hashes.update(b"")
    actual = hashes.digest(entry.check.algorithm)
    if actual != entry.check.digest:
        url = fetcher.url_for(entry.path)
        raise FileIntegrityError(entry.path, url, entry.check.algorithm, entry.check.digest, actual)
    return replace(entry, sha256=hashes.digest("sha256"), blocks=tuple(digests), check=None)


class WholeFiles:
    """Verifies files whole for a mount: once per file, however many readers wait on it.

    Blocks go through the mount's block cache: checked on the way in, stored with the same
    failure handling as any fetched block."""

    def __init__(
        self,
        fetcher: BlockFetcher,
        cache: BlockCache,
        block_size: int,
        lists: BlockLists | None,
    ) -> None:
        self.fetcher = fetcher
        self.cache = cache
        self.block_size = block_size
        self.lists = lists
        self.failures = 0
        # Bytes streamed so far of each file being verified (shown by ``lazyfs status``).
        self.streamed: dict[str, int] = {}
        self._verified: dict[str, FileEntry] = {}
        self._verifying: SingleFlight[str, FileEntry] = SingleFlight()

    def known(self, entry: FileEntry) -> FileEntry:
        """``entry`` with its block digests if it has been verified, else as it is."""
        return self._verified.get(entry.path, entry)

    async def verified(self, entry: FileEntry) -> FileEntry:
        """``entry`` with its block digests, streaming and checking the file on first use."""
        if entry.check is None:
            return entry
        return await self._verifying.run(
            entry.path, lambda: self._verify_once(entry), lambda: self._verified.get(entry.path)
        )

    async def _verify_once(self, entry: FileEntry) -> FileEntry:
        verified = self._verified[entry.path] = await self._verify(entry)
        return verified

    async def _verify(self, entry: FileEntry) -> FileEntry:
        hint = None
        if self.lists is not None:
            hint = await trio.to_thread.run_sync(self.lists.load, entry, self.block_size)
        try:
            return await self._stream(entry, hint)
        except FileIntegrityError:
            if hint is None or self.lists is None:
                raise
            log.warning("the kept block list of %s is stale; verifying it from the hub", entry.path)
            await trio.to_thread.run_sync(self.lists.discard, entry, self.block_size)
            return await self._stream(entry, None)

    async def _stream(self, entry: FileEntry, hint: FileEntry | None) -> FileEntry:
        assert entry.check is not None
        size = format_size(entry.size)
        if hint is None:
            log.info(
                "verifying %s whole (%s) against the hub's %s; its first read waits for all of it",
                entry.path,
                size,
                entry.check.algorithm,
            )
        else:
            log.info(
                "re-checking %s (%s) from the cache against the hub's %s",
                entry.path,
                size,
                entry.check.algorithm,
            )
        began = last = time.monotonic()

        def report(done: int) -> None:
            nonlocal last
            self.streamed[entry.path] = done
            now = time.monotonic()
            if now - last >= PROGRESS_SECONDS:
                last = now
                share = 100 * done // max(entry.size, 1)
                log.info("verifying %s: %d%% of %s", entry.path, share, size)

        kept: list[str] = []

        async def keep(digest: str, block: Buffer) -> None:
            # Stored before the whole file is checked: blocks are kept by their own digest,
            # so one is only ever used where a verified list names it.
            kept.append(digest)
            await self.cache.put_now(digest, block)

        cached = None if hint is None else self._from_cache(hint)
        self.streamed[entry.path] = 0
        try:
            verified = await stream_whole_file(
                self.fetcher, entry, self.block_size, keep, report, cached=cached
            )
        except LazyfsError as exc:
            self.failures += 1
            if isinstance(exc, FileIntegrityError):
                # Blocks of a copy that failed are not worth their cache space.
                for digest in kept:
                    await self.cache.discard(digest)
            raise
        finally:
            del self.streamed[entry.path]
        log.info("verified %s (%s) in %.1fs", entry.path, size, time.monotonic() - began)
        if self.lists is not None and (hint is None or hint.blocks != verified.blocks):
            try:
                await trio.to_thread.run_sync(self.lists.store, entry, verified, self.block_size)
            except CacheError as exc:
                log.warning("%s", exc)
        return verified

    def _from_cache(self, hint: FileEntry) -> CachedBlock:
        async def cached(index: int) -> tuple[Buffer, str] | None:
            digest = hint.blocks[index]
            block = await self.cache.get(digest)
            return None if block is None else (block, digest)

        return cached
