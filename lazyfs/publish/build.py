"""Publishing: hash a directory into a manifest, write it atomically, verify a directory.

Hashing (``FileHasher``) streams each file through a few reused buffers, with its block
digests on the calling thread and the ordered whole-file digest on one thread beside it.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from lazyfs.core.filehashes import BlockDigests
from lazyfs.core.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    check_path,
    make_manifest,
    parse_manifest,
)
from lazyfs.core.signedfiles import SIGNATURE_NAME
from lazyfs.errors import ManifestError, UsageError
from lazyfs.publish.sharedreads import Abandoned, SharedReads, read_full_at

SKIPPED_DIRECTORIES = frozenset({".git", ".hg", ".svn"})


def list_published_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``root`` that a manifest lists.

    Symlinks are followed when they resolve to a regular file inside ``root`` (a published
    tree is served by a web server, which must reach the same bytes); anything else is refused.
    """
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    real_root = root.resolve()
    found: list[str] = []

    def unreadable(error: OSError) -> None:
        raise UsageError(f"cannot read {error.filename}: {error.strerror}")

    for directory, subdirs, names in os.walk(root, onerror=unreadable, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRECTORIES)
        for dirname in subdirs:
            if (Path(directory) / dirname).is_symlink():
                raise UsageError(f"{Path(directory) / dirname} is a symlink to a directory")
        for name in sorted(names):
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if relative == MANIFEST_NAME or relative.startswith(f"{MANIFEST_NAME}."):
                continue
            if relative == SIGNATURE_NAME:
                # The signature signs the manifest, so the manifest cannot list it.
                continue
            try:
                mode = path.stat().st_mode
            except (FileNotFoundError, NotADirectoryError):
                raise UsageError(f"{path} is a dangling symlink") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UsageError(f"{path} is a symlink loop") from None
                raise UsageError(f"cannot read {path}: {exc.strerror}") from None
            if not stat.S_ISREG(mode):
                raise UsageError(f"{path} is not a regular file")
            if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                raise UsageError(f"{path} is a symlink that points outside {root}")
            try:
                check_path(relative)
            except ManifestError as exc:
                raise UsageError(f"cannot publish {path}: {exc}") from None
            found.append(relative)
    return found


# Bytes read at a time into each reused buffer: big enough that handing one to the whole-file
# thread costs little next to hashing it, small enough that the buffers stay a few dozen MiB.
CHUNK_BYTES = 8 * 1024 * 1024
# Buffers the two threads read into in turn: each reads up to this many chunks ahead.
RING_DEPTH = 4
# Below this size a file is hashed on the calling thread: waking another costs more than it saves.
PARALLEL_FROM_BYTES = 1024 * 1024


def _anonymous_map(size: int) -> mmap.mmap:
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        area.madvise(mmap.MADV_HUGEPAGE)  # a few faults to map it, not one per 4 KiB page
    return area


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


