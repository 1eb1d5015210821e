"""A hostile network and a hostile host: faults injected between lazyfs and a real origin
(tests/faultproxy.py), mirrors, kill -9, a full cache disk, a cache shared by two mounts.

Never a wrong byte: every byte read is compared with the source.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lazyfs.daemon.runtime import pid_file
from tests.faultproxy import Faults, fault_proxy
from tests.mounts import Mounter, force_unmount, fully_cached, is_mounted, lazyfs, publish
from tests.origins import Origin, nginx_origin, start_lazyfs_origin
from tests.waiting import wait_until

BLOCK = 256 * 1024


def write_files(root: Path, sizes: dict[str, int], seed: int) -> dict[str, bytes]:
    generator = random.Random(seed)
    files = {}
    for name, size in sizes.items():
        data = generator.randbytes(size)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        files[name] = data
    publish(root, "256K")
    return files


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Origin]:
    with nginx_origin(tmp_path) as served:
        yield served


def random_reads(
    mountpoint: Path,
    files: dict[str, bytes],
    seconds: float,
    readers: int,
    seed: int,
    enough: Callable[[int], bool] = lambda reads: False,
) -> tuple[int, int, list[str]]:
    """``readers`` threads reading random ranges for ``seconds``, or until ``enough(reads)``;
    (reads, bytes, problems)."""
    deadline = time.monotonic() + seconds
    totals = {"reads": 0, "bytes": 0}
    problems: list[str] = []
    lock = threading.Lock()
    names = sorted(files)

    def reader(number: int) -> None:
        generator = random.Random(seed * 100 + number)
        while time.monotonic() < deadline and not enough(totals["reads"]):
            name = generator.choice(names)
            data = files[name]
            offset = generator.randrange(len(data))
            length = generator.choice([1, 4096, 100_000, BLOCK, 3 * BLOCK + 17])
            try:
                with open(mountpoint / name, "rb") as handle:
                    handle.seek(offset)
                    got = handle.read(length)
            except OSError as exc:
                with lock:
                    problems.append(f"{name}@{offset}+{length}: {exc}")
                continue
            with lock:
                totals["reads"] += 1
                totals["bytes"] += len(got)
                if got != data[offset : offset + length]:
                    problems.append(f"{name}@{offset}+{length}: WRONG BYTES")

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    return totals["reads"], totals["bytes"], problems


def test_sixteen_readers_through_faults_get_every_byte_right(
    nginx: Origin, mounter: Mounter
) -> None:
    files = write_files(nginx.root, {f"shard-{n}.bin": 24 * 1024 * 1024 for n in range(5)}, 1)
    faults = Faults(
        flip=0.02,
        reset=0.03,
        status_503=0.03,
        status_429=0.02,
        stall=0.02,
        truncate=0.02,
        ignore_range=0.02,
        stall_seconds=2.0,
    )
    assert 0.10 <= faults.total <= 0.20
    with fault_proxy(nginx.url, faults, seed=5) as proxy:
        mountpoint, _ = mounter.mount(
            proxy.url, "--retries", "12", "--timeout", "0.5", "--deadline", "120"
        )

        # Until every kind of fault has struck a few times: once every block is cached (most
        # are after 20 s), reads only prove the cache.
        def enough(reads: int) -> bool:
            return reads >= 1000 and len(proxy.injected) == 7 and min(proxy.injected.values()) >= 3

        reads, volume, problems = random_reads(mountpoint, files, 20.0, 16, seed=7, enough=enough)
        # Shown with pytest -s: what the run went through.
        print(f"\n{reads} reads, {volume} bytes, {proxy.requests} requests, {proxy.injected}")
        assert problems == [], problems[:5]
        assert reads > 100 and volume > 0
        # Every kind of fault happened, so the run proves something.
        assert set(proxy.injected) == {
            "flip",
            "reset",
            "status_503",
            "status_429",
            "stall",
            "truncate",
            "ignore_range",
        }, proxy.injected
    report = lazyfs("status", mountpoint, "--json")
    assert report.returncode == 0, report.stderr
    log = mounter.log_text()
    assert "does not match its digest" in log and "retry" in log


def test_mirrors_fail_over_on_errors_and_bad_copies(tmp_path: Path, mounter: Mounter) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    files = write_files(root, {"model.bin": 20 * BLOCK + 5, "config.json": 999}, 2)
    origin = start_lazyfs_origin(root, tmp_path / "serve")
    copy = start_lazyfs_origin(root, tmp_path / "copy")  # what the mirrors serve
    try:
        with (
            fault_proxy(copy.url, Faults(status_503=1.0)) as failing,
            fault_proxy(copy.url, Faults(flip=1.0)) as corrupting,
            fault_proxy(copy.url) as healthy,
        ):
            # The manifest comes from the primary; its blocks come from whichever copy is good.
            mountpoint, _ = mounter.mount(
                origin.url,
                "--mirror",
                failing.url,
                "--mirror",
                corrupting.url,
                "--mirror",
                healthy.url,
                "--retries",
                "4",
            )
            origin.stop()  # the primary is gone once mounted
            assert (mountpoint / "model.bin").read_bytes() == files["model.bin"]
            assert (mountpoint / "config.json").read_bytes() == files["config.json"]
            log = mounter.log_text()
            assert f"from {corrupting.url}/model.bin does not match its digest" in log
            assert "HTTP 503" in log and "trying another source" in log
            # Failing sources are benched: most blocks went straight to the healthy mirror.
            assert healthy.requests >= 21
            assert corrupting.requests < 21 and failing.requests < 21 * 4
    finally:
        origin.stop()
        copy.stop()


def test_every_source_bad_fails_with_eio_naming_them(tmp_path: Path, mounter: Mounter) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    files = write_files(root, {"model.bin": 4 * BLOCK}, 3)
    origin = start_lazyfs_origin(root, tmp_path / "serve")
    try:
        with fault_proxy(origin.url, Faults(flip=1.0)) as corrupting:
            mountpoint, _ = mounter.mount(origin.url, "--mirror", corrupting.url)
            (root / "model.bin").write_bytes(bytes(len(files["model.bin"])))  # origin goes bad
            with pytest.raises(OSError) as raised:
                (mountpoint / "model.bin").read_bytes()
            assert raised.value.errno == errno.EIO
            log = mounter.log_text()
            assert f"{origin.url}/model.bin" in log and f"{corrupting.url}/model.bin" in log
            assert "failed verification" in log
    finally:
        origin.stop()


def test_retries_and_deadline_are_bounded_and_configurable(
    tmp_path: Path, mounter: Mounter
) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    write_files(root, {"a.bin": BLOCK}, 4)  # one block: no read-ahead to count
    origin = start_lazyfs_origin(root, tmp_path / "serve")
    try:
        with fault_proxy(origin.url) as proxy:
            mountpoint, _ = mounter.mount(proxy.url, "--retries", "2")
            proxy.faults.status_503 = 1.0
            before = proxy.requests
            descriptor = os.open(mountpoint / "a.bin", os.O_RDONLY)
            try:
                with pytest.raises(OSError) as raised:
                    os.pread(descriptor, 10, 0)
            finally:
                os.close(descriptor)
            assert raised.value.errno == errno.EIO
            # Exactly two requests per failed read (the kernel may retry the read once).
            log = mounter.log_text()
            failed_reads = log.count("read of a.bin at 0+")
            assert failed_reads in (1, 2)
            assert proxy.requests - before == 2 * failed_reads
            assert "HTTP 503; retry 1 in" in log and "retry 2 in" not in log
            proxy.faults.status_503 = 0.0
            proxy.faults.stall, proxy.faults.stall_seconds = 1.0, 30.0
            # Mounts from the manifest the first mount cached (the origin answers nothing).
            stalled, _ = mounter.mount(
                proxy.url, "--timeout", "0.3", "--deadline", "1", "--retries", "50"
            )
            with pytest.raises(OSError) as raised:
                (stalled / "a.bin").read_bytes()
            assert raised.value.errno == errno.EIO
            assert "no verified copy within 1s" in mounter.log_text()
    finally:
        origin.stop()


def test_kill_9_at_any_moment_leaves_a_cache_the_next_mount_uses(
    nginx: Origin, mounter: Mounter
) -> None:
    files = write_files(nginx.root, {"weights.bin": 96 * 1024 * 1024}, 5)
    expected = hashlib.sha256(files["weights.bin"]).hexdigest()
    cache = mounter.cache_dir("shared-cache")
    mountpoint = mounter.new_mountpoint()
    generator = random.Random(9)
    for _ in range(3):
        mounter.mount(nginx.url, mountpoint=mountpoint, cache_dir=cache)
        reader = subprocess.Popen(
            ["sha256sum", str(mountpoint / "weights.bin")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(generator.uniform(0.05, 0.6))  # the moment to kill at, not a wait
        os.kill(int(pid_file(mountpoint).read_text()), signal.SIGKILL)
        out, _ = reader.communicate(timeout=60)
        # Killed mid-read: the reader fails, or (if it had finished) got the right bytes.
        assert reader.returncode != 0 or out.split()[0].decode() == expected
        result = lazyfs("unmount", mountpoint)
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mountpoint)
        mounter.mounted.remove(mountpoint)
    mounter.mount(nginx.url, mountpoint=mountpoint, cache_dir=cache)
    result = subprocess.run(
        ["sha256sum", str(mountpoint / "weights.bin")], capture_output=True, text=True
    )
    assert result.stdout.split()[0] == expected
    mounter.unmount(mountpoint)
    checked = lazyfs("cache", "verify", "--cache-dir", cache)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_full_cache_disk_still_serves_reads(
    nginx: Origin, mounter: Mounter, tmp_path: Path
) -> None:
    files = write_files(nginx.root, {"big.bin": 24 * 1024 * 1024}, 6)
    small = tmp_path / "small-disk"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(small)], check=True)
    try:
        cache = small / "cache"
        mountpoint, _ = mounter.mount(nginx.url, "--cache-size", "1G", cache_dir=cache)
        filler = small / "filler"
        with open(filler, "wb") as handle:  # whatever room is left, taken
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        assert (mountpoint / "big.bin").read_bytes() == files["big.bin"]
        log = mounter.log_text(cache)
        assert "serving blocks without caching them" in log
        assert log.count("serving blocks without caching them") < 5  # once a minute, not per block
        mounter.unmount(mountpoint)
    finally:
        mounter.cleanup()
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_two_mounts_share_one_cache_dir(nginx: Origin, mounter: Mounter) -> None:
    files = write_files(nginx.root, {f"part-{n}.bin": 6 * 1024 * 1024 for n in range(4)}, 7)
    cache = mounter.cache_dir("shared")
    first, _ = mounter.mount(nginx.url, cache_dir=cache)
    second, _ = mounter.mount(nginx.url, cache_dir=cache)
    problems: list[str] = []

    def read_all(mountpoint: Path, order: list[str]) -> None:
        for name in order:
            if (mountpoint / name).read_bytes() != files[name]:
                problems.append(f"{mountpoint}/{name}")

    names = sorted(files)
    threads = [
        threading.Thread(target=read_all, args=(first, names)),
        threading.Thread(target=read_all, args=(second, names[::-1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert problems == []
    # Each block is written to the cache just after it is served; the third mount reads the
    # cache's index when it starts, so let the writes land first.
    assert wait_until(lambda: fully_cached(first))
    nginx.clear_log()
    third, _ = mounter.mount(nginx.url, cache_dir=cache)
    read_all(third, names)
    assert problems == []
    assert [r for r in nginx.requests() if r.path != "/lazyfs-manifest.json"] == []


def test_cache_files_are_private(nginx: Origin, mounter: Mounter) -> None:
    files = write_files(nginx.root, {"a.bin": 3 * BLOCK}, 8)
    cache = mounter.cache_dir("private")
    mountpoint, _ = mounter.mount(nginx.url, cache_dir=cache)
    assert (mountpoint / "a.bin").read_bytes() == files["a.bin"]
    mounter.unmount(mountpoint)
    paths = [cache, *cache.rglob("*")]
    assert len(paths) > 5
    for path in paths:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    force_unmount(mountpoint)


def mount_options(mountpoint: Path) -> str:
    target = str(mountpoint.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == target:
            return line.split(" - ")[1]
    raise AssertionError(f"{mountpoint} is not mounted")


def test_allow_other_is_off_unless_asked_for(nginx: Origin, mounter: Mounter) -> None:
    write_files(nginx.root, {"a.bin": 1000}, 9)
    private, _ = mounter.mount(nginx.url)
    assert "allow_other" not in mount_options(private)
    assert "ro" in mount_options(private).split(" ")[2].split(",")
    shared, _ = mounter.mount(nginx.url, "--allow-other", cache_dir=mounter.cache_dir("other"))
    assert "allow_other" in mount_options(shared)
