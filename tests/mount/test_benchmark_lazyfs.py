"""The benchmark's lazyfs subjects on real mounts: tensor-aware (said explicitly) and
--no-tensor-aware, and the counters a model workload reads from `lazyfs status --json`."""

from __future__ import annotations

import os
from pathlib import Path

from scripts.benchmark.commands import LAZYFS, run
from scripts.benchmark.stage import Stage
from scripts.benchmark.subjects import LazyfsMount, LazyfsPlain
from tests.support.processes import cmdline, is_mounted, start_nginx_origin


def test_each_lazyfs_subject_mounts_in_its_mode_and_counts_reads_and_bytes(tmp_path: Path) -> None:
    repo = tmp_path / "www" / "repo"
    repo.mkdir(parents=True)
    data = os.urandom(3 * 2**20 + 5)
    (repo / "model.safetensors").write_bytes(data)
    run([*LAZYFS, "manifest", "build", str(repo), "--block-size", "1M"], 60)
    stage = Stage(tmp_path / "work", quick=True)
    stage.logs.mkdir(parents=True)
    stage.origin = start_nginx_origin(tmp_path / "www", tmp_path / "nginx")
    served = stage.served(repo / "model.safetensors")
    try:
        for subject, flag in (
            (LazyfsMount(stage), "--tensor-aware"),
            (LazyfsPlain(stage), "--no-tensor-aware"),
        ):
            with subject.open(
                served, stage.fresh_dir(subject.name), drop_page_cache=False
            ) as target:
                assert flag in cmdline(target.daemon)  # the forked daemon keeps `lazyfs mount`'s
                before = subject.counters()
                assert target.file.read_bytes() == data
                counted = subject.counters() - before
                assert counted.bytes_fetched == len(data)
                assert counted.read_requests >= 1
            assert not is_mounted(stage.mountpoint(subject.name))
    finally:
        LazyfsMount.clean_up(stage)
        LazyfsPlain.clean_up(stage)
        stage.running_origin.stop()
