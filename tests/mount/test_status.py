"""`lazyfs status` and `lazyfs wait`, answered by a live daemon over its control socket."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from lazyfs.cache.store import BlockStore
from lazyfs.core.blocks import held_bytes
from lazyfs.core.manifest import MANIFEST_NAME, parse_manifest
from tests.faultproxy import FaultProxy, fault_proxy
from tests.mounts import LAZYFS, Mounter, lazyfs, publish
from tests.origins import Origin
from tests.waiting import wait_until

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


def held_by_the_cache(cache_dir: Path, published: Path) -> dict[str, int]:
    """Per file, the bytes whose blocks the cache directory holds, asked of the store itself."""
    manifest = parse_manifest((published / MANIFEST_NAME).read_bytes())
    store = BlockStore(cache_dir / "blocks", 2**62)
    try:
        held = set(store.digests())
    finally:
        store.close()
    return {
        entry.path: held_bytes(entry.blocks, entry.size, manifest.block_size, held)
        for entry in manifest.files
    }


def test_status_after_eviction_and_a_prune_from_outside(origin: Origin, mounter: Mounter) -> None:
    files = publish_two_files(origin)
    mountpoint, _ = mounter.mount(origin.url, "--cache-size", "700K")
    cache_dir = mounter.cache_dir()
    for name, data in files.items():
        assert (mountpoint / name).read_bytes() == data
    truth = held_by_the_cache
    # other.bin was read last and its blocks are stored in order, after the others: once it is
    # all cached, no write is still on its way to meet the prune below.
    assert wait_until(lambda: cached(status(mountpoint))["other.bin"] == len(files["other.bin"]))
    assert wait_until(lambda: cached(status(mountpoint)) == truth(cache_dir, origin.root))
    report = status(mountpoint)
    assert 0 < sum(cached(report).values()) < sum(map(len, files.values()))  # evicted some
    assert report["cache_bytes"] <= report["cache_limit"]

    pruned = lazyfs("cache", "prune", "0", "--cache-dir", cache_dir)
    assert pruned.returncode == 0, pruned.stderr
    assert cached(status(mountpoint)) == dict.fromkeys(files, 0)
    assert (mountpoint / "other.bin").read_bytes() == files["other.bin"]


def test_prefetch_of_more_than_the_cache_holds_ends_and_names_what_it_did_not_keep(
    origin: Origin, mounter: Mounter
) -> None:
    files = publish_two_files(origin)
    mountpoint, _ = mounter.mount(origin.url, "--cache-size", "500K")
    result = lazyfs("prefetch", mountpoint, timeout=90)
    assert result.returncode == 6, result.stdout + result.stderr
    *named, last = result.stderr.strip().splitlines()
    assert named and all(line.endswith(" not kept in the cache") for line in named), named
    assert {line.split(": ")[0] for line in named} <= set(files)
    assert last.startswith(f"lazyfs: error: {len(named)} file(s) not kept in the cache: ")
    assert "does not fit in the cache (--cache-size 500.0 KiB)" in last
    assert "Traceback" not in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("prefetch: 100%")
    report = status(mountpoint)
    assert not report["prefetch"]["active"]
    (run,) = report["prefetch"]["runs"]
    assert run["finished"] and not run["cancelled"] and run["files"] == 3
    assert sum(run["not_kept"].values()) > 0
    # What it did not keep still reads, from the origin.
    for name, data in files.items():
        assert (mountpoint / name).read_bytes() == data


def stalling_mount(origin: Origin, mounter: Mounter, proxy: FaultProxy, *extra: str) -> Path:
    """A mount through ``proxy``, which answers no request for a minute; the manifest is
    given as a file, so the mount needs no answer."""
    proxy.faults.stall, proxy.faults.stall_seconds = 1.0, 60.0
    manifest = str(origin.root / MANIFEST_NAME)
    mountpoint, _ = mounter.mount(
        proxy.url, "--manifest", manifest, "--timeout", "120", "--deadline", "600", *extra
    )
    return mountpoint


def start_prefetch(mountpoint: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LAZYFS, "prefetch", str(mountpoint)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(client: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def test_an_interrupted_prefetch_is_cancelled_in_the_daemon(
    origin: Origin, mounter: Mounter
) -> None:
    publish_two_files(origin)
    with fault_proxy(origin.url) as proxy:
        mountpoint = stalling_mount(origin, mounter, proxy)
        asked = proxy.requests
        client = start_prefetch(mountpoint)
        try:
            assert wait_until(lambda: proxy.requests > asked, 30)  # the daemon is fetching
            assert status(mountpoint)["prefetch"]["active"]
            client.send_signal(signal.SIGINT)
        finally:
            _, stderr = finish(client)
        assert client.returncode == 130, stderr
        assert stderr.strip() == "lazyfs: interrupted"
        assert wait_until(lambda: not status(mountpoint)["prefetch"]["active"], 30)
        (run,) = status(mountpoint)["prefetch"]["runs"]
        assert run["cancelled"] and run["finished"]
        assert sorted(os.listdir(mountpoint)) == ["model", "other.bin"]


def test_prefetch_cancel_stops_every_run(origin: Origin, mounter: Mounter) -> None:
    publish_two_files(origin)
    with fault_proxy(origin.url) as proxy:
        mountpoint = stalling_mount(origin, mounter, proxy, "--prefetch")
        client = start_prefetch(mountpoint)
        try:
            assert wait_until(lambda: len(status(mountpoint)["prefetch"]["runs"]) == 2, 30)
            cancelled = lazyfs("prefetch", "--cancel", mountpoint)
            assert cancelled.returncode == 0, cancelled.stderr
            assert cancelled.stdout.strip() == "cancelled 2 prefetch run(s)"
        finally:
            _, stderr = finish(client)
        assert client.returncode == 1
        assert stderr.strip().splitlines()[-1] == (
            "lazyfs: error: the prefetch was cancelled (lazyfs prefetch --cancel)"
        )
        assert wait_until(lambda: not status(mountpoint)["prefetch"]["active"], 30)
        runs = status(mountpoint)["prefetch"]["runs"]
        assert [run["cancelled"] for run in runs] == [True, True]
        again = lazyfs("prefetch", "--cancel", mountpoint)
        assert again.returncode == 0 and again.stdout.strip() == "no prefetch was running"
        with_paths = lazyfs("prefetch", "--cancel", mountpoint, "other.bin")
        assert with_paths.returncode == 2
        assert with_paths.stderr.strip().startswith("lazyfs: error: --cancel takes no paths")


def test_prefetch_of_empty_files_shows_nothing_odd(origin: Origin, mounter: Mounter) -> None:
    (origin.root / "empty").mkdir()
    (origin.root / "empty" / "a").write_bytes(b"")
    (origin.root / "empty" / "b").write_bytes(b"")
    (origin.root / "full.bin").write_bytes(b"x" * 100)
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url)
    result = lazyfs("prefetch", mountpoint, "empty")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "prefetch: 100% 0 B of 0 B, 0 B/s",
        "done: 2 files, 0 B verified and cached",
    ]


def test_plain_status_escapes_file_names_and_reads_as_text(
    origin: Origin, mounter: Mounter
) -> None:
    hostile = "red\x1b[31mtext\nforged line\r\x07.bin"
    (origin.root / hostile).write_bytes(b"x" * 10)
    (origin.root / "plain.bin").write_bytes(b"y" * 20)
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url, "--prefetch")
    assert lazyfs("wait", mountpoint, "--timeout", "60").returncode == 0
    result = lazyfs("status", mountpoint)
    assert result.returncode == 0, result.stderr
    assert not any(char in result.stdout for char in "\x1b\r\x07")
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        "100%       20 B  plain.bin",
        "100%       10 B  red\\x1b[31mtext\\nforged line\\r\\x07.bin",
    ]
    assert lines[2].startswith("cache: 2 blocks, ")
    assert lines[-1].startswith("prefetch run 1: done, 2 files")
    assert not any("{" in line or "=" in line for line in lines)
    assert json.loads(lazyfs("status", mountpoint, "--json").stdout)["files"][1]["path"] == hostile


# Runs the real `lazyfs` entry point, then says which heavy modules the process imported.
LIGHT_CLIENT = """
import atexit, sys
from lazyfs.cli.main import main
heavy = ("pyfuse3", "diskcache", "httpx", "trio", "prometheus_client", "sqlite3")
atexit.register(lambda: print("heavy:", [m for m in heavy if m in sys.modules], file=sys.stderr))
sys.argv = ["lazyfs", *sys.argv[1:]]
main()
"""
LIGHT_MOUNT = [sys.executable, "-c", LIGHT_CLIENT, "mount"]


def test_client_commands_load_no_fuse_store_http_or_event_loop(
    origin: Origin, mounter: Mounter
) -> None:
    (origin.root / "a.bin").write_bytes(b"a" * (3 * BLOCK))
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url)
    for command in (["prefetch"], ["status"], ["status", "--json"], ["wait"]):
        result = subprocess.run(
            [sys.executable, "-c", LIGHT_CLIENT, *command, str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip().splitlines()[-1] == "heavy: []", command


def test_the_parent_of_a_background_mount_loads_no_fuse_http_or_event_loop(
    origin: Origin, mounter: Mounter
) -> None:
    """Only the daemon serves the mount; the command that starts it stays light (and fast)."""
    (origin.root / "a.bin").write_bytes(b"a" * BLOCK)
    publish(origin.root)
    target = mounter.new_mountpoint()
    command = [*LIGHT_MOUNT, origin.url, str(target), "--cache-dir", str(mounter.cache_dir())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    mounter.mounted.append(target)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "heavy: []"
    assert (target / "a.bin").read_bytes() == b"a" * BLOCK


# What the daemon imports before it mounts: the CLI its parent loaded, then the mount's code.
DAEMON_IMPORTS = """
import sys
import lazyfs.cli.main
import lazyfs.daemon.lifecycle
unneeded = ("prometheus_client", "rich", "pygments")
print([m for m in sys.modules if m.split(".")[0] in unneeded])
"""


def test_the_daemon_loads_nothing_it_does_not_need_before_it_mounts(tmp_path: Path) -> None:
    """A mount is live once its daemon has imported its code: metrics (only for --metrics),
    progress bars and httpx's own command-line client (rich, pygments) are not on that path."""
    result = subprocess.run(
        [sys.executable, "-c", DAEMON_IMPORTS],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
