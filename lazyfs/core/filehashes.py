"""Digests of a file fed in order, in pieces of any length: the whole-file digests (sha256, and
the Git blob id where the hub lists one) and the sha256 of each block."""

from __future__ import annotations

import hashlib

from typing_extensions import Buffer

from lazyfs.core.hubs import git_blob_header
from lazyfs.core.manifest import FileEntry


class FileHashes:
    """The whole-file digests, fed in order: sha256, and the Git blob id when it is checked."""

    def __init__(self, entry: FileEntry) -> None:
        self.sha256 = hashlib.sha256()
        self.git_sha1 = None
        if entry.check is not None and entry.check.algorithm == "git-sha1":
            self.git_sha1 = hashlib.sha1(git_blob_header(entry.size))

    def update(self, data: Buffer) -> None:
        self.sha256.update(data)
        if self.git_sha1 is not None:
            self.git_sha1.update(data)

    def digest(self, algorithm: str) -> str:
        chosen = self.git_sha1 if algorithm == "git-sha1" else self.sha256
        assert chosen is not None
        return chosen.hexdigest()


class BlockDigests:
    """The sha256 of each ``block_size`` bytes of a stream fed in pieces of any length.

    Pieces need not align with blocks, so a reader picks its buffer size for speed alone.
    Nothing of a piece is kept: the caller may reuse its buffer as soon as ``update`` returns.
    """

    def __init__(self, block_size: int) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be > 0")
        self.block_size = block_size
        self._done: list[str] = []
        self._partial = hashlib.sha256()  # the block begun in an earlier piece
        self._partial_length = 0

    def update(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        start = 0
        if self._partial_length:
            start = min(self.block_size - self._partial_length, len(view))
            self._extend_partial(view[:start])
        while len(view) - start >= self.block_size:
            end = start + self.block_size
            self._done.append(hashlib.sha256(view[start:end]).hexdigest())
            start = end
        if start < len(view):
            self._extend_partial(view[start:])

    def digests(self) -> tuple[str, ...]:
        """Every block's digest so far, a last short block included."""
        if self._partial_length:
            return (*self._done, self._partial.hexdigest())
        return tuple(self._done)

    def _extend_partial(self, piece: memoryview) -> None:
        self._partial.update(piece)
        self._partial_length += len(piece)
        if self._partial_length == self.block_size:
            self._done.append(self._partial.hexdigest())
            self._partial = hashlib.sha256()
            self._partial_length = 0
