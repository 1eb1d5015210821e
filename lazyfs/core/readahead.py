"""Sequential-read detection, sans-I/O: how many blocks to fetch ahead of a reader.

The window starts at zero, so a random read costs only the blocks it touches. Each time a
reader moves on to the next block the window doubles, up to a bound; a jump resets it. The
kernel sends readahead requests a little out of order, so a read one block behind the last
one does not count as a jump.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class ReadPattern:
    """The read history of one open file; it stands for that open file (hashed by identity)
    where read-ahead counts what each holds."""

    last_block: int = -1
    window: int = 0

    def record(self, first: int, last: int, max_window: int) -> range:
        """Note a read of blocks ``first..last``; return the block indices to fetch ahead
        (possibly past the end of the file: the caller clips)."""
        sequential = self.last_block - 1 <= first <= self.last_block + 1
        if not sequential:
            self.window = 0
        elif last > self.last_block:
            self.window = min(max(1, 2 * self.window), max_window)
        self.last_block = max(last, self.last_block) if sequential else last
        return range(last + 1, last + 1 + self.window)
