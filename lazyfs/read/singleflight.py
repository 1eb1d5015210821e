"""One loader per key; everyone else who wants the key waits for its result or its error.

Concurrent readers of one block cost one fetch, and concurrent first reads of a hub file one
stream. Only the project's own errors are handed to the waiters: if the loader is cancelled
(its FUSE request interrupted) or hits a bug, a waiter takes over and loads the key itself,
so nobody hangs on a load that nobody is doing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import trio

from lazyfs.errors import LazyfsError

K = TypeVar("K")
V = TypeVar("V")


@dataclass(eq=False)
class _Flight(Generic[V]):
    done: trio.Event = field(default_factory=trio.Event)
    loaded: bool = False
    result: V | None = None
    error: LazyfsError | None = None


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, _Flight[V]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        """Keys being loaded now."""
        return len(self._flights)

    def waiting(self, key: K) -> int:
        """How many tasks wait for the load of ``key`` under way (0 if none is)."""
        flight = self._flights.get(key)
        return 0 if flight is None else flight.done.statistics().tasks_waiting

    async def run(
        self,
        key: K,
        load: Callable[[], Awaitable[V]],
        known: Callable[[], V | None] = lambda: None,
    ) -> V:
        """``known()`` if it has the value, else the value of the one ``load()`` for ``key``:
        ours if nobody is loading it, theirs (or their error) if somebody is."""
        while True:
            found = known()
            if found is not None:
                return found
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.loaded:
                found = known()
                # What the loader kept may already be gone again (a small memory bound).
                return cast(V, flight.result) if found is None else found
            # Neither a result nor an error: the loader was cancelled; take over.
        flight = self._flights[key] = _Flight()
        try:
            flight.result = await load()
            flight.loaded = True
            return flight.result
        except LazyfsError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()
