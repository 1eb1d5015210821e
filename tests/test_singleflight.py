"""SingleFlight on its own: one loader per key, its result or error for every waiter, and a
cancelled loader handing over to a waiter. Component tier: trio only, ordered by events."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest
import trio
import trio.testing

from lazyfs.errors import LazyfsError, OriginUnreachable
from lazyfs.read.singleflight import SingleFlight

TIMEOUT = 10  # seconds: only ever reached by a hang


async def until_waiting(flights: SingleFlight[str, str], key: str, count: int) -> None:
    while flights.waiting(key) < count:
        await trio.sleep(0.001)


def test_waiters_get_the_loaders_result_even_when_nothing_kept_it() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    gate = trio.Event()
    loads: list[str] = []
    results: list[str] = []

    async def load() -> str:
        loads.append("k")
        await gate.wait()
        return "value"

    async def main() -> None:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(lambda: _append(results, flights.run("k", load)))
                await until_waiting(flights, "k", 4)
                gate.set()

    trio.run(main)
    assert loads == ["k"] and results == ["value"] * 5
    assert len(flights) == 0 and "k" not in flights


def test_waiters_get_the_loaders_error_and_the_next_call_loads_again() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    gate = trio.Event()
    calls = 0
    outcomes: list[object] = []

    async def load() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        if calls == 1:
            raise OriginUnreachable("down")
        return "value"

    async def one() -> None:
        try:
            outcomes.append(await flights.run("k", load))
        except LazyfsError as exc:
            outcomes.append(exc)

    async def main() -> None:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(one)
                await until_waiting(flights, "k", 2)
                gate.set()
            assert await flights.run("k", load) == "value"

    trio.run(main)
    assert [type(outcome) for outcome in outcomes] == [OriginUnreachable] * 3
    assert calls == 2


def test_a_known_value_costs_no_load() -> None:
    flights: SingleFlight[str, str] = SingleFlight()

    async def load() -> str:
        raise AssertionError("not loaded")

    assert trio.run(lambda: flights.run("k", load, lambda: "held")) == "held"


def test_a_cancelled_loader_hands_over_to_a_waiter() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    gate = trio.Event()
    loaders: list[str] = []
    results: list[str] = []

    async def load(who: str) -> str:
        loaders.append(who)
        await gate.wait()
        return who

    async def main() -> None:
        first = trio.CancelScope()

        async def owner() -> None:
            with first:
                await flights.run("k", lambda: load("owner"))

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(owner)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(lambda: _append(results, flights.run("k", lambda: load("w"))))
                await until_waiting(flights, "k", 1)
                first.cancel()
                await trio.testing.wait_all_tasks_blocked()
                gate.set()

    trio.run(main)
    assert loaders == ["owner", "w"] and results == ["w"]


def test_a_bug_in_the_loader_is_not_handed_to_waiters() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    gate = trio.Event()
    calls = 0
    results: list[str] = []

    async def load() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        if calls == 1:
            raise ValueError("a bug")
        return "value"

    async def buggy_owner() -> None:
        with pytest.raises(ValueError, match="a bug"):
            await flights.run("k", load)

    async def main() -> None:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(buggy_owner)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(lambda: _append(results, flights.run("k", load)))
                await until_waiting(flights, "k", 1)
                gate.set()

    trio.run(main)
    assert results == ["value"] and calls == 2


async def _append(results: list[str], value: Awaitable[str]) -> None:
    results.append(await value)
