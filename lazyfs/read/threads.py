"""Blocking calls from the event loop, for the read path's many small ones.

``trio.to_thread.run_sync`` names the worker thread (a ctypes call into pthread) before and
after every call; for a warm read's ``pread`` of one piece that naming costs as much as the
read. This runs the call in trio's same thread cache, unnamed, with the same semantics as
``to_thread.run_sync`` without ``abandon_on_cancel``: the limiter bounds the threads, and a
cancelled caller still waits for the call to return (the call owns its arguments until then).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

if TYPE_CHECKING:
    import outcome

T = TypeVar("T")


async def run_in_thread(
    function: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None
) -> T:
    await trio.lowlevel.checkpoint_if_cancelled()
    chosen = limiter if limiter is not None else trio.to_thread.current_default_thread_limiter()
    async with chosen:
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[T]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(functools.partial(function, *args), deliver)

        def refuse_abort(_: object) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED

        # The task is woken with the call's outcome, which comes back unwrapped (or raised).
        result: T = await trio.lowlevel.wait_task_rescheduled(refuse_abort)
    return result
