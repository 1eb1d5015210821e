"""The FUSE operations: a read-only view of a manifest. The only module that raises FUSEError.

pyfuse3 ends its main loop, and so the mount for every reader, on any other exception. So
every request handler runs inside ``errors_as_errno``: a subclass of ``GuardedOperations``
has each of its handlers wrapped when the class is made, and no handler can be left out.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pyfuse3
import trio
from pyfuse3 import FUSEError
from typing_extensions import Buffer

from lazyfs.core.namespace import Node, Tree
from lazyfs.core.ownership import Ownership
from lazyfs.core.readahead import ReadPattern
from lazyfs.errors import LazyfsError
from lazyfs.read.reader import BlockReader

log = logging.getLogger(__name__)

# Content under a mount never changes (a new manifest is a new mount), so the kernel may keep
# names, attributes and pages for as long as it likes.
CACHE_TIMEOUT = 24 * 3600.0
STATFS_BLOCK = 4096


@contextmanager
def errors_as_errno(what: str | Callable[[], str]) -> Iterator[None]:
    """Any lazyfs error (origin, integrity, cache) fails the request with EIO, logged.

    Anything else is a bug: it is logged with its traceback and also fails only this
    request, since letting it reach pyfuse3 would end the mount for every reader. ``what``
    names the request; a callable is asked only on failure (requests are a hot path).
    """
    try:
        yield
    except (trio.Cancelled, FUSEError):
        raise
    except LazyfsError as exc:
        log.error("%s failed: %s", what if isinstance(what, str) else what(), exc)
        raise FUSEError(errno.EIO) from exc
    except Exception as exc:
        shown = what if isinstance(what, str) else what()
        log.exception("%s failed on an unexpected error (a lazyfs bug)", shown)
        raise FUSEError(errno.EIO) from exc


# The request handlers pyfuse3 awaits; ``init`` and ``stacktrace`` are not requests.
FUSE_HANDLERS = frozenset(
    name for name, value in vars(pyfuse3.Operations).items() if inspect.iscoroutinefunction(value)
)

T = TypeVar("T")


def at_the_boundary(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``handler`` with every failure turned into an errno by ``errors_as_errno``."""

    @functools.wraps(handler)
    async def guarded(self: object, *args: object, **kwargs: object) -> T:
        def request() -> str:
            # The inodes, handles, offsets and names the request carries; not its context.
            shown = ", ".join(repr(arg) for arg in args if isinstance(arg, int | bytes))
            return f"{handler.__name__}({shown})"

        with errors_as_errno(request):
            return await handler(self, *args, **kwargs)

    return guarded


