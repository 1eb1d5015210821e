"""What the read path asks of a source of blocks; every origin (HTTP, hub, mirror) provides it,
and a new kind of source (Xet, S3, OCI) plugs in by providing it too.

A call is one attempt: retries, the deadline, choosing among mirrors and checking digests are
the read path's (``lazyfs.read.fetcher`` on the policy of ``lazyfs.core.attempts``). A source
raises the ``SourceError`` tree; the fetcher's time limit for the attempt is the caller's trio
deadline (``trio.current_effective_deadline()``), which a source that blocks a thread should
pass on to it. A source that can carry only so many transfers at once says how many in a
``max_transfers`` attribute (the fetcher assumes 3 otherwise), so that reads always find one
free beside read-ahead.
"""

from __future__ import annotations

from typing import Protocol

from typing_extensions import Buffer


class BlockSource(Protocol):
    def url_for(self, path: str) -> str: ...

    async def fetch_block(
        self, path: str, start: int, length: int, *, no_cache: bool = False
    ) -> tuple[Buffer, str]:
        """Exactly ``length`` bytes from ``start`` and their sha256 hex digest. ``no_cache``:
        the last copy was bad; an HTTP source asks past any cache on the way
        (``Cache-Control: no-cache``), one without caches in front may ignore it."""
        ...
