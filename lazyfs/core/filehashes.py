"""Whole-file digests fed in order (sha256, and the Git blob id where the hub lists one)."""

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
