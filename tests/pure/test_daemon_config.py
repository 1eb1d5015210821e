"""A background mount's daemon gets the parent's MountConfig whole: encoding round-trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.attempts import RetryPolicy
from lazyfs.daemon.config import DaemonStart, MountConfig

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
paths = st.builds(lambda name: Path("/") / name, st.text("abc/ é.-", min_size=1, max_size=12))
policies = st.builds(
    RetryPolicy,
    attempts=st.integers(1, 100),
    deadline=st.floats(0.1, 86400),
    connect_timeout=st.floats(0.1, 3600),
    read_timeout=st.floats(0.1, 3600),
)
configs = st.builds(
    MountConfig,
    url=texts,
    mountpoint=paths,
    cache_dir=paths,
    cache_size=st.integers(0, 2**60),
    manifest_sha256=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    allow_other=st.booleans(),
    prefetch=st.none() | st.tuples() | st.lists(texts, max_size=3).map(tuple),
    metrics=st.none() | st.tuples(texts, st.integers(0, 65535)),
    manifest_source=st.none() | texts,
    token_file=st.none() | paths,
    mirrors=st.lists(texts, max_size=3).map(tuple),
    policy=policies,
    ca_file=st.none() | paths,
)


@given(configs, paths, st.sampled_from(["debug", "info", "warning", "error"]))
def test_a_daemon_start_round_trips(config: MountConfig, log_file: Path, level: str) -> None:
    start = DaemonStart(config, log_file, level)
    assert DaemonStart.decode(start.encode()) == start


def test_no_prefetch_and_prefetch_everything_stay_apart() -> None:
    base = MountConfig("http://h", Path("/m"), Path("/c"), 1)
    for prefetch in (None, ()):
        start = DaemonStart(dataclasses.replace(base, prefetch=prefetch), Path("/l"), "info")
        assert DaemonStart.decode(start.encode()).config.prefetch == prefetch
