"""Which origin a block is fetched from: cache tiers, the repository's URL and its mirrors.

Blocks are verified, so no source needs trust: any copy whose digest matches will do. A
source that fails (an error after its retries, or a block that does not match) goes to the
back of the line for a while, so one dead or corrupt mirror costs one failed fetch, not one
per block.

Members of one cache tier (``--tier 'A|B'``) share the blocks between them: each block goes
first to the member that ranks it highest by rendezvous hashing (the sha256 of member and
block), so no two members cache the same block, and adding or removing one moves only the
blocks it ranks first; the others follow in their own rank order, as failover.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

S = TypeVar("S")

PENALTY_SECONDS = 30.0


class SourceRotation(Generic[S]):
    def __init__(
        self,
        sources: Sequence[S],
        penalty: float = PENALTY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        tiers: Sequence[int] = (),
        labels: Sequence[str] = (),
    ) -> None:
        """``tiers``: per source, the number of the cache tier it belongs to (0: none; the
        members of one tier are given next to each other); ``labels``: per source, the name
        that ranks it in its tier (its URL)."""
        if not sources:
            raise ValueError("at least one source")
        self.sources = list(sources)
        self.tiers = list(tiers) or [0] * len(self.sources)
        self.labels = list(labels) or [str(i) for i in range(len(self.sources))]
        self.penalty = penalty
        self._clock = clock
        self._benched_until = [0.0] * len(self.sources)

    def order(self, key: str = "") -> list[S]:
        """Sources in the order to try them for the block ``key`` (its digest): those in good
        standing first, each group in the order given, a tier's members by their rank for
        ``key``."""
        now = self._clock()
        place = rendezvous_places(self.tiers, self.labels, key)
        positions = sorted(
            range(len(self.sources)), key=lambda i: (self._benched_until[i] > now, place[i])
        )
        return [self.sources[i] for i in positions]

    def failed(self, source: S) -> None:
        for position, candidate in enumerate(self.sources):
            if candidate is source:
                self._benched_until[position] = self._clock() + self.penalty


def rendezvous_places(tiers: Sequence[int], labels: Sequence[str], key: str) -> list[float]:
    """Each source's place in the order for ``key``: its index, except that a tier's members
    swap places among themselves by rank (highest score first)."""
    places: list[float] = [float(i) for i in range(len(tiers))]
    members: dict[int, list[int]] = {}
    for index, tier in enumerate(tiers):
        if tier:
            members.setdefault(tier, []).append(index)
    for indices in members.values():
        ranked = sorted(indices, key=lambda i: rendezvous_score(labels[i], key), reverse=True)
        for slot, index in zip(sorted(indices), ranked, strict=True):
            places[index] = float(slot)
    return places


def rendezvous_score(label: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{label}\n{key}".encode()).digest()[:8], "big")
