"""The block digests of Xet files, kept as windows are proven, so a later mount reads every
block verified before from the cache without asking anyone.

One file per Xet file, block size and size (``DIR/XETHASH-SIZE-BS``), appended to as digests
become known: one line per block, ``INDEX DIGEST CHECK``, where CHECK binds the line to its
file. The cache directory is defended against accidents, not people (docs/design.md): a torn,
flipped or foreign line fails its check and is skipped (its block is proven again), so no
damage can put a block at another place.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from lazyfs.errors import CacheError

log = logging.getLogger(__name__)

_HEX = frozenset("0123456789abcdef")


class XetLists:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, xet_hash: str, size: int, block_size: int) -> Path:
        return self.directory / f"{xet_hash}-{size}-{block_size}"

    def load(self, xet_hash: str, size: int, block_size: int, count: int) -> dict[int, str]:
        """The digests recorded for the file's blocks, by index; damaged lines skipped."""
        try:
            text = self._path(xet_hash, size, block_size).read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("ignoring the block list of Xet file %s (%s)", xet_hash, exc)
            return {}
        known: dict[int, str] = {}
        damaged = 0
        for line in text.split(b"\n"):
            if not line:
                continue
            parsed = _parse(line, xet_hash, size, block_size)
            if parsed is None or parsed[0] >= count:
                damaged += 1
                continue
            known[parsed[0]] = parsed[1]
        if damaged:
            log.warning(
                "skipped %d damaged lines of the block list of Xet file %s", damaged, xet_hash
            )
        return known

    def add(
        self, xet_hash: str, size: int, block_size: int, digests: Iterable[tuple[int, str]]
    ) -> None:
        lines = b"".join(
            _line(index, digest, xet_hash, size, block_size) for index, digest in digests
        )
        if not lines:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(
                self._path(xet_hash, size, block_size),
                os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                0o600,
            )
            try:
                # One write of whole lines: a crash tears at most the last, which then fails
                # its check.
                os.write(descriptor, lines)
            finally:
                os.close(descriptor)
        except OSError as exc:
            raise CacheError(f"cannot keep the block list of Xet file {xet_hash}: {exc}") from None

    def discard(self, xet_hash: str, size: int, block_size: int) -> None:
        self._path(xet_hash, size, block_size).unlink(missing_ok=True)


def _check(index: int, digest: str, xet_hash: str, size: int, block_size: int) -> str:
    text = f"{xet_hash} {size} {block_size} {index} {digest}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _line(index: int, digest: str, xet_hash: str, size: int, block_size: int) -> bytes:
    return f"{index} {digest} {_check(index, digest, xet_hash, size, block_size)}\n".encode()


def _parse(line: bytes, xet_hash: str, size: int, block_size: int) -> tuple[int, str] | None:
    try:
        index_text, digest, check = line.decode("ascii").split(" ")
        index = int(index_text)
    except (UnicodeDecodeError, ValueError):
        return None
    if index < 0 or len(digest) != 64 or not set(digest) <= _HEX:
        return None
    if check != _check(index, digest, xet_hash, size, block_size):
        return None
    return index, digest
