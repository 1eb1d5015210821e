"""Waiting in tests: poll for what the test waits for, within a deadline; never sleep a fixed
time and hope it was long enough (too short on a loaded machine, too long everywhere else).

    assert wait_until(lambda: server.closed == 1)
    assert await wait_until_async(lambda: not reader.busy())   # inside trio
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

TIMEOUT = 10.0  # seconds: only ever reached when what the test waits for never happens
INTERVAL = 0.01


def wait_until(
    predicate: Callable[[], object], timeout: float = TIMEOUT, interval: float = INTERVAL
) -> bool:
    """Whether ``predicate()`` came true within ``timeout`` seconds; it is asked once more at
    the deadline, so a slow predicate still gets its last look."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


async def wait_until_async(
    predicate: Callable[[], object], timeout: float = TIMEOUT, interval: float = INTERVAL
) -> bool:
    """``wait_until`` inside trio: the other tasks run while it waits."""
    deadline = trio.current_time() + timeout
    while not predicate():
        if trio.current_time() >= deadline:
            return False
        await trio.sleep(interval)
    return True
