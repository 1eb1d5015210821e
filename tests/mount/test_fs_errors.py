"""The FUSE boundary: every failure below it becomes an errno for that request alone."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pyfuse3
import pytest
import trio
from pyfuse3 import FUSEError

from lazyfs.core.manifest import FileEntry, make_manifest
from lazyfs.core.namespace import ROOT_INODE, Tree
from lazyfs.daemon.fs import FUSE_HANDLERS, LazyFS, errors_as_errno
from lazyfs.errors import BlockIntegrityError, OriginUnreachable
from lazyfs.read.reader import BlockReader
from tests.mounts import Mounter, is_mounted, publish
from tests.origins import Origin
from tests.waiting import wait_until


@pytest.mark.parametrize(
    "error",
    [
        OriginUnreachable("http://origin/x: timed out"),
        BlockIntegrityError("x", 3, "http://origin/x", "a" * 64, "b" * 64, 2),
        ValueError("a bug below the FUSE boundary"),
        KeyError("another"),
    ],
)
def test_errors_become_eio_and_are_logged(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(FUSEError) as raised, errors_as_errno("read of x at 0+10"):
        raise error
    assert raised.value.errno == errno.EIO
    assert "read of x at 0+10 failed" in caplog.text


def test_fuse_errors_pass_through() -> None:
    with pytest.raises(FUSEError) as raised, errors_as_errno("lookup"):
        raise FUSEError(errno.ENOENT)
    assert raised.value.errno == errno.ENOENT


# -- every FUSE operation goes through the boundary -------------------------------------------

CTX = pyfuse3.RequestContext()
ROOT = pyfuse3.InodeT(ROOT_INODE)
BLOCK = 64 * 1024


def entry(path: str, data: bytes) -> FileEntry:
    blocks = tuple(
        hashlib.sha256(data[i : i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)
    )
    return FileEntry(path, len(data), False, hashlib.sha256(data).hexdigest(), blocks)


class FakeReader:
    """What LazyFS asks of its BlockReader: the block size, opens, and reads."""

    block_size = BLOCK

    def __init__(self) -> None:
        self.fails_with: BaseException | None = None

    def opened(self, entry: FileEntry) -> None:
        return None

    async def read(self, entry: FileEntry, offset: int, size: int, pattern: object) -> bytes:
        if self.fails_with is not None:
            raise self.fails_with
        if size == 0:
            await trio.sleep_forever()  # a read the kernel gives up on (interrupted)
        return b"x" * min(size, entry.size - offset)


class Exploding(dict[Any, Any]):
    """A mapping with a bug in it: every look raises."""

    def _bug(self, *args: object) -> Any:
        raise RuntimeError("a bug below the FUSE boundary")

    get = __getitem__ = __contains__ = __len__ = __iter__ = values = items = pop = _bug


def make_fs() -> tuple[LazyFS, FakeReader]:
    manifest = make_manifest(BLOCK, [entry("a.txt", b"a\n"), entry("sub/b.txt", b"b\n")])
    reader = FakeReader()
    return LazyFS(Tree(manifest), cast(BlockReader, reader), 0.0), reader


def inode_of(fs: LazyFS, path: str) -> pyfuse3.InodeT:
    inode = ROOT_INODE
    for name in path.split("/"):
        node = fs.tree.lookup(inode, name)
        assert node is not None
        inode = node.inode
    return pyfuse3.InodeT(inode)


# Each operation LazyFS answers, called as pyfuse3 calls it, on a file or directory whose
# tree (or handle table) then breaks; ``handles`` are opened before the break.
Call = Callable[[LazyFS, pyfuse3.InodeT, pyfuse3.FileHandleT], Awaitable[object]]
OPERATIONS: dict[str, tuple[str, Call]] = {
    "lookup": ("sub", lambda fs, ino, fh: fs.lookup(ino, b"b.txt", CTX)),
    "getattr": ("sub", lambda fs, ino, fh: fs.getattr(ino, CTX)),
    "access": ("a.txt", lambda fs, ino, fh: fs.access(ino, pyfuse3.ModeT(os.R_OK), CTX)),
    "opendir": ("sub", lambda fs, ino, fh: fs.opendir(ino, CTX)),
    "readdir": ("sub", lambda fs, ino, fh: fs.readdir(fh, 0, cast(pyfuse3.ReaddirToken, None))),
    "open": ("a.txt", lambda fs, ino, fh: fs.open(ino, os.O_RDONLY, CTX)),
    "read": ("a.txt", lambda fs, ino, fh: fs.read(fh, 0, 2)),
    "getxattr": ("a.txt", lambda fs, ino, fh: fs.getxattr(ino, b"user.x", CTX)),
    "listxattr": ("a.txt", lambda fs, ino, fh: fs.listxattr(ino, CTX)),
    "statfs": ("a.txt", lambda fs, ino, fh: fs.statfs(CTX)),
}


async def handle_for(fs: LazyFS, inode: pyfuse3.InodeT) -> pyfuse3.FileHandleT:
    if fs.tree.nodes[inode].is_dir:
        return await fs.opendir(inode, CTX)
    return (await fs.open(inode, os.O_RDONLY, CTX)).fh


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_bug_in_any_operation_fails_that_request_with_eio(
    operation: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, call = OPERATIONS[operation]
    fs, _ = make_fs()

    async def main() -> None:
        inode = inode_of(fs, path)
        handle = await handle_for(fs, inode)
        fs.tree.nodes = Exploding()
        with pytest.raises(FUSEError) as raised:
            await call(fs, inode, handle)
        assert raised.value.errno == errno.EIO

    trio.run(main)
    assert f"{operation}(" in caplog.text and "a lazyfs bug" in caplog.text
    assert "RuntimeError: a bug below the FUSE boundary" in caplog.text  # the traceback


def test_a_bug_in_release_fails_that_request_with_eio(caplog: pytest.LogCaptureFixture) -> None:
    fs, _ = make_fs()

    async def main() -> None:
        handle = await handle_for(fs, inode_of(fs, "a.txt"))
        fs._handles = Exploding()
        with pytest.raises(FUSEError) as raised:
            await fs.release(handle)
        assert raised.value.errno == errno.EIO

    trio.run(main)
    assert "release(" in caplog.text and "a lazyfs bug" in caplog.text


def test_every_request_handler_is_behind_the_boundary() -> None:
    handlers = FUSE_HANDLERS & {
        name for klass in LazyFS.__mro__ if klass is not pyfuse3.Operations for name in vars(klass)
    }
    assert {"lookup", "getattr", "readdir", "read", "open", "statfs", "release"} <= handlers
    for name in handlers:
        assert hasattr(getattr(LazyFS, name), "__wrapped__"), name


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda fs: fs.getattr(pyfuse3.InodeT(999), CTX), errno.ENOENT),
        (lambda fs: fs.lookup(ROOT, b"missing", CTX), errno.ENOENT),
        (lambda fs: fs.opendir(inode_of(fs, "a.txt"), CTX), errno.ENOTDIR),
        (lambda fs: fs.open(inode_of(fs, "sub"), os.O_RDONLY, CTX), errno.EISDIR),
        (lambda fs: fs.open(inode_of(fs, "a.txt"), os.O_WRONLY, CTX), errno.EROFS),
        (lambda fs: fs.read(pyfuse3.FileHandleT(999), 0, 1), errno.EBADF),
        (lambda fs: fs.getxattr(ROOT, b"user.x", CTX), pyfuse3.ENOATTR),
        (lambda fs: fs.unlink(ROOT, b"a.txt", CTX), errno.EROFS),
    ],
)
def test_fuse_errors_pass_the_boundary_unchanged(
    call: Callable[[LazyFS], Awaitable[object]], expected: int, caplog: pytest.LogCaptureFixture
) -> None:
    fs, _ = make_fs()

    async def main() -> None:
        with pytest.raises(FUSEError) as raised:
            await call(fs)
        assert raised.value.errno == expected

    trio.run(main)
    assert "failed" not in caplog.text


def test_a_lazyfs_error_in_a_read_is_eio_naming_the_file(caplog: pytest.LogCaptureFixture) -> None:
    fs, reader = make_fs()

    async def main() -> None:
        handle = await handle_for(fs, inode_of(fs, "a.txt"))
        assert await fs.read(handle, 0, 2) == b"xx"
        reader.fails_with = OriginUnreachable("http://origin/a.txt: timed out")
        with pytest.raises(FUSEError) as raised:
            await fs.read(handle, 0, 2)
        assert raised.value.errno == errno.EIO

    trio.run(main)
    assert "read of a.txt at 0+2 failed: http://origin/a.txt: timed out" in caplog.text
    assert "Traceback" not in caplog.text


def test_cancellation_passes_the_boundary() -> None:
    fs, _ = make_fs()

    async def main() -> bool:
        handle = await handle_for(fs, inode_of(fs, "a.txt"))
        with trio.move_on_after(0.01) as scope:
            await fs.read(handle, 0, 0)  # the fake reader waits forever for this one
        return scope.cancelled_caught

    assert trio.run(main)


# -- in a real mount ---------------------------------------------------------------------------

# The mount daemon (`lazyfs mount --foreground`) with bugs planted for some names: a lookup of
# "lookup-bug" raises, and so does building the attributes of any node named "attributes-bug".
BUGGY_DAEMON = """
import sys
from lazyfs.core import namespace as tree
from lazyfs.daemon import fs
from lazyfs.cli.main import main

