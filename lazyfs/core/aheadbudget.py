"""The mount-wide read-ahead budget, sans-I/O: who holds how many bytes of blocks nobody has
asked for yet.

A read-ahead fetch takes budget for its block before it starts, and gives it back when a
reader first takes the block (``release``), when the fetch fails or is cancelled, or when the
block will not be read after all: its reader jumped elsewhere (``outside``), closed the file
(``forget``), or left it unread for ``hold_seconds`` (``expire``). A block still being fetched
keeps its budget until the fetch ends (``fetched`` then says to drop it), so the bytes the
budget counts bound the bytes read-ahead has in memory.

No budget, no read-ahead: ``take`` refuses instead of queueing. Owners (one per reading open
file) share the budget fairly: an owner may grow only up to an equal share among the owners
holding budget, so one fast reader cannot starve the others; an owner holding nothing may
always take one block if the budget has room for it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

DEFAULT_HOLD_SECONDS = 20.0


@dataclass
class _Grant:
    owner: Hashable
    index: int
    size: int
    # When the block arrived; None while it is being fetched.
    fetched_at: float | None = None
    # Its reader has gone: released as soon as the fetch ends.
    abandoned: bool = False


class ReadAheadBudget:
    def __init__(self, capacity: int, hold_seconds: float = DEFAULT_HOLD_SECONDS) -> None:
        self.capacity = capacity
        self.hold_seconds = hold_seconds
        self.used = 0
        # The most ever held at once (status shows it: the bound was kept).
        self.peak = 0
        self._grants: dict[str, _Grant] = {}
        self._owned: dict[Hashable, int] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._grants

    def owned(self, owner: Hashable) -> int:
        return self._owned.get(owner, 0)

    def share(self, owner: Hashable) -> int:
        """The most ``owner`` may hold: an equal part among the owners holding budget and it."""
        owners = len(self._owned) + (owner not in self._owned)
        return self.capacity // owners

    def take(self, owner: Hashable, key: str, index: int, size: int) -> bool:
        """Budget for block ``index`` (``key``: its digest) of ``owner``'s file, if it fits."""
        if key in self._grants or self.used + size > self.capacity:
            return False
        held = self.owned(owner)
        if held and held + size > self.share(owner):
            return False
        self._grants[key] = _Grant(owner, index, size)
        self._owned[owner] = held + size
        self.used += size
        self.peak = max(self.peak, self.used)
        return True

    def fetched(self, key: str, now: float) -> bool:
        """The block for ``key`` arrived: whether to hold it until a reader takes it (False:
        nobody will, and its budget is released)."""
        grant = self._grants.get(key)
        if grant is None:
            return False
        if grant.abandoned:
            self.release(key)
            return False
        grant.fetched_at = now
        return True

    def release(self, key: str) -> None:
        """Give back ``key``'s budget (taken by a reader, failed, cancelled); no-op if none."""
        grant = self._grants.pop(key, None)
        if grant is None:
            return
        self.used -= grant.size
        left = self._owned[grant.owner] - grant.size
        if left:
            self._owned[grant.owner] = left
        else:
            del self._owned[grant.owner]

    def outside(self, owner: Hashable, first: int, last: int) -> list[str]:
        """``owner``'s reader now wants blocks ``first..last`` at most: drop what lies outside.
        Returns the keys of the fetched blocks to drop (those still fetching are released when
        their fetch ends)."""
        return self._drop(
            key
            for key, grant in self._grants.items()
            if grant.owner == owner and not first <= grant.index <= last
        )

    def forget(self, owner: Hashable) -> list[str]:
        """``owner`` has closed its file: all it holds goes (see ``outside``)."""
        if owner not in self._owned:
            return []
        return self._drop(key for key, grant in self._grants.items() if grant.owner == owner)

    def expire(self, now: float) -> list[str]:
        """Blocks fetched more than ``hold_seconds`` ago and still unread: released; their keys."""
        return self._drop(
            key
            for key, grant in self._grants.items()
            if grant.fetched_at is not None and now - grant.fetched_at > self.hold_seconds
        )

    def _drop(self, keys: Iterable[str]) -> list[str]:
        dropped = []
        for key in list(keys):
            grant = self._grants[key]
            if grant.fetched_at is None:
                grant.abandoned = True
            else:
                self.release(key)
                dropped.append(key)
        return dropped
