"""Large buffers, reused once nothing refers to them any more: block bodies as they arrive,
pieces of stored blocks as they are read back."""

from __future__ import annotations

import sys
import threading


class BufferPool:
    """Block buffers, reused once nothing refers to them any more.

    A fresh 4 MiB buffer costs a thousand page faults and a zero fill; reusing one costs
    neither. A buffer is free when the pool holds the only reference: blocks in memory,
    replies still being sent to the kernel (memoryviews) and cache writes all hold one.
    """

    def __init__(self, max_buffers: int = 64) -> None:
        self.max_buffers = max_buffers
        self._buffers: list[bytearray] = []
        self._lock = threading.Lock()
        self._free_count = _calibrate_free_refcount()

    def take(self, size: int) -> bytearray:
        with self._lock:
            free = self._free_positions()
            for position in free:
                if len(self._buffers[position]) == size:
                    return self._buffers[position]
            buffer = bytearray(size)
            if self._free_count is None:
                return buffer
            if len(self._buffers) < self.max_buffers:
                self._buffers.append(buffer)
            elif free:
                # Full of free buffers of other sizes (short last blocks): make room.
                self._buffers[free[0]] = buffer
            return buffer

    def _free_positions(self) -> list[int]:
        if self._free_count is None:
            return []
        counts = _reference_counts(self._buffers)
        return [position for position, count in enumerate(counts) if count == self._free_count]


def _reference_counts(buffers: list[bytearray]) -> list[int]:
    return [sys.getrefcount(buffer) for buffer in buffers]


def _calibrate_free_refcount() -> int | None:
    """The reference count ``_reference_counts`` sees for a buffer only the pool holds.

    Measured with the same code that later decides, because what getrefcount reports for
    such a buffer differs between interpreter versions. If a buffer held by one more owner
    cannot be told apart, the pool never reuses anything.
    """
    free = _reference_counts([bytearray(1)])[0]
    held_elsewhere = bytearray(1)
    held = _reference_counts([held_elsewhere])[0]
    return free if held == free + 1 else None
