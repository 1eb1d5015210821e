"""The attempt policy of one block (lazyfs.core.attempts), pure: fed arbitrary outcomes with
hypothesis, and a few sequences by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lazyfs.core.attempts import (
    RETRY_AFTER_CAP,
    AttemptLimits,
    AttemptPolicy,
    Decision,
    Fetch,
    GiveUp,
    Wait,
    Wanted,
    backoff,
    is_retryable,
)
from lazyfs.errors import (
    BlockIntegrityError,
    OriginHTTPError,
    OriginProtocolError,
    OriginUnreachable,
    SourceError,
)

EXPECTED = "e" * 64
WANTED = Wanted("block 3 of model.bin", "model.bin", 3, EXPECTED)
LIMITS = AttemptLimits(attempts=4, deadline=60.0, first_delay=0.25, max_delay=4.0)


def urls(count: int) -> list[str]:
    return [f"http://source{i}.test/model.bin" for i in range(count)]


# -- outcomes, as hypothesis draws them ------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    took: float


@dataclass(frozen=True)
class BadCopy:
    took: float


@dataclass(frozen=True)
class Failed:
    took: float
    status: int | None  # None: a transport error (unreachable)
    retry_after: float | None


@dataclass(frozen=True)
class NoAnswer:
    pass


Outcome = Verified | BadCopy | Failed | NoAnswer

durations = st.floats(0.0, 30.0)
outcomes = st.one_of(
    st.builds(Verified, durations),
    st.builds(BadCopy, durations),
    st.builds(
        Failed,
        durations,
        st.one_of(st.none(), st.sampled_from([404, 403, 429, 500, 503])),
        st.one_of(st.none(), st.floats(0.0, 3600.0)),
    ),
    st.just(NoAnswer()),
)
limits = st.builds(
    AttemptLimits,
    attempts=st.integers(1, 8),
    deadline=st.one_of(st.just(math.inf), st.floats(0.5, 120.0)),
    first_delay=st.floats(0.0, 2.0),
    max_delay=st.floats(0.0, 8.0),
)


@dataclass
class Run:
    """A policy fed a script of outcomes: what it asked, step by step, and how it ended."""

    sources: int
    limits: AttemptLimits
    script: list[Outcome]
    policy: AttemptPolicy
    decisions: list[tuple[float, Decision]] = field(default_factory=list)  # (when, what)
    asked: list[int] = field(default_factory=list)  # the source of each Fetch, in order
    fetches: list[Fetch] = field(default_factory=list)  # each Fetch, in order
    end: str = "still going"  # or "verified", "gave up" (else the outcomes ran out)
    error: BaseException | None = None
    bad_copies: int = 0
    last: Outcome | None = None
    last_source_error: SourceError | None = None
    # A source ruled out (a final error) and how many fetches had been made by then.
    ruled_out: dict[int, int] = field(default_factory=dict)


def drive(sources: int, limits: AttemptLimits, script: list[Outcome], draw: float = 0.5) -> Run:
    """Feed ``script`` to a policy as the fetcher would, on a clock the script moves."""
    now = 1000.0
    policy = AttemptPolicy(urls(sources), limits, WANTED, now, draw=lambda: draw)
    run = Run(sources, limits, script, policy)
    steps = iter(script)
    for _ in range(10 * len(script) + 10):
        decision = policy.next(now)
        run.decisions.append((now, decision))
        if isinstance(decision, GiveUp):
            run.end, run.error = "gave up", decision.error
            return run
        if isinstance(decision, Wait):
            now += decision.seconds
            continue
        run.asked.append(decision.source)
        run.fetches.append(decision)
        outcome = next(steps, None)
        if outcome is None:
            return run
        run.last = outcome
        if isinstance(outcome, NoAnswer):
            now += decision.timeout if math.isfinite(decision.timeout) else 1.0
            policy.no_answer(decision.source)
            continue
        now += min(outcome.took, decision.timeout)
        if isinstance(outcome, Verified):
            policy.verified(decision.source)
            run.end = "verified"
            return run
        if isinstance(outcome, BadCopy):
            run.bad_copies += 1
            policy.bad_copy(decision.source, "b" * 64)
            continue
        error: SourceError
        if outcome.status is None:
            error = OriginUnreachable(f"{urls(sources)[decision.source]}: connection refused")
        else:
            error = OriginHTTPError(f"HTTP {outcome.status}", outcome.status, outcome.retry_after)
        retryable = is_retryable(error)
        if not retryable:
            run.ruled_out[decision.source] = len(run.asked)
        run.last_source_error = error
        policy.source_error(decision.source, error, retryable, outcome.retry_after)
    raise AssertionError("the policy neither fetched, waited out nor gave up")


runs = settings(max_examples=400, deadline=None)
driven = st.builds(
    drive, st.integers(1, 4), limits, st.lists(outcomes, max_size=20), st.floats(0.0, 1.0)
)


@runs
@given(driven)
def test_never_more_fetches_than_the_budget(run: Run) -> None:
    assert len(run.asked) <= max(run.limits.attempts, run.sources) == run.policy.budget


@runs
@given(driven)
def test_nothing_is_asked_after_giving_up(run: Run) -> None:
    if run.end == "gave up":
        given_up = run.decisions[-1][1]
        assert given_up == GiveUp(run.error)  # type: ignore[arg-type]
        for later in (0.0, 1e9):
            assert run.policy.next(later) == given_up
        assert run.policy.done


@runs
@given(driven)
def test_every_source_is_asked_before_any_is_asked_again(run: Run) -> None:
    for position, source in enumerate(run.asked):
        if source in run.asked[:position] and not run.fetches[position].no_cache:
            assert set(run.asked[:position]) == set(range(run.sources))
        # A source ruled out (404) is never asked again.
        assert position < run.ruled_out.get(source, math.inf)


def reasks_owed(run: Run) -> list[tuple[int, int]]:
    """(fetch, source) of each bad copy that is its source's first for the block: each is
    owed a re-ask past the cache."""
    owed, seen = [], set()
    for position, (source, outcome) in enumerate(zip(run.asked, run.script, strict=False)):
        if isinstance(outcome, BadCopy) and source not in seen:
            seen.add(source)
            owed.append((position, source))
    return owed


@runs
@given(driven)
@example(drive(2, AttemptLimits(4, math.inf, 0.0, 0.0), [BadCopy(0.0), Verified(0.0)]))
@example(drive(2, AttemptLimits(2, math.inf, 0.0, 0.0), [BadCopy(0.0), Verified(0.0)]))
def test_a_bad_copy_is_asked_for_again_past_the_cache_before_any_other_source(run: Run) -> None:
    for position, source in reasks_owed(run):
        if position + 1 >= len(run.fetches):
            continue  # given up (deadline, budget) or the script ran out
        after = run.fetches[position + 1]
        unasked = set(range(run.sources)) - set(run.asked[: position + 1])
        left = run.policy.budget - (position + 1)
        if left > len(unasked):
            assert after.source == source and after.no_cache
        else:
            # Every attempt left is owed to a source not asked yet: that goes first.
            assert after.source in unasked and not after.no_cache
    # Past the cache only as a re-ask: right after the source's first bad copy, once.
    owed = dict(reasks_owed(run))
    for position, fetch in enumerate(run.fetches):
        if fetch.no_cache:
            assert owed.get(position - 1) == fetch.source


@runs
@given(driven)
def test_the_first_verified_copy_ends_it(run: Run) -> None:
    verified_at = next((i for i, o in enumerate(run.script) if isinstance(o, Verified)), None)
    if run.end == "verified":
        assert len(run.asked) == verified_at + 1  # type: ignore[operator]
        assert run.policy.done
        with pytest.raises(RuntimeError):
            run.policy.next(0.0)


@runs
@given(driven)
@example(drive(1, AttemptLimits(2, 1.0, 2.0, 2.0), [Failed(0.5, None, None)], 1.0))  # deadline
@example(drive(2, AttemptLimits(4, 30.0, 0.1, 0.1), [Failed(0.0, 503, 3600.0)] * 3, 0.0))
def test_pauses_are_bounded_and_the_deadline_is_one_for_all(run: Run) -> None:
    ends, limits = run.policy.ends, run.limits
    for now, decision in run.decisions:
        if isinstance(decision, Wait):
            assert 0 < decision.seconds <= limits.max_delay * RETRY_AFTER_CAP
            assert now + decision.seconds <= ends + 1e-9 * ends
        if isinstance(decision, Fetch):
            assert now < ends and decision.timeout <= ends - now


@runs
@given(driven)
def test_the_error_given_up_with_is_the_right_kind(run: Run) -> None:
    if run.end != "gave up":
        return
    if run.bad_copies:
        assert isinstance(run.error, BlockIntegrityError)
        assert f"after {run.bad_copies} fetches" in str(run.error)
        assert run.error.expected == EXPECTED and run.error.index == 3
    elif "no verified copy within" in str(run.error):
        assert isinstance(run.error, OriginUnreachable)
    elif run.sources == 1:
        assert isinstance(run.error, SourceError)
        if isinstance(run.last, Failed):
            assert run.error is run.last_source_error
    else:
        assert isinstance(run.error, OriginUnreachable)
        assert str(run.error).startswith(WANTED.label)
    if len(run.ruled_out) == run.sources:
        # Nothing left worth asking: given up at once, not after a pause or more fetches.
        assert isinstance(run.decisions[-2][1], Fetch)
        assert len(run.asked) == max(run.ruled_out.values())


@runs
@given(st.integers(2, 4), st.floats(1.0, 100.0), st.integers(1, 6))
def test_with_several_sources_each_attempt_gets_its_share_of_what_is_left(
    sources: int, deadline: float, attempts: int
) -> None:
    limits = AttemptLimits(attempts=attempts, deadline=deadline)
    run = drive(sources, limits, [NoAnswer()] * 20)
    fetches = [d for _, d in run.decisions if isinstance(d, Fetch)]
    budget = max(attempts, sources)
    assert len(fetches) == budget
    for fetch in fetches:
        assert fetch.timeout == pytest.approx(deadline / budget)
    assert isinstance(run.error, OriginUnreachable)


# -- by hand ---------------------------------------------------------------------------------


def test_one_source_retries_errors_after_pauses_and_bad_copies_at_once() -> None:
    error = OriginHTTPError("http://source0.test/model.bin: HTTP 503", 503)
    policy = AttemptPolicy(urls(1), LIMITS, WANTED, 0.0, draw=lambda: 1.0)
    assert policy.next(0.0) == Fetch(0, 60.0)
    policy.source_error(0, error, True)
    assert policy.next(1.0) == Wait(0.25)
    assert policy.next(1.1) == Wait(pytest.approx(0.15))  # asked early: the rest of the pause
    assert policy.next(1.25) == Fetch(0, 58.75)
    policy.bad_copy(0, "b" * 64)
    # A bad copy is fetched again at once, past the cache.
    assert policy.next(2.0) == Fetch(0, 58.0, no_cache=True)
    policy.source_error(0, error, True, retry_after=3.0)
    assert policy.next(2.0) == Wait(3.0)  # the second pause: 0.5 s, or what the server asks
    assert policy.next(5.0) == Fetch(0, 55.0)
    policy.source_error(0, error, True)
    given_up = policy.next(6.0)
    assert isinstance(given_up, GiveUp) and isinstance(given_up.error, BlockIntegrityError)
    assert "after 1 fetches from http://source0.test/model.bin" in str(given_up.error)


def test_one_source_gives_up_with_its_own_error() -> None:
    policy = AttemptPolicy(urls(1), LIMITS, WANTED, 0.0)
    assert isinstance(policy.next(0.0), Fetch)
    gone = OriginHTTPError("http://source0.test/model.bin: HTTP 404", 404)
    policy.source_error(0, gone, False)
    assert policy.next(0.0) == GiveUp(gone)


def test_mirrors_are_tried_in_turn_and_named_when_all_fail() -> None:
    policy = AttemptPolicy(urls(3), AttemptLimits(attempts=2, deadline=30.0), WANTED, 0.0)
    assert policy.next(0.0) == Fetch(0, 10.0)
    policy.source_error(0, OriginHTTPError("http://source0.test/model.bin: HTTP 404", 404), False)
    assert policy.next(1.0) == Fetch(1, 14.5)  # no pause: another source is there
    policy.no_answer(1)
    assert policy.next(15.5) == Fetch(2, 14.5)
    policy.source_error(2, OriginUnreachable("http://source2.test/model.bin: reset"), True)
    given_up = policy.next(16.0)
    assert isinstance(given_up, GiveUp)
    assert str(given_up.error) == (
        "block 3 of model.bin: http://source0.test/model.bin: HTTP 404; "
        "http://source1.test/model.bin: no answer within 14.5s; "
        "http://source2.test/model.bin: reset"
    )


def test_after_every_source_the_least_asked_usable_one_goes_next() -> None:
    policy = AttemptPolicy(urls(3), AttemptLimits(attempts=6), WANTED, 0.0, draw=lambda: 0.0)
    assert policy.next(0.0) == Fetch(0, math.inf)
    policy.bad_copy(0, "b" * 64)
    assert policy.next(0.0) == Fetch(0, math.inf, no_cache=True)  # the re-ask, at once
    policy.bad_copy(0, "b" * 64)
    assert policy.next(0.0) == Fetch(1, math.inf)  # once re-asked, no more
    policy.source_error(1, OriginHTTPError("x: HTTP 403", 403), False)
    assert policy.next(0.0) == Fetch(2, math.inf)
    policy.source_error(2, OriginUnreachable("x: reset"), True)
    assert policy.next(0.0) == Wait(0.125)  # 2 failed: it is asked after a pause
    assert policy.next(0.125) == Fetch(2, math.inf)  # asked less often than 0
    policy.bad_copy(2, "b" * 64)
    assert policy.next(0.125) == Fetch(2, math.inf, no_cache=True)


def test_a_re_ask_is_not_made_when_its_attempt_is_owed_to_a_source_not_asked_yet() -> None:
    policy = AttemptPolicy(urls(2), AttemptLimits(attempts=2), WANTED, 0.0)
    assert policy.next(0.0) == Fetch(0, math.inf)
    policy.bad_copy(0, "b" * 64)
    assert policy.next(0.0) == Fetch(1, math.inf)
    policy.bad_copy(1, "b" * 64)
    assert isinstance(policy.next(0.0), GiveUp)


@pytest.mark.parametrize("unanswered", [False, True])
def test_the_deadline_says_what_the_last_attempt_was_doing(unanswered: bool) -> None:
    limits = AttemptLimits(attempts=10, deadline=1.0, first_delay=0.4, max_delay=0.4)
    policy = AttemptPolicy(urls(1), limits, WANTED, 0.0, draw=lambda: 1.0)
    assert policy.next(0.0) == Fetch(0, 1.0)
    policy.source_error(0, OriginUnreachable("http://source0.test/model.bin: timed out"), True)
    assert policy.next(0.3) == Wait(pytest.approx(0.4))
    assert policy.next(0.7) == Fetch(0, pytest.approx(0.3))
    if unanswered:
        policy.no_answer(0)
        why = (
            "attempt 2 had no complete answer by then; "
            "attempt 1 failed: http://source0.test/model.bin: timed out"
        )
    else:
        policy.source_error(0, OriginProtocolError("http://source0.test/model.bin: short"), True)
        why = "attempt 2 failed: http://source0.test/model.bin: short"
        assert isinstance(policy.next(0.9), Wait)  # cut to what is left of the deadline
    given_up = policy.next(1.0)
    assert isinstance(given_up, GiveUp) and isinstance(given_up.error, OriginUnreachable)
    assert str(given_up.error) == (
        f"block 3 of model.bin: no verified copy within 1s; gave up: {why}"
    )


def test_outcomes_must_answer_the_attempt_under_way() -> None:
    policy = AttemptPolicy(urls(2), LIMITS, WANTED, 0.0)
    with pytest.raises(RuntimeError):
        policy.bad_copy(0, "b" * 64)
    assert policy.next(0.0) == Fetch(0, 15.0)
    with pytest.raises(RuntimeError):
        policy.next(0.0)
    with pytest.raises(RuntimeError):
        policy.verified(1)
    with pytest.raises(ValueError):
        AttemptPolicy([], LIMITS, WANTED, 0.0)


@pytest.mark.parametrize("pause", [1, 2, 3, 6, 20, 5000])
def test_backoff_is_jittered_doubling_capped_and_honours_retry_after(pause: int) -> None:
    full = min(4.0, 0.25 * 2 ** min(pause - 1, 64))
    assert backoff(pause, 0.25, 4.0, None, 0.0) == full / 2
    assert backoff(pause, 0.25, 4.0, None, 1.0) == full
    assert backoff(pause, 0.25, 4.0, 0.0, 1.0) == full
    assert backoff(pause, 0.25, 4.0, 10.0, 0.5) == 10.0
    assert backoff(pause, 0.25, 4.0, 100.0, 0.5) == 16.0


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (OriginHTTPError("x", 503), True),
        (OriginHTTPError("x", 404), False),
        (OriginUnreachable("x"), True),
        (OriginProtocolError("x"), True),
        (SourceError("x"), False),
    ],
)
def test_what_is_worth_asking_again(error: SourceError, retryable: bool) -> None:
    assert is_retryable(error) is retryable
