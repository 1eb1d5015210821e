"""`lazyfs status` and `lazyfs wait`, answered by a live daemon over its control socket."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from tests.mounts import LAZYFS, Mounter, lazyfs, publish, wait_until
from tests.origins import Origin

pytestmark = pytest.mark.mount

BLOCK = 64 * 1024


def status(mountpoint: Path) -> dict[str, object]:
    result = lazyfs("status", mountpoint, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def cached(report: dict[str, object]) -> dict[str, int]:
    files = report["files"]
    assert isinstance(files, list)
    return {item["path"]: item["cached_bytes"] for item in files}


def test_status_follows_reads_and_wait_returns_when_cached(
    origin: Origin, mounter: Mounter
) -> None:
    weights = random.Random(12).randbytes(10 * BLOCK + 5)
    (origin.root / "weights.bin").write_bytes(weights)
    (origin.root / "sub").mkdir()
    (origin.root / "sub" / "config.json").write_text("{}\n")
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url)

    before = status(mountpoint)
    assert cached(before) == {"sub/config.json": 0, "weights.bin": 0}
    assert before["blocks_fetched"] == 0 and before["cache_blocks"] == 0
    assert {"bytes_fetched", "cache_hits", "verification_failures", "cache_limit"} <= set(before)

    descriptor = os.open(mountpoint / "weights.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
        assert os.pread(descriptor, 10, 3 * BLOCK) == weights[3 * BLOCK : 3 * BLOCK + 10]
    finally:
        os.close(descriptor)
    # The block is written to the cache just after it is served.
    assert wait_until(lambda: cached(status(mountpoint))["weights.bin"] == BLOCK)
    assert status(mountpoint)["blocks_fetched"] == 1

    timed_out = lazyfs("wait", mountpoint, "weights.bin", "--timeout", "0.2")
    assert timed_out.returncode == 1
    assert timed_out.stderr.startswith("lazyfs: error: timed out")

    assert (mountpoint / "weights.bin").read_bytes() == weights
    assert (mountpoint / "sub" / "config.json").read_text() == "{}\n"
    ready = lazyfs("wait", mountpoint, "--timeout", "30")
    assert ready.returncode == 0, ready.stderr
    assert cached(status(mountpoint)) == {"sub/config.json": 3, "weights.bin": len(weights)}
    plain = lazyfs("status", mountpoint)
    assert "100%" in plain.stdout and "weights.bin" in plain.stdout

    unknown = lazyfs("wait", mountpoint, "no/such/file", "--timeout", "1")
    assert unknown.returncode == 2
    assert "not in the mount: no/such/file" in unknown.stderr


def test_status_of_something_that_is_not_a_mount(tmp_path: Path) -> None:
    result = lazyfs("status", tmp_path)
    assert result.returncode == 7
    assert result.stderr.strip() == f"lazyfs: error: {tmp_path} is not a live lazyfs mount"


def publish_two_files(origin: Origin) -> dict[str, bytes]:
    files = {
        "model/weights.bin": random.Random(13).randbytes(12 * BLOCK + 77),
        "model/config.json": b'{"hidden_size": 64}\n',
        "other.bin": random.Random(14).randbytes(3 * BLOCK),
    }
    for name, data in files.items():
        (origin.root / name).parent.mkdir(parents=True, exist_ok=True)
        (origin.root / name).write_bytes(data)
    publish(origin.root)
    return files


def test_prefetch_without_a_tty_then_read_everything_offline(
    origin: Origin, mounter: Mounter
) -> None:
    files = publish_two_files(origin)
    mountpoint, _ = mounter.mount(origin.url)
    result = lazyfs("prefetch", mountpoint, "model")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("prefetch: 100%"), lines
    assert all(line.startswith("prefetch: ") for line in lines[:-1])
    assert lines[-1].startswith("done: 2 files")
    report = status(mountpoint)
    assert cached(report) == {
        "model/config.json": len(files["model/config.json"]),
        "model/weights.bin": len(files["model/weights.bin"]),
        "other.bin": 0,
    }

    origin.stop()
    for name in ("model/weights.bin", "model/config.json"):
        assert (mountpoint / name).read_bytes() == files[name]


def test_prefetch_on_a_tty_shows_bars(origin: Origin, mounter: Mounter) -> None:
    publish_two_files(origin)
    mountpoint, _ = mounter.mount(origin.url)
    command = " ".join([*LAZYFS, "prefetch", str(mountpoint)])
    result = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all files" in result.stdout and "other.bin" in result.stdout
    assert "done: 3 files" in result.stdout


def test_mount_with_prefetch_fills_the_cache(origin: Origin, mounter: Mounter) -> None:
    files = publish_two_files(origin)
    mountpoint, _ = mounter.mount(origin.url, "--prefetch-path", "other.bin")
    ready = lazyfs("wait", mountpoint, "other.bin", "--timeout", "60")
    assert ready.returncode == 0, ready.stderr
    assert cached(status(mountpoint))["model/weights.bin"] == 0
    mounter.unmount(mountpoint)

    mountpoint, _ = mounter.mount(origin.url, "--prefetch", mountpoint=mountpoint)
    ready = lazyfs("wait", mountpoint, "--timeout", "60")
    assert ready.returncode == 0, ready.stderr
    origin.stop()
    for name, data in files.items():
        assert (mountpoint / name).read_bytes() == data


def test_prefetch_of_a_tampered_file_fails_and_names_it(origin: Origin, mounter: Mounter) -> None:
    files = publish_two_files(origin)
    damaged = bytearray(files["model/weights.bin"])
    damaged[5 * BLOCK] ^= 0xFF
    (origin.root / "model/weights.bin").write_bytes(bytes(damaged))
    mountpoint, _ = mounter.mount(origin.url)
    result = lazyfs("prefetch", mountpoint)
    assert result.returncode == 5
    assert "model/weights.bin: block 5 of model/weights.bin failed verification" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("lazyfs: error: 1 file(s)")
    assert cached(status(mountpoint))["other.bin"] == 3 * BLOCK