class GuardedOperations(pyfuse3.Operations):
    """Every request handler a subclass defines goes through the error boundary."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in FUSE_HANDLERS & vars(cls).keys():
            setattr(cls, name, at_the_boundary(vars(cls)[name]))


class ReadOnlyOperations(GuardedOperations):
    """Every operation that would change the tree answers EROFS."""

    async def setattr(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EROFS)

    async def mknod(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EROFS)

    async def mkdir(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EROFS)

    async def unlink(self, *args: Any) -> None:
        raise FUSEError(errno.EROFS)

    async def rmdir(self, *args: Any) -> None:
        raise FUSEError(errno.EROFS)

    async def symlink(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EROFS)

    async def rename(self, *args: Any) -> None:
        raise FUSEError(errno.EROFS)

    async def link(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EROFS)

    async def write(self, *args: Any) -> int:
        raise FUSEError(errno.EROFS)

    async def create(self, *args: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise FUSEError(errno.EROFS)

    async def setxattr(self, *args: Any) -> None:
        raise FUSEError(errno.EROFS)

    async def removexattr(self, *args: Any) -> None:
        raise FUSEError(errno.EROFS)


class LazyFS(ReadOnlyOperations):
    def __init__(
        self, tree: Tree, reader: BlockReader, mtime: float, ownership: Ownership | None = None
    ) -> None:
        super().__init__()
        self.tree = tree
        self.reader = reader
        self._mtime_ns = int(mtime * 1e9)
        self._ownership = ownership or Ownership(os.getuid(), os.getgid())
        # Per open file: its inode and its read history (for read-ahead).
        self._handles: dict[int, tuple[int, ReadPattern]] = {}
        self._next_handle = 1
        self.initialized = trio.Event()

    def init(self) -> None:
        # Called by pyfuse3 while it handles the kernel's FUSE_INIT, before its reply.
        self.initialized.set()

    def _node(self, inode: int) -> Node:
        node = self.tree.nodes.get(inode)
        if node is None:
            raise FUSEError(errno.ENOENT)
        return node

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = pyfuse3.InodeT(node.inode)
        if node.entry is None:
            attributes.st_mode = pyfuse3.ModeT(stat.S_IFDIR | self._ownership.dir_mode)
            attributes.st_nlink = 2 + node.subdirectories
            attributes.st_size = 0
        else:
            permissions = self._ownership.file_permissions(node.entry.executable)
            attributes.st_mode = pyfuse3.ModeT(stat.S_IFREG | permissions)
            attributes.st_nlink = 1
            attributes.st_size = node.entry.size
        attributes.st_blksize = self.reader.block_size
        attributes.st_blocks = (attributes.st_size + 511) // 512
        attributes.st_uid = self._ownership.uid
        attributes.st_gid = self._ownership.gid
        attributes.st_atime_ns = attributes.st_mtime_ns = self._mtime_ns
        attributes.st_ctime_ns = self._mtime_ns
        attributes.attr_timeout = CACHE_TIMEOUT
        attributes.entry_timeout = CACHE_TIMEOUT
        return attributes

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            decoded = name.decode()
        except UnicodeDecodeError:
            raise FUSEError(errno.ENOENT) from None
        node = self.tree.lookup(parent_inode, decoded)
        if node is None:
            raise FUSEError(errno.ENOENT)
        return self._attributes(node)

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._attributes(self._node(inode))

    async def access(
        self, inode: pyfuse3.InodeT, mode: pyfuse3.ModeT, ctx: pyfuse3.RequestContext
    ) -> bool:
        self._node(inode)
        return not mode & os.W_OK

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if not self._node(inode).is_dir:
            raise FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        listing = self._node(fh).listing
        # start_id is the position of the next child, so a large listing resumes where the
        # kernel's buffer filled up, at no cost for the entries before it.
        for position in range(start_id, len(listing)):
            name, inode = listing[position]
            attributes = self._attributes(self.tree.nodes[inode])
            if not pyfuse3.readdir_reply(token, name.encode(), attributes, position + 1):
                break

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise FUSEError(errno.EROFS)
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = (inode, ReadPattern())
        if node.entry is not None:
            self.reader.opened(node.entry)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(handle), keep_cache=True)

    # pyfuse3 takes any buffer (it reads it through the buffer protocol), not only bytes.
    async def read(  # type: ignore[override]
        self, fh: pyfuse3.FileHandleT, off: int, size: int
    ) -> Buffer:
        opened = self._handles.get(fh)
        if opened is None:
            raise FUSEError(errno.EBADF)
        inode, pattern = opened
        entry = self._node(inode).entry
        if entry is None:
            raise FUSEError(errno.EISDIR)
        log.debug("read %s offset %d size %d", entry.path, off, size)
        # Inside the boundary every handler has: the log names the file, not only the handle.
        with errors_as_errno(lambda: f"read of {entry.path} at {off}+{size}"):
            return await self.reader.read(entry, off, size, pattern)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        opened = self._handles.pop(fh, None)
        if opened is not None:
            self.reader.closed(opened[1])

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> bytes:
        self._node(inode)
        raise FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self._node(inode)
        return []

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = self.reader.block_size
        data.f_frsize = STATFS_BLOCK
        data.f_blocks = -(-self.tree.total_size // STATFS_BLOCK)
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.tree.nodes)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data
