"""The Python-FUSE limit: a minimal pyfuse3 read-only filesystem that shows one local file and
answers every read with ``os.pread`` on it, nothing else (no cache, no hashing, no threads).

What lazyfs's warm path is measured against: the same FUSE library, the same mount options and
the same 1 MiB kernel reads as lazyfs (read_ahead_kb raised to 1024 after the handshake, as
lazyfs/daemon/lifecycle.py does), so the difference is lazyfs's own work.

    python scripts/benchmark/passthrough.py FILE MOUNTPOINT

Runs in the foreground until unmounted (``fusermount3 -u MOUNTPOINT``) or sent SIGTERM/SIGINT.
Standalone on purpose: it imports nothing of lazyfs or of the benchmark.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pyfuse3
import trio

FILE_INODE = pyfuse3.InodeT(pyfuse3.ROOT_INODE + 1)
KERNEL_READAHEAD_KB = 1024
CACHE_TIMEOUT = 24 * 3600.0  # what lazyfs gives the kernel: nothing here ever changes


class Passthrough(pyfuse3.Operations):
    def __init__(self, source: Path) -> None:
        super().__init__()
        self.fd = os.open(source, os.O_RDONLY)
        self.name = source.name.encode()
        self.size = os.fstat(self.fd).st_size
        self.initialized = trio.Event()

    def init(self) -> None:
        self.initialized.set()

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = pyfuse3.InodeT(inode)
        if inode == pyfuse3.ROOT_INODE:
            attributes.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o555)
            attributes.st_nlink = 2
        elif inode == FILE_INODE:
            attributes.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o444)
            attributes.st_nlink = 1
            attributes.st_size = self.size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attributes.st_blksize = 4 * 2**20
        attributes.st_blocks = (attributes.st_size + 511) // 512
        attributes.attr_timeout = attributes.entry_timeout = CACHE_TIMEOUT
        return attributes

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._attributes(inode)

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != self.name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(FILE_INODE)

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, self.name, self._attributes(FILE_INODE), 1)

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=True)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)


def device_of(mountpoint: bytes) -> str | None:
    """The device ("major:minor") of the mount at ``mountpoint``, from mountinfo: statting
    our own mount point from the thread that answers its requests would wait forever."""
    found = None
    with open("/proc/self/mountinfo", "rb") as mounts:
        for line in mounts:
            fields = line.split(b" ")
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
            if point == mountpoint:
                found = fields[2].decode()
    return found


async def raise_readahead(operations: Passthrough, mountpoint: bytes) -> None:
    await operations.initialized.wait()
    await trio.sleep(0.01)  # the handshake (which sets read_ahead_kb) is answered once we yield
    device = device_of(mountpoint)
    if device is None:
        print(f"passthrough: {mountpoint.decode()} not in mountinfo", file=sys.stderr)
        return
    setting = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    try:
        setting.write_text(f"{KERNEL_READAHEAD_KB}\n")
    except OSError as exc:
        print(f"passthrough: {setting}: {exc.strerror}", file=sys.stderr)


async def serve(operations: Passthrough, mountpoint: bytes) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raise_readahead, operations, mountpoint)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            nursery.start_soon(stop_on_signal, signals)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()


async def stop_on_signal(signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        pyfuse3.terminate()
        return


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: passthrough.py FILE MOUNTPOINT", file=sys.stderr)
        return 2
    source, mountpoint = Path(argv[0]), Path(argv[1]).resolve()
    try:
        operations = Passthrough(source)
    except OSError as exc:
        print(f"passthrough: {source}: {exc.strerror}", file=sys.stderr)
        return 1
    # The options lazyfs mounts with (lazyfs/daemon/lifecycle.py).
    options = {"ro", "default_permissions", "subtype=passthrough", "fsname=passthrough"}
    try:
        pyfuse3.init(operations, str(mountpoint), options)
    except RuntimeError as exc:
        print(f"passthrough: cannot mount at {mountpoint}: {exc}", file=sys.stderr)
        return 1
    try:
        trio.run(serve, operations, os.fsencode(mountpoint))
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
