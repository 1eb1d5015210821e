"""`lazyfs mount --metrics HOST:PORT`: a Prometheus endpoint whose counters follow reads."""

from __future__ import annotations

import random
import urllib.request

from tests.mounts import Mounter, publish
from tests.origins import Origin, free_port

BLOCK = 64 * 1024


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("lazyfs_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_move_with_reads(origin: Origin, mounter: Mounter) -> None:
    data = random.Random(21).randbytes(6 * BLOCK)
    (origin.root / "w.bin").write_bytes(data)
    publish(origin.root)
    port = free_port()
    mountpoint, _ = mounter.mount(origin.url, "--metrics", f"127.0.0.1:{port}")

    before = scrape(port)
    assert before["lazyfs_bytes_fetched_total"] == 0
    assert before["lazyfs_fetch_seconds_count"] == 0
    assert before["lazyfs_fetches_in_flight"] == 0
    assert before["lazyfs_cache_limit_bytes"] > 0
    assert before["lazyfs_read_ahead_limit_bytes"] == 64 * 1024 * 1024
    assert before["lazyfs_read_ahead_peak_bytes"] == 0

    assert (mountpoint / "w.bin").read_bytes() == data
    after = scrape(port)
    assert after["lazyfs_bytes_fetched_total"] == len(data)
    assert after["lazyfs_blocks_fetched_total"] == 6
    assert after["lazyfs_blocks_verified_total"] == 6
    assert after["lazyfs_blocks_failed_total"] == 0
    assert after["lazyfs_fetch_seconds_count"] == 6
    assert after['lazyfs_fetch_seconds_bucket{le="+Inf"}'] == 6
    assert after["lazyfs_cache_misses_total"] == 6
    # The kernel asks for the whole small file at once: nothing is left to read ahead.
    assert after["lazyfs_blocks_read_ahead_total"] == 0
    assert after["lazyfs_read_ahead_peak_bytes"] == after["lazyfs_read_ahead_bytes"] == 0
    assert after["lazyfs_read_ahead_dropped_total"] == after["lazyfs_read_ahead_refused_total"] == 0

    mounter.unmount(mountpoint)  # the endpoint goes with the mount
    mountpoint, _ = mounter.mount(origin.url, "--metrics", f"127.0.0.1:{port}")
    assert (mountpoint / "w.bin").read_bytes() == data
    warm = scrape(port)
    assert warm["lazyfs_bytes_fetched_total"] == 0
    assert warm["lazyfs_cache_hits_total"] == 6
    assert warm["lazyfs_cache_blocks"] == 6


def test_bad_metrics_address_and_a_port_in_use(origin: Origin, mounter: Mounter) -> None:
    (origin.root / "a.txt").write_text("a\n")
    publish(origin.root)
    _, result = mounter.mount(origin.url, "--metrics", "nonsense", expect_ok=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lazyfs: error: --metrics wants HOST:PORT, such as 127.0.0.1:9400, not 'nonsense'"
    ]
    port = free_port()
    mounter.mount(origin.url, "--metrics", f"127.0.0.1:{port}")
    _, result = mounter.mount(origin.url, "--metrics", f"127.0.0.1:{port}", expect_ok=False)
    assert result.returncode == 7
    assert result.stderr.strip().splitlines() == [
        f"lazyfs: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]
