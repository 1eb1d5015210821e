"""The Prometheus endpoint of a mount (``--metrics HOST:PORT``): ``lazyfs_`` series, read
from the mount's own counters at each scrape, plus a histogram of block fetch times (made
before the reader, whose fetcher is given its ``observe``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lazyfs.errors import CacheError, MountError
from lazyfs.read.reader import BlockReader

FETCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class MountCollector(Collector):
    def __init__(self, reader: BlockReader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        counters = self.reader.counters
        fetches = self.reader.fetcher.counters
        totals = {
            "bytes_fetched": ("Bytes fetched from the origin", counters.bytes_fetched),
            "blocks_fetched": ("Blocks fetched from the origin", counters.blocks_fetched),
            "blocks_verified": (
                "Blocks that matched their digest (fetched or read back from the cache)",
                counters.blocks_fetched - counters.verification_failures + counters.cache_hits,
            ),
            "blocks_failed": (
                "Blocks that did not match their digest",
                counters.verification_failures + counters.cache_verification_failures,
            ),
            "cache_hits": ("Blocks read from the disk cache", counters.cache_hits),
            "memory_hits": ("Block reads served from memory", counters.memory_hits),
            "cache_misses": ("Blocks not in the cache, so fetched", counters.blocks_fetched),
            "cache_writes_skipped": (
                "Fetched blocks served without being cached: the cache disk was too slow",
                counters.cache_writes_skipped,
            ),
            "fetch_retries": (
                "Block fetch attempts after a block's first (the origin and its mirrors)",
                fetches.retries,
            ),
            "fetch_errors": (
                "Block fetches that failed after retries (the origin and its mirrors)",
                fetches.errors,
            ),
            "xet_proofs": (
                "Windows of Xet files proven against the Hub's xetHash (each one or more blocks)",
                counters.xet_proofs,
            ),
            "cas_requests": (
                "Requests to the Xet CAS and its data URLs (tokens, proofs, reconstructions, "
                "xorb ranges)",
                counters.cas_requests,
            ),
            "cas_bytes": ("Xorb bytes received from the Xet CAS", counters.cas_bytes),
            "blocks_read_ahead": ("Blocks read ahead of readers", counters.blocks_read_ahead),
            "read_ahead_dropped": (
                "Blocks read ahead and dropped unread (their reader moved on or left)",
                counters.read_ahead_dropped,
            ),
            "read_ahead_refused": (
                "Times read-ahead was not started for want of budget",
                counters.read_ahead_refused,
            ),
        }
        for name, (documentation, value) in totals.items():
            yield CounterMetricFamily(f"lazyfs_{name}", documentation, value=value)
        yield GaugeMetricFamily(
            "lazyfs_fetches_in_flight", "Block fetches under way", value=counters.fetches_in_flight
        )
        gauges = {
            "read_ahead_bytes": (
                "Bytes of the read-ahead budget in use (fetching, or fetched and not yet read)",
                counters.read_ahead_bytes,
            ),
            "read_ahead_limit_bytes": ("The read-ahead budget", counters.read_ahead_budget),
            "read_ahead_peak_bytes": (
                "The most of the read-ahead budget ever in use at once",
                counters.read_ahead_peak_bytes,
            ),
        }
        for name, (documentation, value) in gauges.items():
            yield GaugeMetricFamily(f"lazyfs_{name}", documentation, value=value)
        try:
            stats = self.reader.store.statistics()
        except CacheError:
            return
        yield GaugeMetricFamily("lazyfs_cache_bytes", "Bytes in the disk cache", value=stats.volume)
        yield GaugeMetricFamily(
            "lazyfs_cache_blocks", "Blocks in the disk cache", value=stats.blocks
        )
        yield GaugeMetricFamily(
            "lazyfs_cache_limit_bytes", "The disk cache's size bound", value=stats.limit
        )


class MountMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.fetch_seconds = Histogram(
            "lazyfs_fetch_seconds",
            "Time to fetch and hash one block",
            buckets=FETCH_SECONDS_BUCKETS,
            registry=self.registry,
        )

    def observe_fetch(self, seconds: float) -> None:
        self.fetch_seconds.observe(seconds)

    def serve(self, address: tuple[str, int], reader: BlockReader) -> Callable[[], None]:
        """Serve ``reader``'s metrics from a thread; returns the function that stops it."""
        self.registry.register(MountCollector(reader))
        return _serve(address, self.registry)


def _serve(address: tuple[str, int], registry: CollectorRegistry) -> Callable[[], None]:
    host, port = address
    try:
        server: Any
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MountError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
