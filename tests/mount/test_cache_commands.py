"""`lazyfs cache info|verify|prune|clear` on a cache filled by a real mount."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounts import Mounter, lazyfs, publish
from tests.origins import Origin, start_lazyfs_origin

BLOCK = 64 * 1024


@pytest.fixture
def filled_cache(origin_root: Path, tmp_path: Path, mounter: Mounter) -> Iterator[Path]:
    data = random.Random(11).randbytes(40 * BLOCK)
    (origin_root / "w.bin").write_bytes(data)
    publish(origin_root)
    origin: Origin = start_lazyfs_origin(origin_root, tmp_path / "origin-work")
    try:
        mountpoint, _ = mounter.mount(origin.url)
        assert (mountpoint / "w.bin").read_bytes() == data
        mounter.unmount(mountpoint)
        yield mounter.cache_dir()
    finally:
        origin.stop()


def test_info_verify_prune_clear(filled_cache: Path) -> None:
    info = lazyfs("cache", "info", "--cache-dir", filled_cache)
    assert info.returncode == 0, info.stderr
    assert "blocks: 40 " in info.stdout and "manifests: 1" in info.stdout

    verified = lazyfs("cache", "verify", "--cache-dir", filled_cache)
    assert verified.returncode == 0, verified.stderr
    assert "checked 40 blocks, 0 corrupt" in verified.stdout

    victim = sorted((filled_cache / "blocks").rglob("*.val"))[3]
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    verified = lazyfs("cache", "verify", "--cache-dir", filled_cache)
    assert verified.returncode == 5
    assert "checked 40 blocks, 1 corrupt" in verified.stdout
    assert verified.stderr.strip().startswith("lazyfs: error: 1 corrupt block(s) dropped")
    assert "blocks: 39 " in lazyfs("cache", "info", "--cache-dir", filled_cache).stdout

    pruned = lazyfs("cache", "prune", "1M", "--cache-dir", filled_cache)
    assert pruned.returncode == 0, pruned.stderr
    info = lazyfs("cache", "info", "--cache-dir", filled_cache).stdout
    blocks_left = int(info.split("blocks: ")[1].split()[0])
    assert 0 < blocks_left < 16

    cleared = lazyfs("cache", "clear", "--cache-dir", filled_cache)
    assert cleared.returncode == 0, cleared.stderr
    info = lazyfs("cache", "info", "--cache-dir", filled_cache).stdout
    assert "blocks: 0 " in info and "manifests: 0" in info


def test_a_directory_that_is_not_a_cache_is_refused(tmp_path: Path) -> None:
    result = lazyfs("cache", "info", "--cache-dir", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"lazyfs: error: {tmp_path} is not a lazyfs cache (no blocks/ in it)"
    ]


@pytest.mark.parametrize("kind", ["a file", "under a file", "blocks is a file"])
def test_an_unusable_cache_dir_is_a_cache_failure(tmp_path: Path, kind: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cache, in_the_way = {
        "a file": (a_file, a_file),
        "under a file": (a_file / "cache", a_file),
        "blocks is a file": (tmp_path / "cache", tmp_path / "cache" / "blocks"),
    }[kind]
    if kind == "blocks is a file":
        cache.mkdir()
        in_the_way.write_text("x")
    for command in (["info"], ["verify"], ["prune", "1M"], ["clear"]):
        result = lazyfs("cache", *command, "--cache-dir", cache)
        assert result.returncode == 6, (command, result.stderr)
        assert result.stderr.splitlines() == [
            f"lazyfs: error: cannot use cache dir {cache}: {in_the_way} is not a directory"
        ]
