"""Which origin a block is fetched from: the repository's URL and its mirrors.

Blocks are verified, so a mirror needs no trust: any copy whose digest matches will do. A
source that fails (an error after its retries, or a block that does not match) goes to the
back of the line for a while, so one dead or corrupt mirror costs one failed fetch, not one
per block.
"""

from __future__ import annotations

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
    ) -> None:
        if not sources:
            raise ValueError("at least one source")
        self.sources = list(sources)
        self.penalty = penalty
        self._clock = clock
        self._benched_until = [0.0] * len(self.sources)

    def order(self) -> list[S]:
        """Sources in the order to try them: those in good standing first, each group in
        the order given (the primary first)."""
        now = self._clock()
        positions = sorted(
            range(len(self.sources)), key=lambda i: (self._benched_until[i] > now, i)
        )
        return [self.sources[i] for i in positions]

    def failed(self, source: S) -> None:
        for position, candidate in enumerate(self.sources):
            if candidate is source:
                self._benched_until[position] = self._clock() + self.penalty
