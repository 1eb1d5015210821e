"""What the read path asks of a source of blocks; every origin (HTTP, hub, mirror) provides it."""

from __future__ import annotations

from typing import Protocol

from typing_extensions import Buffer


class BlockSource(Protocol):
    def url_for(self, path: str) -> str: ...

    async def fetch_block(self, path: str, start: int, length: int) -> tuple[Buffer, str]:
        """Exactly ``length`` bytes from ``start`` and their sha256 hex digest."""
        ...
