"""Which blocks the disk store holds, kept in memory: ``lazyfs status`` and prefetch look
blocks up here instead of asking SQLite once per block (tens of thousands of queries for a
large repository, several times a second while a client watches).

The store keeps it current for what its own process does: put, evict, discard, clear.
diskcache drops nothing by itself: the store opens it with ``cull_limit=0`` (no culling
inside ``set``) and sets no expiry, so every eviction is the store's own ``evict_to``. Other
processes sharing the cache directory (another mount, ``lazyfs cache prune``) change the
store behind its back, so the index is a hint that ``BlockStore.sync_index`` reloads
whenever the store's own count of blocks (one query) differs from it.

A reload runs while readers keep storing and evicting: their changes are journaled and
replayed over the loaded digests, so none is lost. Safe to use from several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

# (digest, held); a digest of None with held False is a clear.
_Change = tuple[str | None, bool]


class DigestIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digests: set[str] = set()
        self._journal: list[_Change] | None = None
        self.loaded = False

    def __contains__(self, digest: object) -> bool:
        return digest in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def add(self, digest: str) -> None:
        self._change((digest, True))

    def discard(self, digest: str) -> None:
        self._change((digest, False))

    def clear(self) -> None:
        self._change((None, False))

    def begin_reload(self) -> None:
        """From now until ``finish_reload``, changes are also journaled."""
        with self._lock:
            self._journal = []

    def finish_reload(self, digests: Iterable[str]) -> None:
        """Replace the contents with ``digests`` (read since ``begin_reload``), replaying the
        changes made meanwhile over them."""
        loaded = set(digests)
        with self._lock:
            for change in self._journal or ():
                _apply(loaded, change)
            self._digests = loaded
            self._journal = None
            self.loaded = True

    def abandon_reload(self) -> None:
        with self._lock:
            self._journal = None

    def _change(self, change: _Change) -> None:
        with self._lock:
            _apply(self._digests, change)
            if self._journal is not None:
                self._journal.append(change)


def _apply(digests: set[str], change: _Change) -> None:
    digest, held = change
    if digest is None:
        digests.clear()
    elif held:
        digests.add(digest)
    else:
        digests.discard(digest)
