"""Block files are written exactly, around the page cache where the filesystem allows it."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.cache import blockfile
from lazyfs.cache.blockfile import ALIGNMENT, write_block_file
from tests.support.pagecache import resident_bytes

MIB = 1024 * 1024


@settings(max_examples=30, deadline=None)
@given(size=st.integers(0, 3 * ALIGNMENT + 10) | st.sampled_from([MIB, MIB + 1, 4 * MIB - 1]))
def test_the_file_holds_exactly_the_block(
    tmp_path_factory: pytest.TempPathFactory, size: int
) -> None:
    directory = tmp_path_factory.mktemp("blocks")
    block = os.urandom(size)
    path = directory / "a" / "b.val"  # its directory does not exist yet
    write_block_file(str(path), memoryview(block))
    assert path.read_bytes() == block
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "b.val"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_block_file(str(path), memoryview(b"new"))
    assert path.read_bytes() == b"old"


def test_a_block_is_written_around_the_page_cache(tmp_path: Path) -> None:
    block = os.urandom(4 * MIB + 100)  # an unaligned tail goes through the page cache
    path = tmp_path / "b.val"
    write_block_file(str(path), memoryview(block))
    assert not blockfile._direct_refused.is_set(), "this test needs a filesystem with O_DIRECT"
    assert resident_bytes(path) <= ALIGNMENT
    assert path.read_bytes() == block


def test_a_filesystem_without_o_direct_gets_ordinary_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fcntl.fcntl

    def refusing(fd: int, command: int, argument: int = 0) -> int:
        if command == fcntl.F_SETFL and argument & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, command, argument)

    monkeypatch.setattr(blockfile.fcntl, "fcntl", refusing)
    refused = blockfile._direct_refused
    monkeypatch.setattr(blockfile, "_direct_refused", type(refused)())
    block = os.urandom(MIB)
    path = tmp_path / "b.val"
    write_block_file(str(path), memoryview(block))
    assert path.read_bytes() == block
    assert blockfile._direct_refused.is_set()
    assert resident_bytes(path) == MIB  # through the page cache
