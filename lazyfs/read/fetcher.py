"""Fetching a block from the mount's sources (the origin and its mirrors) until a copy matches
its digest, within one deadline.

``core.attempts`` decides which source to ask, for how long, when to pause and when to give
up; the fetcher carries that out. Each attempt is one ``fetch_block`` of a ``BlockSource``,
run under the time the policy gave it; sources that fail are benched in the rotation, so the
next block asks a good one first. A bad copy is not yet a failure: the policy has its source
asked again past its cache (``no_cache``), and it is benched only if that fails too. Every
fetch from a source goes through here, whoever wants the block (a read, read-ahead,
prefetch, a file verified whole), so each byte fetched is counted once, and the metrics
observer (given at construction) is told how long each took. Each attempt holds a transfer
slot (``TransferGate``), where a read's fetch goes before any read-ahead's; waiting for the
slot is not part of the attempt's time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio
from typing_extensions import Buffer

from lazyfs.core.attempts import (
    AttemptLimits,
    AttemptPolicy,
    Decision,
    Fetch,
    GiveUp,
    Wait,
    Wanted,
    is_retryable,
    requested_pause,
)
from lazyfs.core.rotation import SourceRotation
from lazyfs.errors import SourceError
from lazyfs.read.transfers import DEMAND, Ticket, TransferGate
from lazyfs.sources.base import BlockSource

log = logging.getLogger(__name__)

# Transfers at once when the primary source does not say (``max_transfers``).
DEFAULT_TRANSFERS = 3


@dataclass
class FetchCounters:
    blocks_fetched: int = 0
    bytes_fetched: int = 0
    fetches_in_flight: int = 0
    verification_failures: int = 0
    # Attempts after a block's first (after an error or a bad copy), and blocks given up on.
    retries: int = 0
    errors: int = 0


class BlockFetcher:
    def __init__(
        self,
        sources: Sequence[BlockSource],
        limits: AttemptLimits | None = None,
        observe: Callable[[float], None] | None = None,
        tiers: Sequence[Sequence[BlockSource]] = (),
    ) -> None:
        """``sources``: the primary first, then its mirrors; ``tiers``: groups of caches in
        front of them, asked first, a tier's members sharing the blocks (``core.rotation``).
        ``observe`` is told the seconds each completed transfer took (the metrics
        histogram)."""
        cached = [member for tier in tiers for member in tier]
        self.rotation = SourceRotation(
            [*cached, *sources],
            tiers=[number for number, tier in enumerate(tiers, 1) for _ in tier]
            + [0] * len(sources),
            # A tier member is ranked by its URL; the others keep their places.
            labels=[member.url_for("") for member in cached] + [""] * len(sources),
        )
        self.primary = sources[0]
        self.limits = limits or AttemptLimits()
        self.counters = FetchCounters()
        self._observe = observe
        # The first source asked serves nearly every fetch (mirrors are for when it fails):
        # its limit is the mount's.
        first = cached[0] if cached else sources[0]
        self.gate = TransferGate(getattr(first, "max_transfers", DEFAULT_TRANSFERS))

    def url_for(self, path: str) -> str:
        """The primary source's URL of ``path``: the one errors about a whole file name."""
        return self.primary.url_for(path)

    async def fetch(
        self,
        path: str,
        index: int,
        start: int,
        length: int,
        expected: str | None = None,
        ticket: Ticket = DEMAND,
    ) -> tuple[Buffer, str]:
        """Bytes ``[start, start + length)`` of ``path`` (block ``index``) and their sha256:
        a copy whose digest is ``expected``, or, without one, the first complete copy.
        ``ticket``: the fetch's place in the queue for transfer slots (read-ahead's, or a
        read's)."""
        order = self.rotation.order(expected or f"{path}#{index}")
        wanted = Wanted(f"block {index} of {path}", path, index, expected)
        urls = [source.url_for(path) for source in order]
        policy = AttemptPolicy(urls, self.limits, wanted, trio.current_time())
        problem: _Problem | None = None
        while True:
            decision = policy.next(trio.current_time())
            if problem is not None:
                problem.log(wanted.label, decision, policy.attempts, policy.sources)
                if len(order) > 1 and not problem.reasked_by(decision):
                    self.rotation.failed(order[problem.source])
                problem = None
            if isinstance(decision, GiveUp):
                self.counters.errors += 1
                raise decision.error
            if isinstance(decision, Wait):
                await trio.sleep(decision.seconds)
                continue
            if policy.attempts > 1:
                self.counters.retries += 1
            source = order[decision.source]
            async with self.gate.slot(ticket):
                outcome = await self._attempt(policy, decision, source, path, start, length)
            if not isinstance(outcome, _Problem):
                return outcome
            problem = outcome

    async def _attempt(
        self,
        policy: AttemptPolicy,
        decision: Fetch,
        source: BlockSource,
        path: str,
        start: int,
        length: int,
    ) -> tuple[Buffer, str] | _Problem:
        """One fetch as ``decision`` says; its outcome is reported to ``policy``."""
        asked = decision.source
        try:
            with trio.move_on_after(decision.timeout) as slot:
                block, actual = await self._transfer(source, path, start, length, decision.no_cache)
        except SourceError as exc:
            policy.source_error(asked, exc, is_retryable(exc), requested_pause(exc))
            return _Problem(asked, f": {exc}")
        if slot.cancelled_caught:
            return _Problem(asked, f": {policy.no_answer(asked)}")
        expected = policy.wanted.expected
        if expected is None or actual == expected:
            policy.verified(asked)
            return block, actual
        self.counters.verification_failures += 1
        policy.bad_copy(asked, actual)
        return _Problem(
            asked,
            f" from {policy.sources[asked]} does not match its digest "
            f"(expected {expected}, got {actual})",
        )

    async def _transfer(
        self, source: BlockSource, path: str, start: int, length: int, no_cache: bool
    ) -> tuple[Buffer, str]:
        began = time.monotonic()
        self.counters.fetches_in_flight += 1
        try:
            fetched = await source.fetch_block(path, start, length, no_cache=no_cache)
        finally:
            self.counters.fetches_in_flight -= 1
        if self._observe is not None:
            self._observe(time.monotonic() - began)
        self.counters.blocks_fetched += 1
        self.counters.bytes_fetched += length
        return fetched


@dataclass(frozen=True)
class _Problem:
    """How the last attempt failed, logged once the policy has said what comes next."""

    source: int
    what: str

    def reasked_by(self, decision: Decision) -> bool:
        """Whether ``decision`` asks the same source again past its cache: not its fault yet."""
        return isinstance(decision, Fetch) and decision.no_cache and decision.source == self.source

    def log(self, label: str, decision: Decision, attempts: int, sources: Sequence[str]) -> None:
        if isinstance(decision, GiveUp):
            return  # the read that fails logs the error
        if isinstance(decision, Wait):
            level = logging.INFO if attempts == 1 else logging.WARNING
            log.log(level, "%s%s; retry %d in %.2fs", label, self.what, attempts, decision.seconds)
        elif self.reasked_by(decision):
            log.warning(
                "%s%s; asking %s again without its cache", label, self.what, sources[self.source]
            )
        elif isinstance(decision, Fetch) and decision.source != self.source:
            log.warning("%s%s; trying another source", label, self.what)
        else:
            log.warning("%s%s; fetching it again", label, self.what)
