"""Cross-check of lazyfs's Xet hashes against the real client, hf_xet, hashing files on disk.

The client chunks content-defined, so only inputs whose chunks are known can be compared: a
file shorter than the minimum chunk is one chunk, and a run of zeros is cut into maximum-size
chunks (128 KiB) with a shorter last one. Many chunks of zeros build a tree of several levels.
"""

from __future__ import annotations

from pathlib import Path

import hf_xet
import pytest

from lazyfs.core.xethash import chunk_hash, file_hash, hash_hex

MAX_CHUNK = 128 * 1024


def _client_hash(path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_XET_TELEMETRY_ENABLED", "false")
    (info,) = hf_xet.hash_files([str(path)])
    return str(info.hash)


@pytest.mark.parametrize("data", [b"", b"x", b"hello world", bytes(range(256)) * 20])
def test_one_chunk_files_hash_as_hf_xet_hashes_them(
    data: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "small"
    path.write_bytes(data)
    chunks = [(chunk_hash(data), len(data))] if data else []
    assert hash_hex(file_hash(chunks)) == _client_hash(path, monkeypatch)


@pytest.mark.parametrize("size", [2 * MAX_CHUNK, 3 * MAX_CHUNK + 1000, 20 * MAX_CHUNK + 5])
def test_many_chunk_files_hash_as_hf_xet_hashes_them(
    size: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "zeros"
    path.write_bytes(bytes(size))
    lengths = [MAX_CHUNK] * (size // MAX_CHUNK) + ([size % MAX_CHUNK] if size % MAX_CHUNK else [])
    chunks = [(chunk_hash(bytes(length)), length) for length in lengths]
    assert hash_hex(file_hash(chunks)) == _client_hash(path, monkeypatch)
