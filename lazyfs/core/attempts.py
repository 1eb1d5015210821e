"""How one block is fetched, sans-I/O: which source to ask next and for how long, when to pause,
and when to give up with which error.

The fetcher (``lazyfs.read.fetcher``) asks ``next(now)`` what to do, does it, and reports how
each attempt ended: ``verified``, ``bad_copy``, ``source_error`` or ``no_answer``. Nothing here
sleeps, reads a clock or touches a socket, so any sequence of outcomes can be fed to it
(``tests/test_attempts.py`` does, with hypothesis).

The rules:
- one deadline covers every attempt at every source; with several sources each attempt gets
  its share of what is left, so one hung source cannot keep the others from being asked;
- at most ``attempts`` fetches, and at least one per source; a copy that does not match its
  digest costs an attempt like a transport error does;
- a source that sends a bad copy is asked once more at once, with ``no_cache`` (a cache in
  front of the files refetches its copy from upstream, which repairs it), unless the
  attempts left are owed to sources not asked yet; only once that re-ask fails too is the
  source at fault (``Fetch.no_cache`` tells the fetcher not to bench it yet);
- otherwise a source that failed or sent a bad copy is not asked again for this block while
  a source not yet asked remains; after that, the source asked least often (the first on a
  tie);
- an error that asking again cannot help (404, a refused certificate) rules its source out
  for this block; with none left, the fetch gives up at once;
- a source asked again after an error is asked after a pause (doubling backoff with jitter,
  Retry-After honoured up to a cap); after a bad copy, at once;
- giving up: BlockIntegrityError if any copy came back bad; else, with one source, its own
  last error; else OriginUnreachable naming each source's last error. At the deadline,
  OriginUnreachable saying what the last attempt was doing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lazyfs.errors import (
    BlockIntegrityError,
    LazyfsError,
    OriginHTTPError,
    OriginProtocolError,
    OriginUnreachable,
    SourceError,
)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Retry-After is honoured up to this many times the longest backoff.
RETRY_AFTER_CAP = 4


def is_retryable(exc: SourceError) -> bool:
    """Whether asking the same source again may help."""
    if isinstance(exc, OriginHTTPError):
        return exc.status in RETRYABLE_STATUS
    return isinstance(exc, OriginUnreachable | OriginProtocolError)


def requested_pause(exc: SourceError) -> float | None:
    """The pause the server asked for (Retry-After), if it did."""
    return exc.retry_after if isinstance(exc, OriginHTTPError) else None


def backoff(
    pause: int, first_delay: float, max_delay: float, retry_after: float | None, draw: float
) -> float:
    """Seconds of pause number ``pause`` (from 1): doubling from ``first_delay`` up to
    ``max_delay``, jittered by ``draw`` (0 to 1) to between half and all of that. A server's
    Retry-After lengthens it, up to ``RETRY_AFTER_CAP`` times ``max_delay``."""
    doubled = first_delay * 2.0 ** min(pause - 1, 64)  # the cap keeps the power finite
    jittered = min(max_delay, doubled) * (0.5 + 0.5 * draw)
    if retry_after is not None:
        return min(max_delay * RETRY_AFTER_CAP, max(jittered, retry_after))
    return jittered


@dataclass(frozen=True)
class AttemptLimits:
    """How hard a block fetch tries: ``attempts`` fetches in all (at least one per source),
    within ``deadline`` seconds, pausing as ``backoff`` says between tries of one source."""

    attempts: int = 4
    deadline: float = math.inf
    first_delay: float = 0.25
    max_delay: float = 4.0


@dataclass(frozen=True)
class Wanted:
    """What is fetched, for messages and errors. ``expected`` None: any complete copy will do
    (it is checked later, as part of a whole file)."""

    label: str
    path: str
    index: int
    expected: str | None


@dataclass(frozen=True)
class Fetch:
    """Ask source ``source`` (a position in the policy's sources) for a copy, for at most
    ``timeout`` seconds; ``no_cache``: the re-ask after its bad copy, past any cache."""

    source: int
    timeout: float
    no_cache: bool = False


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class GiveUp:
    error: LazyfsError


Decision = Fetch | Wait | GiveUp


class AttemptPolicy:
    """The attempts of one block fetch. ``sources`` names the sources (their URLs for the
    file), in the order to try them; ``now`` is the caller's clock, in seconds."""

    def __init__(
        self,
        sources: Sequence[str],
        limits: AttemptLimits,
        wanted: Wanted,
        now: float,
        draw: Callable[[], float] = random.random,
    ) -> None:
        if not sources:
            raise ValueError("at least one source")
        self.sources = list(sources)
        self.limits = limits
        self.wanted = wanted
        self.budget = max(limits.attempts, len(self.sources))
        self.ends = now + limits.deadline
        self.attempts = 0
        self.verified_copy = False
        self._draw = draw
        self._asked = [0] * len(self.sources)
        self._last_error: list[SourceError | None] = [None] * len(self.sources)
        self._retry_after: list[float | None] = [None] * len(self.sources)
        self._ruled_out = [False] * len(self.sources)
        self._owes_pause = [False] * len(self.sources)
        self._bad_copies: list[tuple[int, str]] = []
        # The source owed its re-ask (its first bad copy was the last outcome), and those
        # that have had theirs: one per source per block.
        self._reask: int | None = None
        self._reasked: set[int] = set()
        self._under_way: Fetch | None = None
        self._pauses = 0
        self._resume_at: float | None = None
        # How each finished attempt failed, for the deadline's message.
        self._failures: list[str] = []
        self._unanswered = False
        self._given_up: GiveUp | None = None

    @property
    def done(self) -> bool:
        """A copy was verified, or the fetch gave up: nothing more to ask."""
        return self.verified_copy or self._given_up is not None

    # -- what next ---------------------------------------------------------------------------

    def next(self, now: float) -> Decision:
        if self.verified_copy:
            raise RuntimeError("the block is verified: nothing more to fetch")
        if self._under_way is not None:
            raise RuntimeError("an attempt is under way: report its outcome first")
        if self._given_up is None:
            decision = self._decide(now)
            if not isinstance(decision, GiveUp):
                return decision
            self._given_up = decision
        return self._given_up

    def _decide(self, now: float) -> Decision:
        if now >= self.ends:
            return GiveUp(self._bad_copy_error() or self._deadline_error())
        if self.attempts >= self.budget or all(self._ruled_out):
            return GiveUp(self._bad_copy_error() or self._last_errors())
        source, no_cache = self._choose(), False
        if self._reask is not None:
            if self._reask_affordable():
                source, no_cache = self._reask, True
                self._reasked.add(source)
            self._reask = None
        if self._owes_pause[source]:
            pause = self._pause(source, now)
            if pause is not None:
                return pause
        self._owes_pause[source] = False
        remaining = self.ends - now
        share = remaining if len(self.sources) == 1 else remaining / (self.budget - self.attempts)
        self.attempts += 1
        self._asked[source] += 1
        self._under_way = Fetch(source, share, no_cache)
        return self._under_way

    def _pause(self, source: int, now: float) -> Wait | None:
        """The pause owed before ``source`` is asked again, or what is left of it; None once
        it is over."""
        if self._resume_at is None:
            self._pauses += 1
            pause = backoff(
                self._pauses,
                self.limits.first_delay,
                self.limits.max_delay,
                self._retry_after[source],
                self._draw(),
            )
            pause = min(pause, self.ends - now)
            if pause > 0:
                self._resume_at = now + pause
                return Wait(pause)
        elif now < self._resume_at:
            return Wait(self._resume_at - now)
        self._resume_at = None
        return None

    def _reask_affordable(self) -> bool:
        """Whether a re-ask leaves an attempt for each source not asked yet."""
        unasked = sum(
            1 for i in range(len(self.sources)) if not self._asked[i] and not self._ruled_out[i]
        )
        return self.budget - self.attempts > unasked

    def _choose(self) -> int:
        usable = [i for i in range(len(self.sources)) if not self._ruled_out[i]]
        return min(usable, key=lambda i: (self._asked[i], i))

    # -- outcomes ----------------------------------------------------------------------------

    def verified(self, source: int) -> None:
        self._finish(source)
        self.verified_copy = True

    def bad_copy(self, source: int, actual: str) -> None:
        self._finish(source)
        if source not in self._reasked:
            self._reask = source
        self._bad_copies.append((source, actual))
        self._failures.append(f"{self.sources[source]} sent a copy with sha256 {actual}")

    def source_error(
        self, source: int, error: SourceError, retryable: bool, retry_after: float | None = None
    ) -> None:
        """The attempt failed with ``error``; ``retry_after``: the pause its server asked for."""
        self._finish(source)
        self._last_error[source] = error
        self._retry_after[source] = retry_after
        self._ruled_out[source] = not retryable
        self._owes_pause[source] = retryable
        self._failures.append(str(error))

    def no_answer(self, source: int) -> OriginUnreachable:
        """The attempt used up its time without a complete answer, and was abandoned. Asking
        the source again costs no pause: it has had its time. Returns the error it counts as."""
        fetch = self._finish(source)
        error = OriginUnreachable(f"{self.sources[source]}: no answer within {fetch.timeout:.1f}s")
        self._last_error[source] = error
        self._failures.append(str(error))
        self._unanswered = True
        return error

    def _finish(self, source: int) -> Fetch:
        fetch = self._under_way
        if fetch is None or fetch.source != source:
            raise RuntimeError(f"source {source} was not asked for this attempt")
        self._under_way = None
        self._unanswered = False
        return fetch

    # -- giving up ---------------------------------------------------------------------------

    def _bad_copy_error(self) -> BlockIntegrityError | None:
        if not self._bad_copies:
            return None
        urls = ", ".join(dict.fromkeys(self.sources[source] for source, _ in self._bad_copies))
        wanted = self.wanted
        return BlockIntegrityError(
            wanted.path,
            wanted.index,
            urls,
            wanted.expected or "",
            self._bad_copies[-1][1],
            len(self._bad_copies),
        )

    def _last_errors(self) -> SourceError:
        errors = [error for error in self._last_error if error is not None]
        if len(self.sources) == 1 and errors:
            return errors[0]
        return OriginUnreachable(f"{self.wanted.label}: {'; '.join(map(str, errors))}")

    def _deadline_error(self) -> OriginUnreachable:
        if self.attempts == 0:
            why = "no attempt was made"
        elif self._unanswered:
            # Every read came within the read timeout, yet the answer was not complete: a
            # slow or trickling source (or a connect slower than the deadline).
            why = f"attempt {self.attempts} had no complete answer by then"
            if self.attempts > 1:
                why += f"; attempt {self.attempts - 1} failed: {self._failures[-2]}"
        else:
            why = f"attempt {self.attempts} failed: {self._failures[-1]}"
        return OriginUnreachable(
            f"{self.wanted.label}: no verified copy within {self.limits.deadline:g}s; "
            f"gave up: {why}"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one fetch tries before its read fails with EIO."""

    attempts: int = 4
    first_delay: float = 0.25
    max_delay: float = 4.0
    deadline: float = 60.0
    connect_timeout: float = 5.0
    read_timeout: float = 20.0

    @property
    def limits(self) -> AttemptLimits:
        """The same bounds for a block fetch, all its attempts at every source together."""
        return AttemptLimits(self.attempts, self.deadline, self.first_delay, self.max_delay)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        return backoff(attempt, self.first_delay, self.max_delay, retry_after, random.random())