lookup, attributes = tree.Tree.lookup, fs.LazyFS._attributes

def buggy_lookup(self, parent, name):
    if name == "lookup-bug":
        raise RuntimeError("planted bug in lookup")
    return lookup(self, parent, name)

def buggy_attributes(self, node):
    if node.name == "attributes-bug":
        raise KeyError("planted bug in attributes")
    return attributes(self, node)

tree.Tree.lookup, fs.LazyFS._attributes = buggy_lookup, buggy_attributes
sys.exit(main())
"""


def test_bugs_in_a_real_mount_fail_their_requests_and_the_mount_lives_on(
    origin: Origin, mounter: Mounter, tmp_path: Path
) -> None:
    (origin.root / "a.txt").write_text("a\n")
    (origin.root / "sub").mkdir()
    (origin.root / "sub" / "attributes-bug").write_text("b\n")
    (origin.root / "sub" / "fine.txt").write_text("c\n")
    publish(origin.root)
    target = mounter.new_mountpoint()
    log = tmp_path / "daemon.log"
    command = [sys.executable, "-c", BUGGY_DAEMON, "mount", origin.url, str(target)]
    command += ["--foreground", "--cache-dir", str(mounter.cache_dir()), "--log-file", str(log)]
    daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: is_mounted(target) or daemon.poll() is not None, 60)
        assert is_mounted(target), log.read_text()
        mounter.mounted.append(target)  # unmounted by the fixture whatever happens next

        def fails_with_eio(call: Callable[[], object]) -> None:
            with pytest.raises(OSError) as raised:
                call()
            assert raised.value.errno == errno.EIO

        fails_with_eio(lambda: (target / "lookup-bug").stat())
        fails_with_eio(lambda: (target / "sub" / "attributes-bug").stat())
        fails_with_eio(lambda: os.listdir(target / "sub"))
        # Each bug failed only its own request: the mount serves everything else.
        assert daemon.poll() is None and is_mounted(target)
        assert sorted(os.listdir(target)) == ["a.txt", "sub"]
        assert (target / "a.txt").read_text() == "a\n"
        assert (target / "sub" / "fine.txt").read_text() == "c\n"
        text = log.read_text()
        assert "RuntimeError: planted bug in lookup" in text
        assert "KeyError: 'planted bug in attributes'" in text
        assert text.count("a lazyfs bug") >= 3
    finally:
        mounter.cleanup()
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait(30)
