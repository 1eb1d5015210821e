"""One file read once into a ring of buffers by two threads that each consume every chunk in order.

Manifest build hashes each byte twice, on two threads: once for its block's digest, once for
the whole-file digest. Copying the file into memory is the rest of the work; if one thread did
all of it, that thread would bound the speed. So both read: chunk ``i`` goes into buffer
``i % len(buffers)``, even chunks are read by stream 0 and odd ones by stream 1, each reading
its next chunks ahead as soon as both streams are done with the buffer they go into.

Both streams see exactly the same chunks: the file ends at the first chunk read short, even
if a later chunk, read at the same time by the other thread, found bytes that were appended.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

STREAMS = 2


class Abandoned(Exception):
    """The other stream failed; its own exception says why."""


def read_full_at(fd: int, view: memoryview, offset: int) -> int:
    """Bytes read into ``view`` from ``offset``: all of it, or fewer only at the end of the file.

    A read may return fewer bytes before the end too; stopping there would end the file early.
    """
    filled = 0
    while filled < len(view):
        count = os.preadv(fd, [view[filled:]], offset + filled)
        if not count:
            break
        filled += count
    return filled


class SharedReads:
    """The chunks of the file open as ``fd``, for two streams (0 and 1) on two threads."""

    def __init__(self, fd: int, buffers: list[memoryview]) -> None:
        self._fd = fd
        self._buffers = buffers
        self._chunk_size = len(buffers[0])
        self._changed = threading.Condition()
        # Guarded by _changed:
        self._held: list[tuple[int, int] | None] = [None] * len(buffers)  # (chunk, length)
        self._consumed = [0] * STREAMS  # chunks each stream is done with
        self._end: int | None = None  # the first chunk past the end of the file, once met
        self._failed = False
        # Each stream's own: the next chunk it reads.
        self._next_read = list(range(STREAMS))

    def chunks(self, stream: int) -> Iterator[memoryview]:
        """Every chunk of the file in order; each is valid until the next is asked for."""
        index = 0
        while True:
            self._read_ahead(stream, index)
            chunk = self._wait_for(index)
            if chunk is None:
                return
            yield chunk
            with self._changed:
                self._consumed[stream] = index + 1
                self._changed.notify_all()
            index += 1

    def abandon(self) -> None:
        """Stop both streams: the one still running raises ``Abandoned``."""
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    def _read_ahead(self, stream: int, index: int) -> None:
        """Read this stream's chunks up to ``len(buffers)`` ahead of ``index`` whose buffers are
        free; wait for a buffer only for the chunk needed now."""
        depth = len(self._buffers)
        while (target := self._next_read[stream]) < index + depth:
            with self._changed:
                if self._end is not None and target >= self._end:
                    return

                def free() -> bool:
                    return self._failed or min(self._consumed) > target - depth

                if not free():
                    if target > index:
                        return
                    # The other stream is depth chunks behind and reading its own: wait.
                    self._changed.wait_for(free)
                if self._failed:
                    raise Abandoned
            buffer = self._buffers[target % depth]
            length = read_full_at(self._fd, buffer, target * self._chunk_size)
            with self._changed:
                self._held[target % depth] = (target, length)
                if length < self._chunk_size:
                    ends_at = target + 1 if length else target
                    self._end = ends_at if self._end is None else min(self._end, ends_at)
                self._changed.notify_all()
            self._next_read[stream] = target + STREAMS

    def _wait_for(self, index: int) -> memoryview | None:
        slot = index % len(self._buffers)

        def ready() -> bool:
            held = self._held[slot]
            return (
                self._failed
                or (self._end is not None and index >= self._end)
                or (held is not None and held[0] == index)
            )

        with self._changed:
            self._changed.wait_for(ready)
            if self._failed:
                raise Abandoned
            if self._end is not None and index >= self._end:
                return None
            held = self._held[slot]
            assert held is not None
            return self._buffers[slot][: held[1]]
