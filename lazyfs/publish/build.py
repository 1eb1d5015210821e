"""Publishing: hash a directory into a manifest, write it atomically, verify a directory.

Hashing streams each file in chunks of whole blocks with bounded memory. The whole-file
digest must see the bytes in order, so it runs in its own single-worker thread; the block
digests of each chunk run in a pool beside it. hashlib releases the GIL, so both hash at once.
Work is handed between threads per chunk, not per block: a hand-off costs a thread wake-up,
which on a busy machine costs far more than hashing one small block.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from lazyfs.core.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    check_path,
    make_manifest,
    parse_manifest,
)
from lazyfs.errors import ManifestError, UsageError

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


# Bytes handed to the hashing threads at a time (rounded to whole blocks).
CHUNK_BYTES = 16 * 1024 * 1024


def _read_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    # Buffered: BufferedReader.read(n) returns n bytes unless at EOF, where a raw read may
    # return fewer and shift every later block boundary.
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def _block_digests(chunk: bytes, block_size: int) -> list[str]:
    view = memoryview(chunk)
    return [
        hashlib.sha256(view[start : start + block_size]).hexdigest()
        for start in range(0, len(view), block_size)
    ]


class FileHasher:
    """Whole-file and block digests of files, on every core, with bounded memory."""

    def __init__(self, block_size: int, workers: int | None = None) -> None:
        self.block_size = block_size
        self.chunk_size = block_size * max(1, CHUNK_BYTES // block_size)
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="block-hash")
        self._ordered = ThreadPoolExecutor(1, thread_name_prefix="file-hash")

    def __enter__(self) -> FileHasher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(cancel_futures=True)
        self._ordered.shutdown(cancel_futures=True)

    def hash_file(
        self, path: Path, relative: str, on_bytes: Callable[[int], None] = lambda n: None
    ) -> FileEntry:
        whole = hashlib.sha256()
        pending: deque[tuple[Future[list[str]], Future[None], int]] = deque()
        digests: list[str] = []
        # The ordered whole-file digest bounds the speed; up to four chunks in flight keep it
        # and the block workers busy. More would only cost memory (chunk_size each).
        max_in_flight = 2 + min(self.workers, 2)

        def collect() -> None:
            blocks_future, whole_future, length = pending.popleft()
            whole_future.result()
            digests.extend(blocks_future.result())
            on_bytes(length)

        size = 0
        for chunk in _read_chunks(path, self.chunk_size):
            size += len(chunk)
            pending.append(
                (
                    self._pool.submit(_block_digests, chunk, self.block_size),
                    self._ordered.submit(whole.update, chunk),
                    len(chunk),
                )
            )
            if len(pending) >= max_in_flight:
                collect()
        while pending:
            collect()
        executable = bool(path.stat().st_mode & 0o111)
        return FileEntry(relative, size, executable, whole.hexdigest(), tuple(digests))


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