class FileHasher:
    """Whole-file and block digests of files, the two streams on two cores, in reused buffers.

    Each byte is hashed twice: into its block's digest and into the whole-file digest, which
    must see the bytes in order. The calling thread hashes the blocks while one long-lived
    thread feeds the whole-file digest; both read the file in turn into a few reused buffers
    (``SharedReads``), so each copies half of it. hashlib releases the GIL, so both hash at
    once and a file is hashed at about one core's speed. Work is shared per chunk of many
    blocks: waking the other thread for each block would cost more than hashing it. Files
    below ``parallel_from`` bytes are hashed on the calling thread alone, and a file of one
    block is hashed once (its block digest is the whole-file digest).

    The digests and size of an entry always cover the same bytes, the ones read up to the first
    end of file met: a file that changes while it is hashed gets an entry for what was read,
    which ``manifest verify`` and a mount's block checks then find differs from the file.
    """

    def __init__(
        self,
        block_size: int,
        chunk_size: int = CHUNK_BYTES,
        parallel_from: int = PARALLEL_FROM_BYTES,
    ) -> None:
        self.block_size = block_size
        self.parallel_from = parallel_from
        # Page-aligned, unlike a bytearray's bytes (16 in): on this project's benchmark machine
        # the kernel copies the page cache into an unaligned buffer five times slower.
        self._buffers = [memoryview(_anonymous_map(chunk_size)) for _ in range(RING_DEPTH)]
        # Its thread starts on the first large file: a tree of small files never starts one.
        self._whole_file_thread = ThreadPoolExecutor(1, thread_name_prefix="file-hash")

    def __enter__(self) -> FileHasher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._whole_file_thread.shutdown(cancel_futures=True)
        # The maps are unmapped with the hasher: after a failed read, the exception's frames
        # may still hold views of them, and a map cannot close while they do.

    def hash_file(
        self, path: Path, relative: str, on_bytes: Callable[[int], None] = lambda n: None
    ) -> FileEntry:
        fd = _open(path)
        try:
            status = os.fstat(fd)
            if status.st_size < self.parallel_from:
                size, whole, blocks = self._hash_here(fd, on_bytes)
            else:
                size, whole, blocks = self._hash_beside(fd, on_bytes)
        finally:
            os.close(fd)
        executable = bool(status.st_mode & 0o111)
        return FileEntry(relative, size, executable, whole, blocks)

    def _hash_here(
        self, fd: int, on_bytes: Callable[[int], None]
    ) -> tuple[int, str, tuple[str, ...]]:
        whole = hashlib.sha256()
        blocks = BlockDigests(self.block_size)
        buffer = self._buffers[0]
        size = 0
        while count := read_full_at(fd, buffer, size):
            chunk = buffer[:count]
            whole.update(chunk)
            size += count
            on_bytes(count)
            at_end = count < len(buffer)
            if at_end and size <= self.block_size:
                digest = whole.hexdigest()
                return size, digest, (digest,)
            blocks.update(chunk)
            if at_end:
                break
        return size, whole.hexdigest(), blocks.digests()

    def _hash_beside(
        self, fd: int, on_bytes: Callable[[int], None]
    ) -> tuple[int, str, tuple[str, ...]]:
        reads = SharedReads(fd, self._buffers)
        whole = hashlib.sha256()
        fed = self._whole_file_thread.submit(_feed_in_order, reads, whole)
        blocks = BlockDigests(self.block_size)
        size = 0
        try:
            for chunk in reads.chunks(BLOCK_STREAM):
                blocks.update(chunk)
                size += len(chunk)
                on_bytes(len(chunk))
        except Abandoned:
            fed.result()  # the whole-file thread's own error
            raise
        except BaseException:
            reads.abandon()
            raise
        finally:
            # The buffers are free for the next file only once the other thread is done with them.
            wait([fed])
        fed.result()
        return size, whole.hexdigest(), blocks.digests()


BLOCK_STREAM, WHOLE_FILE_STREAM = 0, 1


def _feed_in_order(reads: SharedReads, whole: hashlib._Hash) -> None:
    try:
        for chunk in reads.chunks(WHOLE_FILE_STREAM):
            whole.update(chunk)
    except Abandoned:
        pass  # the block stream failed and raises its own error
    except BaseException:
        reads.abandon()
        raise


def build_manifest(
    root: Path, block_size: int, on_bytes: Callable[[int], None] = lambda n: None
) -> Manifest:
    relatives = list_published_files(root)
    entries = []
    with FileHasher(block_size) as hasher:
        for relative in relatives:
            try:
                entries.append(hasher.hash_file(root / relative, relative, on_bytes))
            except OSError as exc:
                raise UsageError(f"cannot read {root / relative}: {exc.strerror}") from None
    return make_manifest(block_size, entries)


def load_local_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            f"{root} has no {MANIFEST_NAME} (run: lazyfs manifest build {root})"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return parse_manifest(raw)


def verify_directory(root: Path, manifest: Manifest) -> list[str]:
    """Problems found checking ``root`` against ``manifest``, one line each; empty if none."""
    problems: list[str] = []
    with FileHasher(manifest.block_size) as hasher:
        for expected in manifest.files:
            path = root / expected.path
            if not path.is_file():
                problems.append(f"{expected.path}: missing")
                continue
            try:
                actual = hasher.hash_file(path, expected.path)
            except OSError as exc:
                problems.append(f"{expected.path}: cannot read: {exc.strerror}")
                continue
            if actual.size != expected.size:
                problems.append(f"{expected.path}: size {actual.size}, expected {expected.size}")
                continue
            bad = [
                i
                for i, (a, e) in enumerate(zip(actual.blocks, expected.blocks, strict=True))
                if a != e
            ]
            if bad:
                shown = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
                problems.append(f"{expected.path}: {len(bad)} bad block(s): {shown}")
            elif actual.sha256 != expected.sha256:
                problems.append(f"{expected.path}: whole-file sha256 differs")
            elif actual.executable != expected.executable:
                problems.append(f"{expected.path}: executable bit differs")
    listed = {entry.path for entry in manifest.files}
    extras = [path for path in list_published_files(root) if path not in listed]
    problems.extend(f"{extra}: not in the manifest" for extra in extras)
    return problems
