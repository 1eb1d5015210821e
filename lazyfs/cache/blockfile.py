"""How a block's file is written: with O_DIRECT, around the page cache.

A block written through the page cache is kept twice in memory: once in the mount's own page
cache (the kernel keeps what it served through FUSE) and once as the cache file's pages. The
copy into fresh page-cache pages is also the costliest step of a cold read here: a profile of
the daemon during a cold 1 GiB read put half its CPU time in the kernel's copy into new
page-cache folios (``copy_folio_from_iter_atomic``). Written with O_DIRECT, the block goes
from one reused, page-aligned staging buffer straight to the disk, and the page cache is left
to what readers use. Where O_DIRECT is refused (a filesystem without it), or for a file's
unaligned tail, the write goes through the page cache as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY
from typing_extensions import Buffer

from lazyfs.core.manifest import MAX_BLOCK_SIZE

ALIGNMENT = 4096  # of the buffer's address, the offset and the length, for O_DIRECT
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class BlockValue:
    """A verified block handed to ``BlockDisk``, to be written as its own file."""

    def __init__(self, block: Buffer) -> None:
        self.view = memoryview(block).cast("B")


class BlockDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache is untyped
    """diskcache's Disk, writing ``BlockValue``s with ``write_block_file``; everything else
    (reads, other values, names, removal) as diskcache does it."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, BlockValue):
            return super().store(value, read, key)
        filename, full_path = self.filename(key, value)
        write_block_file(full_path, value.view)
        return len(value.view), MODE_BINARY, filename, None


class _StagingBuffers:
    """Page-aligned buffers for O_DIRECT writes, reused: as many as writes ever ran at once
    (one writer, plus the odd prefetch writing beside it)."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[mmap.mmap]:
        with self._lock:
            buffer = self._free.pop() if self._free else mmap.mmap(-1, MAX_BLOCK_SIZE)
        try:
            yield buffer
        finally:
            with self._lock:
                self._free.append(buffer)


_staging = _StagingBuffers()
_direct_refused = threading.Event()


def write_block_file(path: str, view: memoryview) -> None:
    """Create ``path`` (it must not exist; its directory is created if missing) holding
    exactly ``view``."""
    try:
        fd = _create(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = _create(path)
    try:
        written = 0
        aligned = len(view) - len(view) % ALIGNMENT
        if aligned and not _direct_refused.is_set():
            written = _write_direct(fd, view[:aligned])
        if written < len(view):
            _leave_direct(fd)
            _write_all(fd, view[written:])
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def _create(path: str) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    return os.open(path, flags, 0o600)


def _write_direct(fd: int, view: memoryview) -> int:
    """Write ``view`` (a multiple of ALIGNMENT long) with O_DIRECT; how much was written
    (0 if this filesystem refuses O_DIRECT: the caller writes it all the usual way)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | _O_DIRECT)
    except OSError:
        _direct_refused.set()
        return 0
    with _staging.borrowed() as buffer, memoryview(buffer) as staging:
        try:
            staging[: len(view)] = view
            return _write_all(fd, staging[: len(view)])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # Accepted by fcntl, refused by the filesystem on write (tmpfs on older kernels).
            _direct_refused.set()
            os.lseek(fd, 0, os.SEEK_SET)
            return 0


def _leave_direct(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & _O_DIRECT:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_O_DIRECT)


def _write_all(fd: int, view: memoryview) -> int:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
    return done
