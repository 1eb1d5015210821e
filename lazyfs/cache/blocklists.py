"""Block lists of hub files verified whole, kept in the cache directory as hints for later
mounts."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from lazyfs.cache.atomic import write_atomically
from lazyfs.core.blocks import block_count
from lazyfs.core.manifest import FileEntry
from lazyfs.errors import CacheError

log = logging.getLogger(__name__)


class BlockLists:
    """Block lists of files verified whole, by the hub's digest: ``DIR/ALGO-DIGEST-SIZE-BS``.

    A list is only a hint of which cached blocks make up the file: the cache directory is not
    trusted, so a file is checked against the hub's digest again on its first read in each
    mount, with the blocks read from the cache (a local pass instead of a download). Each
    list records its own sha256, so accidental damage is noticed before that."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, entry: FileEntry, block_size: int) -> Path:
        assert entry.check is not None
        name = f"{entry.check.algorithm}-{entry.check.digest}-{entry.size}-{block_size}.json"
        return self.directory / name

    def load(self, entry: FileEntry, block_size: int) -> FileEntry | None:
        try:
            document = json.loads(self._path(entry, block_size).read_bytes())
            body = [document["sha256"], document["blocks"]]
            if document["check"] != _checksum(body):
                raise ValueError("checksum")
            sha256, blocks = str(body[0]), tuple(str(digest) for digest in body[1])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the damaged block list of %s (%s)", entry.path, exc)
            return None
        if len(blocks) != block_count(entry.size, block_size):
            return None
        return replace(entry, sha256=sha256, blocks=blocks)

    def store(self, pending: FileEntry, verified: FileEntry, block_size: int) -> None:
        body = [verified.sha256, list(verified.blocks)]
        data = json.dumps({"sha256": body[0], "blocks": body[1], "check": _checksum(body)})
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(self._path(pending, block_size), data.encode(), mode=0o600)
        except OSError as exc:
            raise CacheError(f"cannot keep the block list of {pending.path}: {exc}") from None

    def discard(self, entry: FileEntry, block_size: int) -> None:
        self._path(entry, block_size).unlink(missing_ok=True)


def _checksum(body: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()
