"""Real mounts against real origins (`lazyfs serve` and nginx on 127.0.0.1)."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import socket
import subprocess
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from lazyfs.core.manifest import MANIFEST_NAME, FileEntry, Manifest
from lazyfs.publish.sample import write_sample_repository
from tests.mounts import Mounter, publish
from tests.origins import Origin

KIB = 1024
MIB = 1024 * 1024
BLOCK = 64 * KIB


def make_tree(root: Path) -> dict[str, bytes]:
    """A small repository with every awkward shape: empty, exact blocks, partial blocks."""
    rng = random.Random(7)
    files = {
        "empty": b"",
        "one-byte": b"x",
        "exact-two-blocks.bin": rng.randbytes(2 * BLOCK),
        "block-plus-one.bin": rng.randbytes(BLOCK + 1),
        "odd.bin": rng.randbytes(5 * BLOCK + 12345),
        "nested/deeper/file.txt": b"hello from a nested directory\n",
        "with space & unicode é.txt": "naïve\n".encode(),
        "run.sh": b"#!/bin/sh\necho hi\n",
    }
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "run.sh").chmod(0o755)
    return files


def open_without_readahead(path: Path) -> int:
    """The kernel's readahead may fetch megabytes past a read (it did here, on 6.18); the
    tests that count GETs measure lazyfs, so they ask the kernel for exactly the pages read."""
    descriptor = os.open(path, os.O_RDONLY)
    os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
    return descriptor


def block_requests(origin: Origin, path: str, at_least: int = 0) -> list[tuple[str, str | None]]:
    records = origin.requests(at_least, where=lambda r: r.path == f"/{path}")
    return [(r.method, r.range) for r in records]


def test_every_file_equal_through_the_mount(origin: Origin, mounter: Mounter) -> None:
    files = make_tree(origin.root)
    write_sample_repository(origin.root / "model", 3 * MIB)
    publish(origin.root)
    mountpoint, result = mounter.mount(origin.url)
    assert "mounted" in result.stdout

    for path in sorted(origin.root.rglob("*")):
        relative = path.relative_to(origin.root).as_posix()
        if relative == "lazyfs-manifest.json":
            assert not (mountpoint / relative).exists()
            continue
        mounted = mountpoint / relative
        assert mounted.is_dir() == path.is_dir(), relative
        if path.is_file():
            assert mounted.stat().st_size == path.stat().st_size
            subprocess.run(["cmp", str(path), str(mounted)], check=True)
    assert (mountpoint / "run.sh").stat().st_mode & 0o777 == 0o555
    assert (mountpoint / "odd.bin").stat().st_mode & 0o777 == 0o444
    assert (mountpoint / "nested").stat().st_mode & 0o777 == 0o555
    sums = subprocess.run(
        ["sha256sum", "odd.bin"], cwd=mountpoint, capture_output=True, text=True, check=True
    )
    assert sums.stdout.split()[0] == hashlib.sha256(files["odd.bin"]).hexdigest()
    assert sorted(os.listdir(mountpoint)) == sorted(
        name for name in os.listdir(origin.root) if name != "lazyfs-manifest.json"
    )
    assert subprocess.run([str(mountpoint / "run.sh")], capture_output=True).stdout == b"hi\n"


def test_random_reads_across_blocks_and_past_eof(origin: Origin, mounter: Mounter) -> None:
    files = make_tree(origin.root)
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url)
    rng = random.Random(1)
    for name in ("odd.bin", "block-plus-one.bin", "exact-two-blocks.bin", "one-byte", "empty"):
        data = files[name]
        descriptor = os.open(mountpoint / name, os.O_RDONLY)
        try:
            probes = [(0, 1), (len(data), 10), (len(data) + 5000, 10), (max(len(data) - 1, 0), 9)]
            probes += [(BLOCK - 3, 7), (2 * BLOCK - 1, 2), (len(data) - (len(data) % BLOCK), 99)]
            probes += [(rng.randrange(len(data) + 1), rng.randrange(3 * BLOCK)) for _ in range(40)]
            for offset, length in probes:
                offset = max(offset, 0)
                assert os.pread(descriptor, length, offset) == data[offset : offset + length]
        finally:
            os.close(descriptor)


def test_one_byte_of_a_large_file_costs_one_block(origin: Origin, mounter: Mounter) -> None:
    data = random.Random(2).randbytes(32 * MIB)
    (origin.root / "large.bin").write_bytes(data)
    publish(origin.root, block_size="4M")
    mountpoint, _ = mounter.mount(origin.url)
    origin.clear_log()

    descriptor = open_without_readahead(mountpoint / "large.bin")
    try:
        assert os.pread(descriptor, 1, 10 * MIB) == data[10 * MIB : 10 * MIB + 1]
    finally:
        os.close(descriptor)

    requests = origin.requests(at_least=1, where=lambda r: r.path == "/large.bin")
    assert [(r.range, r.bytes_sent) for r in requests] == [("bytes=8388608-12582911", 4 * MIB)]


def test_concurrent_readers_of_one_block_cost_one_get(origin: Origin, mounter: Mounter) -> None:
    data = random.Random(3).randbytes(8 * MIB)
    (origin.root / "shared.bin").write_bytes(data)
    publish(origin.root, block_size="4M")
    mountpoint, _ = mounter.mount(origin.url)
    origin.clear_log()
    # Offsets 512 KiB apart: distinct pages (so the kernel sends each read to the daemon),
    # all inside block 1.
    offsets = [4 * MIB + i * 512 * KIB for i in range(8)]
    barrier = threading.Barrier(len(offsets))
    results: dict[int, bytes] = {}

    def reader(offset: int) -> None:
        descriptor = open_without_readahead(mountpoint / "shared.bin")
        try:
            barrier.wait()
            results[offset] = os.pread(descriptor, 100, offset)
        finally:
            os.close(descriptor)

    threads = [threading.Thread(target=reader, args=(offset,)) for offset in offsets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(results[offset] == data[offset : offset + 100] for offset in offsets)
    assert block_requests(origin, "shared.bin", 1) == [("GET", "bytes=4194304-8388607")]


def test_tampered_block_is_never_served(origin: Origin, mounter: Mounter) -> None:
    data = random.Random(4).randbytes(8 * BLOCK)
    source = origin.root / "weights.bin"
    source.write_bytes(data)
    publish(origin.root)
    with open(source, "r+b") as handle:  # the origin now serves one wrong byte in block 3
        handle.seek(3 * BLOCK + 100)
        handle.write(bytes([data[3 * BLOCK + 100] ^ 0xFF]))
    mountpoint, _ = mounter.mount(origin.url, "--retries", "3")
    origin.clear_log()

    descriptor = open_without_readahead(mountpoint / "weights.bin")
    try:
        with pytest.raises(OSError) as raised:
            os.pread(descriptor, 10, 3 * BLOCK + 50)
        assert raised.value.errno == errno.EIO
        assert os.pread(descriptor, BLOCK, 0) == data[:BLOCK]
        assert os.pread(descriptor, 1000, 6 * BLOCK + 7) == data[6 * BLOCK + 7 : 6 * BLOCK + 1007]
    finally:
        os.close(descriptor)

    expected = hashlib.sha256(data[3 * BLOCK : 4 * BLOCK]).hexdigest()
    actual = hashlib.sha256(source.read_bytes()[3 * BLOCK : 4 * BLOCK]).hexdigest()
    failures = [
        line
        for line in mounter.log_text().splitlines()
        if " ERROR " in line and "failed verification" in line
    ]
    assert failures
    for line in failures:
        assert "block 3 of weights.bin" in line, line
        assert f"{origin.url}/weights.bin" in line and expected in line and actual in line, line
    # Each failed read fetched the block --retries times (the kernel itself retries a failed
    # page read once, so one pread may cost two failed reads).
    bad_range = f"bytes={3 * BLOCK}-{4 * BLOCK - 1}"
    gets = block_requests(origin, "weights.bin").count(("GET", bad_range))
    assert gets == 3 * len(failures)


def test_remount_with_origin_stopped_serves_cached_files(origin: Origin, mounter: Mounter) -> None:
    files = make_tree(origin.root)
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url)
    for name in files:
        if name != "odd.bin":
            assert (mountpoint / name).read_bytes() == files[name]
    mounter.unmount(mountpoint)
    origin.stop()

    # --retries 2: bounded retries end in EIO just as the default 4 do, seconds sooner.
    mountpoint, _ = mounter.mount(origin.url, "--retries", "2", mountpoint=mountpoint)
    for name in files:
        if name != "odd.bin":
            assert (mountpoint / name).read_bytes() == files[name]
    # Never fetched, origin down: EIO after bounded retries, not a hang.
    with pytest.raises(OSError) as raised:
        (mountpoint / "odd.bin").read_bytes()
    assert raised.value.errno == errno.EIO
    assert "cached manifest" in mounter.log_text()


def test_cache_size_limit_holds(origin: Origin, mounter: Mounter) -> None:
    import diskcache

    data = random.Random(5).randbytes(6 * MIB)
    (origin.root / "big.bin").write_bytes(data)
    publish(origin.root)
    cache = mounter.cache_dir()
    mountpoint, _ = mounter.mount(origin.url, "--cache-size", "1M")
    assert (mountpoint / "big.bin").read_bytes() == data
    mounter.unmount(mountpoint)
    with diskcache.Cache(str(cache / "blocks")) as store:
        # lazyfs evicts after each insert, so the store ends at most one block over.
        assert store.volume() <= 1 * MIB + BLOCK
        assert len(store) < len(data) // BLOCK
    assert (cache.stat().st_mode & 0o777) == 0o700


def test_read_only_semantics(origin: Origin, mounter: Mounter) -> None:
    make_tree(origin.root)
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url)
    target = mountpoint / "odd.bin"
    attempts = [
        lambda: os.open(target, os.O_RDWR),
        lambda: os.open(target, os.O_WRONLY | os.O_APPEND),
        lambda: os.open(mountpoint / "new-file", os.O_WRONLY | os.O_CREAT),
        lambda: os.rename(target, mountpoint / "renamed"),
        lambda: os.unlink(target),
        lambda: os.mkdir(mountpoint / "dir"),
        lambda: os.rmdir(mountpoint / "nested"),
        lambda: os.chmod(target, 0o777),
        lambda: os.truncate(target, 0),
        lambda: os.symlink("odd.bin", mountpoint / "link"),
        lambda: os.link(target, mountpoint / "hard"),
        lambda: os.setxattr(target, "user.x", b"1"),
        lambda: os.utime(target, (0, 0)),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS, attempt
    stats = os.statvfs(mountpoint)
    assert (
        stats.f_blocks * stats.f_frsize
        >= sum(p.stat().st_size for p in origin.root.rglob("*") if p.is_file())
        - (origin.root / "lazyfs-manifest.json").stat().st_size
    )
    assert stats.f_flag & os.ST_RDONLY


def test_large_directory_listing(origin: Origin, mounter: Mounter) -> None:
    directory = origin.root / "shards"
    directory.mkdir()
    names = [f"shard-{i:05d}-of-03000.bin" for i in range(3000)]
    for name in names:
        (directory / name).write_bytes(name.encode())
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url)
    assert sorted(os.listdir(mountpoint / "shards")) == names
    listed = subprocess.run(["ls", "-1", "-f", str(mountpoint / "shards")], capture_output=True)
    assert len([n for n in listed.stdout.split() if n.startswith(b"shard-")]) == 3000
    assert (mountpoint / "shards" / names[1234]).read_bytes() == names[1234].encode()


def test_mmap_numpy_and_safetensors_on_the_mount(origin: Origin, mounter: Mounter) -> None:
    write_sample_repository(origin.root, 4 * MIB)
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url)
    source = origin.root / "model.safetensors"
    mounted = mountpoint / "model.safetensors"

    with open(mounted, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        raw = source.read_bytes()
        assert m[:8] == raw[:8]
        assert m[len(raw) // 2 : len(raw) // 2 + 4096] == raw[len(raw) // 2 : len(raw) // 2 + 4096]
        assert m[-100:] == raw[-100:]
    memmapped = np.memmap(mounted, dtype=np.uint8, mode="r")
    assert np.array_equal(memmapped, np.fromfile(source, dtype=np.uint8))
    del memmapped

    with safe_open(str(source), "numpy") as expected, safe_open(str(mounted), "numpy") as actual:
        assert list(actual.keys()) == list(expected.keys())
        for name in expected.keys():  # noqa: SIM118 (safe_open is not a mapping)
            assert np.array_equal(actual.get_tensor(name), expected.get_tensor(name)), name


def test_unmount_with_a_read_in_flight(origin: Origin, mounter: Mounter) -> None:
    """A read stuck on an origin that accepts but never answers ends with an error when the
    mount is unmounted; unmount itself returns and leaves no daemon behind."""
    files = make_tree(origin.root)
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url)
    origin.stop()
    black_hole = socket.create_server(("127.0.0.1", origin.port))
    outcome: list[BaseException | bytes] = []

    def reader() -> None:
        try:
            outcome.append((mountpoint / "odd.bin").read_bytes())
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    black_hole.settimeout(30)
    try:
        thread.start()
        held, _ = black_hole.accept()  # the read's fetch has reached the silent origin
        assert thread.is_alive(), "the read should be waiting on the silent origin"
        mounter.unmount(mountpoint)
        thread.join(30)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], OSError), outcome
        assert outcome[0].errno in (errno.EIO, errno.ENOTCONN, errno.ECONNABORTED)
        assert files["odd.bin"]  # never served
        held.close()
    finally:
        black_hole.close()


HUGE_DIRECTORY = 100_000


@pytest.mark.parametrize("origin", ["lazyfs"], indirect=True)  # the origin serves one manifest
def test_a_directory_of_100k_files_lists_each_name_once(origin: Origin, mounter: Mounter) -> None:
    """A manifest of empty files, built here: the listing needs no file at the origin."""
    names = [f"f{n:06d}" for n in range(HUGE_DIRECTORY)] + ["sub-a", "sub-b"]
    paths = [f"data/{name}" for name in names[:-2]] + ["data/sub-a/x", "data/sub-b/y"]
    empty = hashlib.sha256(b"").hexdigest()
    # Already in order; make_manifest would check what the mount checks again, for seconds.
    manifest = Manifest(BLOCK, tuple(FileEntry(path, 0, False, empty, ()) for path in paths))
    (origin.root / MANIFEST_NAME).write_bytes(manifest.to_json())
    mountpoint, _ = mounter.mount(origin.url)
    directory = mountpoint / "data"
    listed = subprocess.run(
        ["ls", "-f", str(directory)], capture_output=True, text=True, timeout=300, check=True
    )
    # -f: unsorted, as readdir gives them (lazyfs lists no "." or "..": the kernel has them).
    shown = [name for name in listed.stdout.splitlines() if name not in (".", "..")]
    assert Counter(shown) == Counter(names)
    with os.scandir(directory) as entries:
        scanned = Counter(entry.name for entry in entries)
    assert scanned == Counter(names)
    assert directory.stat().st_nlink == 2 + 2
    assert (directory / names[54321]).stat().st_size == 0
