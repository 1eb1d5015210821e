"""A cached block damaged on disk is never served: a warm read checks the pieces it serves
against the checksums recorded when the block was verified, drops a block that fails, and
fetches it again. Each kind of damage the cache must survive, on a real mount."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mounts import Mounter, publish
from tests.origins import AccessRecord, Origin

KIB = 1024
BLOCK = 256 * KIB  # sixteen 16 KiB pieces per block
BLOCKS = 6
DAMAGED = 3  # the block whose file is damaged


def _block_files(cache: Path) -> dict[str, Path]:
    """Stored file of each cached block, by digest (diskcache's own table)."""
    with sqlite3.connect(cache / "blocks" / "cache.db") as db:
        rows = db.execute("SELECT key, filename FROM Cache").fetchall()
    return {str(key): cache / "blocks" / filename for key, filename in rows}


def _flip_one_byte(path: Path, other: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(2 * 64 * KIB + 100)  # inside the third piece, which the read below serves
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))


def _truncate(path: Path, other: Path) -> None:
    os.truncate(path, 2 * 64 * KIB + 50)


def _replace(path: Path, other: Path) -> None:
    path.write_bytes(other.read_bytes())  # another verified block's bytes, whole


def _zero_fill(path: Path, other: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


@pytest.mark.parametrize("origin", ["nginx"], indirect=True)
@pytest.mark.parametrize(
    "damage",
    [_flip_one_byte, _truncate, _replace, _zero_fill],
    ids=["flip-one-byte", "truncate", "replace", "zero-fill"],
)
def test_a_damaged_cached_block_is_refetched_not_served(
    origin: Origin, mounter: Mounter, damage: Callable[[Path, Path], None]
) -> None:
    data = os.urandom(BLOCK * BLOCKS)
    (origin.root / "weights.bin").write_bytes(data)
    publish(origin.root, "256K")
    cache = mounter.cache_dir()
    mountpoint, _ = mounter.mount(origin.url)
    assert (mountpoint / "weights.bin").read_bytes() == data  # every block cached
    mounter.unmount(mountpoint)

    digests = [hashlib.sha256(data[i : i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)]
    files = _block_files(cache)
    damage(files[digests[DAMAGED]], files[digests[0]])

    def weights_gets(at_least: int = 0) -> list[AccessRecord]:
        return origin.requests(at_least, where=lambda r: r.path == "/weights.bin")

    fetched_before = len(weights_gets(BLOCKS))

    mountpoint, _ = mounter.mount(origin.url)
    with open(mountpoint / "weights.bin", "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        # A clean block is served from the cache; the damaged piece is not served.
        clean = os.pread(handle.fileno(), 4 * KIB, BLOCK + 2 * 64 * KIB)
        offset = DAMAGED * BLOCK + 2 * 64 * KIB
        damaged = os.pread(handle.fileno(), 4 * KIB, offset)
    assert clean == data[BLOCK + 2 * 64 * KIB :][: 4 * KIB]
    assert damaged == data[offset : offset + 4 * KIB]
    refetched = weights_gets(fetched_before + 1)[fetched_before:]
    first = DAMAGED * BLOCK
    assert [r.range for r in refetched] == [f"bytes={first}-{first + BLOCK - 1}"]
    mounter.unmount(mountpoint)
    assert "is corrupt" in mounter.log_text()
    # Stored again, whole and good: the next mount reads it with no request at all.
    mountpoint, _ = mounter.mount(origin.url)
    assert (mountpoint / "weights.bin").read_bytes() == data
    assert weights_gets()[fetched_before + 1 :] == []
