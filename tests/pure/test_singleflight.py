"""SingleFlight on its own: one loader per key, its result or error for every waiter, and a
cancelled loader handing over to a waiter. Component tier: trio only, ordered by events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from lazyfs.errors import LazyfsError, OriginUnreachable
from lazyfs.read.singleflight import SingleFlight

TIMEOUT = 10  # seconds: only ever reached by a hang


class Loader:
    """A load that waits for ``gate``; its first call raises ``first`` if given."""

    def __init__(self, first: BaseException | None = None) -> None:
        self.gate = trio.Event()
        self.first = first
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        await self.gate.wait()
        if self.first is not None and self.calls == 1:
            raise self.first
        return "value"


async def until_waiting(flights: SingleFlight[str, str], key: str, count: int) -> None:
    while flights.waiting(key) < count:
        await trio.sleep(0.001)


def run_beside(
    flights: SingleFlight[str, str],
    load: Loader,
    first: Callable[[], Awaitable[object]],
    waiters: int,
    between: Callable[[], None] = lambda: None,
) -> list[object]:
    """``first`` starts loading; then ``waiters`` tasks ask for the same key; once they all
    wait, ``between()`` runs and the load is let through. What each waiter got, in order."""
    outcomes: list[object] = []

    async def waiter() -> None:
        try:
            outcomes.append(await flights.run("k", load))
        except LazyfsError as exc:
            outcomes.append(exc)

    async def main() -> None:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)
                await trio.testing.wait_all_tasks_blocked()
                for _ in range(waiters):
                    nursery.start_soon(waiter)
                await until_waiting(flights, "k", waiters)
                between()
                await trio.testing.wait_all_tasks_blocked()
                load.gate.set()

    trio.run(main)
    return outcomes


def test_waiters_get_the_loaders_result_even_when_nothing_kept_it() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    load = Loader()
    results: list[str] = []

    async def first() -> None:
        results.append(await flights.run("k", load))

    assert run_beside(flights, load, first, 4) == ["value"] * 4
    assert results == ["value"] and load.calls == 1
    assert len(flights) == 0 and "k" not in flights


def test_waiters_get_the_loaders_error_and_the_next_call_loads_again() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    load = Loader(OriginUnreachable("down"))

    async def first() -> None:
        with pytest.raises(OriginUnreachable):
            await flights.run("k", load)

    outcomes = run_beside(flights, load, first, 2)
    assert [type(outcome) for outcome in outcomes] == [OriginUnreachable] * 2
    assert load.calls == 1
    assert trio.run(flights.run, "k", load) == "value"
    assert load.calls == 2


def test_a_known_value_costs_no_load() -> None:
    flights: SingleFlight[str, str] = SingleFlight()

    async def load() -> str:
        raise AssertionError("not loaded")

    assert trio.run(lambda: flights.run("k", load, lambda: "held")) == "held"


def test_a_cancelled_loader_hands_over_to_a_waiter() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    load = Loader()
    owner = trio.CancelScope()

    async def first() -> None:
        with owner:
            await flights.run("k", load)

    assert run_beside(flights, load, first, 1, owner.cancel) == ["value"]
    assert owner.cancelled_caught and load.calls == 2


def test_a_bug_in_the_loader_is_not_handed_to_waiters() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    load = Loader(ValueError("a bug"))

    async def first() -> None:
        with pytest.raises(ValueError, match="a bug"):
            await flights.run("k", load)

    assert run_beside(flights, load, first, 1) == ["value"]
    assert load.calls == 2
