"""The local cache: verified blocks keyed by digest (diskcache), and manifests for offline mounts.

Layout of a cache directory (created 0700):

    blocks/      diskcache store; key = block sha256 hex, value = the block, stored as a file
    manifests/   the last manifest seen per source URL, so a mount works offline (and the
                 manifests committed to hub repositories, by the listing's digest of them)
    listings/    hub listings last resolved per revision and per commit (cache.listings)
    verified/    block lists of hub files verified whole (cache.blocklists)
    logs/        logs of background mounts

All methods here block; callers on the event loop run them in ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import diskcache
from diskcache.core import MODE_BINARY
from typing_extensions import Buffer

from lazyfs.cache.atomic import write_atomically
from lazyfs.cache.blockfile import BlockDisk, BlockValue
from lazyfs.cache.index import DigestIndex
from lazyfs.core.manifest import MAX_BLOCK_SIZE
from lazyfs.core.pieces import PieceSums
from lazyfs.errors import CacheError


class StoredBlock:
    """A stored block's open file and the piece checksums recorded when it was verified
    (None for a block stored before there were any). Its bytes are unverified: the reader
    checks what it reads. Reads are ``pread``s, so several threads may read it at once."""

    def __init__(self, digest: str, handle: BinaryIO, sums: PieceSums | None) -> None:
        self.digest = digest
        self.handle = handle
        self.sums = sums

    def read_into(self, buffer: memoryview, start: int) -> int:
        """Read from byte ``start`` into ``buffer`` (a reused one: no fresh pages to fault in
        per read); how many bytes were read (fewer if the file is shorter)."""
        try:
            return os.preadv(self.handle.fileno(), [buffer], start)
        except (OSError, ValueError) as exc:
            raise CacheError(f"cannot read a cached block: {exc}") from None

    def read_into_now(self, buffer: memoryview, start: int) -> bool:
        """Fill ``buffer`` from byte ``start`` only if the page cache holds all of it (no
        waiting for the disk: RWF_NOWAIT); whether it did. Safe on an event loop."""
        try:
            count = os.preadv(self.handle.fileno(), [buffer], start, os.RWF_NOWAIT)
        except (OSError, ValueError):
            return False  # not cached (EAGAIN), unsupported here, or a failure read_into will see
        return count == len(buffer)

    def load_soon(self) -> None:
        """Ask the kernel to start reading the file into the page cache (a hint, for a
        reader who will want it next; failing is harmless)."""
        with contextlib.suppress(OSError, ValueError):
            os.posix_fadvise(self.handle.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)

    def read_all(self) -> bytes:
        """The whole file, though never more than one byte past the largest block: the
        cache directory may hold a planted huge file."""
        try:
            return os.pread(self.handle.fileno(), MAX_BLOCK_SIZE + 1, 0)
        except (OSError, ValueError) as exc:
            raise CacheError(f"cannot read a cached block: {exc}") from None

    def close(self) -> None:
        self.handle.close()


@dataclass(frozen=True)
class StoreStatistics:
    blocks: int
    volume: int
    limit: int


class BlockStore:
    """Verified blocks on disk, least recently used evicted beyond ``size_limit`` bytes."""

    def __init__(self, directory: Path, size_limit: int) -> None:
        self.size_limit = size_limit
        # The digests held, in memory: kept current by this object's own changes, and
        # reloaded by sync_index when another process changed the store.
        self.held = DigestIndex()
        self._reloading = threading.Lock()
        self._directory = directory
        # Row ids of blocks opened and not yet marked used (see open_block).
        self._touched: set[int] = set()
        self._touching = threading.Lock()
        try:
            self._cache = diskcache.Cache(
                str(directory),
                size_limit=size_limit,
                eviction_policy="least-recently-used",
                # No culling inside set(): it drops a fixed number of entries at once, which
                # empties a small cache. put() culls to exactly the limit instead.
                cull_limit=0,
                statistics=False,
                disk=BlockDisk,
            )
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot open block cache in {directory}: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(CacheError):
            self.mark_used()
        self._cache.close()

    def open_block(self, digest: str) -> StoredBlock | None:
        """The stored block, opened, or None if it is not cached. This is the part that
        touches the index; reading it is not.

        A read-only query, not diskcache's ``get``, which marks the block used in a write
        transaction of its own: blocks opened are marked used in one transaction before the
        next write (``put``, whose eviction is the only reader of those marks) or at close.
        """
        query = "SELECT rowid, tag, filename FROM Cache WHERE key = ? AND raw = 1 AND mode = ?"
        try:
            row = self._cache._sql(query, (digest, MODE_BINARY)).fetchone()
            handle = None if row is None else open(self._directory / row[2], "rb")  # noqa: SIM115
        except FileNotFoundError:
            handle = None  # evicted meanwhile by another process sharing the cache
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"block cache read failed: {exc}") from None
        if row is None or handle is None:
            self.held.discard(digest)
            return None
        with self._touching:
            self._touched.add(int(row[0]))
        self.held.add(digest)
        return StoredBlock(digest, handle, PieceSums.decode(row[1]))

    def mark_used(self) -> None:
        """Give the blocks opened since the last call their access time (the LRU order)."""
        with self._touching:
            rows, self._touched = self._touched, set()
        if not rows:
            return
        now = time.time()
        try:
            with self._cache.transact(retry=True):
                self._cache._con.executemany(
                    "UPDATE Cache SET access_time = ? WHERE rowid = ?",
                    [(now, rowid) for rowid in rows],
                )
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot update the block cache: {exc}") from None

    def read_block(self, digest: str) -> bytes | None:
        """The whole stored block with ``digest``, or None if it is not cached. Unverified:
        the caller checks it, since anything may have written into the cache directory."""
        stored = self.open_block(digest)
        if stored is None:
            return None
        try:
            return stored.read_all()
        finally:
            stored.close()

    def put(self, digest: str, block: Buffer) -> None:
        """Store a block verified against ``digest``, with the checksums of its pieces."""
        try:
            self.mark_used()  # before the eviction below reads the marks
            sums = PieceSums.of(block).encode()
            self._cache.set(digest, BlockValue(block), tag=sums, retry=True)
            self.held.add(digest)
            self._evict_to_limit()
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot store block in cache: {exc}") from None

    def _evict_to_limit(self) -> None:
        self.evict_to(self.size_limit)

    def evict_to(self, size: int) -> int:
        """Drop least recently used blocks one at a time until the store holds at most
        ``size`` bytes; returns how many were dropped.

        diskcache's own culling removes ten entries per step, which would empty a cache that
        holds only a few blocks; its schema orders entries by ``access_time`` for this policy.
        """
        dropped = 0
        self.mark_used()
        try:
            while self._cache.volume() > size:
                query = "SELECT key FROM Cache ORDER BY access_time LIMIT 1"
                row = self._cache._sql(query).fetchone()
                if row is None:
                    break
                self._cache.delete(row[0], retry=True)
                self.held.discard(str(row[0]))
                dropped += 1
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot evict cached blocks: {exc}") from None
        return dropped

    def digests(self) -> list[str]:
        try:
            return [str(key) for key in self._cache.iterkeys()]
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot list cached blocks: {exc}") from None

    def verify(self) -> tuple[int, list[str]]:
        """Re-hash every stored block; drop those that no longer match their digest.
        Returns (blocks checked, digests dropped)."""
        checked, dropped = 0, []
        for digest in self.digests():
            block = self.read_block(digest)
            if block is None:
                continue  # evicted meanwhile, by a mount sharing this cache
            checked += 1
            if hashlib.sha256(block).hexdigest() != digest:
                self.discard(digest)
                dropped.append(digest)
        return checked, dropped

    def clear(self) -> int:
        try:
            removed = int(self._cache.clear(retry=True))
            self.held.clear()
            return removed
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot clear the block cache: {exc}") from None

    def contains(self, digest: str) -> bool:
        """Whether the store holds ``digest`` (a query; ``digest in store.held`` is the
        in-memory answer)."""
        try:
            found = digest in self._cache
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"block cache lookup failed: {exc}") from None
        if found:
            self.held.add(digest)
        else:
            self.held.discard(digest)
        return found

    def discard(self, digest: str) -> None:
        try:
            self._cache.delete(digest, retry=True)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot delete cached block: {exc}") from None
        self.held.discard(digest)

    def statistics(self) -> StoreStatistics:
        try:
            return StoreStatistics(len(self._cache), self._cache.volume(), self.size_limit)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise CacheError(f"cannot read the block cache's size: {exc}") from None

    def sync_index(self) -> StoreStatistics:
        """The store's statistics, with ``held`` reloaded first if it may be stale: never
        loaded, or the store counts a different number of blocks than it (another process
        changed the store). A reload is one query; otherwise nothing more is asked."""
        with self._reloading:
            statistics = self.statistics()
            if self.held.loaded and statistics.blocks == len(self.held):
                return statistics
            self.held.begin_reload()
            try:
                rows = self._cache._sql("SELECT key FROM Cache").fetchall()
            except (OSError, sqlite3.Error) as exc:
                self.held.abandon_reload()
                raise CacheError(f"cannot list cached blocks: {exc}") from None
            self.held.finish_reload(str(key) for (key,) in rows)
            return statistics


def _manifest_cache_path(cache_dir: Path, source: str) -> Path:
    key = hashlib.sha256(source.encode()).hexdigest()[:32]
    return cache_dir / "manifests" / f"{key}.json"


def load_cached_manifest(cache_dir: Path, source: str) -> tuple[bytes, float] | None:
    """The manifest last seen for ``source`` and when it was stored, if any."""
    path = _manifest_cache_path(cache_dir, source)
    try:
        return path.read_bytes(), path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"cannot read cached manifest {path}: {exc.strerror}") from None


def store_manifest(cache_dir: Path, source: str, raw: bytes) -> float:
    """Keep ``raw`` as the manifest of ``source``; rewritten only when it changed, so the
    file's mtime (shown as the mount's timestamps) is stable across remounts."""
    cached = load_cached_manifest(cache_dir, source)
    if cached is not None and cached[0] == raw:
        return cached[1]
    path = _manifest_cache_path(cache_dir, source)
    try:
        write_atomically(path, raw, mode=0o600)
        return path.stat().st_mtime
    except OSError as exc:
        raise CacheError(f"cannot store manifest in {path.parent}: {exc.strerror}") from None
