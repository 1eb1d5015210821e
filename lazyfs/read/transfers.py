"""Transfer slots, demand first: a reader's fetch never waits behind read-ahead.

The sources allow a few transfers at once (``HttpOrigin``: one worker thread and connection
each). Read-ahead may use all but one of them, so a demand fetch finds a free slot unless other
demand fetches hold them; and when slots are scarce, a freed one goes to a waiting demand
fetch before any read-ahead. A read-ahead fetch that a reader comes to wait for is promoted
(``promote``): from then on it waits as a demand fetch would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio


@dataclass(eq=False)
class Ticket:
    """One fetch's place in the queue for a slot."""

    background: bool = False


DEMAND = Ticket()


class TransferGate:
    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        # With one slot read-ahead must still run; demand fetches then only go first.
        self.background_slots = max(1, self.slots - 1)
        self.busy = 0
        self.background_busy = 0
        self._waiting: set[Ticket] = set()
        self._changed = trio.Event()

    @asynccontextmanager
    async def slot(self, ticket: Ticket = DEMAND) -> AsyncIterator[None]:
        """Hold a transfer slot for the body of the ``async with``."""
        # DEMAND is shared by every demand fetch: the queue needs one ticket per waiter.
        mine = Ticket(ticket.background) if ticket is DEMAND else ticket
        self._waiting.add(mine)
        try:
            while not self._may_start(mine):
                await self._changed.wait()
        finally:
            self._waiting.discard(mine)
            self._wake()  # our leaving may let a read-ahead behind us start
        background = mine.background
        self.busy += 1
        self.background_busy += background
        try:
            yield
        finally:
            self.busy -= 1
            self.background_busy -= background
            self._wake()

    async def room(self, ticket: Ticket) -> None:
        """Wait until a fetch at ``ticket``'s place could start now (it may still have to
        wait at ``slot``: this reserves nothing)."""
        while not self._may_start(ticket):
            await self._changed.wait()

    def promote(self, ticket: Ticket) -> None:
        """A reader now waits for this fetch: it goes first from now on."""
        if ticket.background:
            ticket.background = False
            self._wake()

    def _may_start(self, ticket: Ticket) -> bool:
        if self.busy >= self.slots:
            return False
        if not ticket.background:
            return True
        if self.background_busy >= self.background_slots:
            return False
        return all(waiting.background for waiting in self._waiting)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
