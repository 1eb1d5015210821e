"""The benchmark's lazyfs subjects on real mounts: tensor-aware (said explicitly) and
--no-tensor-aware, and the counters a model workload reads from `lazyfs status --json`; issue
13's section on the fake Hub and Xet CAS: each mode it names, and what the fakes counted; issue
14's fleet through the shipped cache tier: what the origin sent, and every reader checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.benchmark.commands import LAZYFS, run
from scripts.benchmark.fleet import (
    DIRECT,
    FLEET_READ,
    FLEET_SEQ_COLD,
    FLEET_WORKLOADS,
    LIMIT,
    ORIGIN_SHARE,
    THROUGH_TIER,
    FleetOrigin,
    FleetSequential,
    OriginOnce,
    TierMount,
)
from scripts.benchmark.harness import step
from scripts.benchmark.reads import MIB
from scripts.benchmark.results import Parameters, Results
from scripts.benchmark.stage import Stage
from scripts.benchmark.subjects import Curl, LazyfsMount, LazyfsPlain
from scripts.benchmark.xet import (
    MANIFEST,
    REQUEST_KINDS,
    XET,
    XET_FIRST_FETCHED,
    XET_REQUESTS,
    XET_REQUESTS_BY_KIND,
    XET_SEQ_COLD,
    XET_SUBJECTS,
    XET_WORKLOADS,
    XetManifest,
    XetMount,
    XetOrigin,
)
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


def test_the_xet_section_reads_the_mode_it_names_and_counts_what_the_fakes_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two of its five steps (a mount takes a second or two here): the first tensor through the
    committed manifest, the sequential read in Xet mode."""
    stage = Stage(tmp_path / "work", quick=True)
    stage.xet_size = 9 * MIB  # two layers: four tensors over three 4 MiB blocks
    stage.prepare(everything=False)
    monkeypatch.setattr(stage, "drop_caches", lambda: None)  # the machine's, not the test's
    results = Results("0" * 40, [], "test", "2026-11-30", 1, True, Parameters("2G", "1G"))
    first_tensor, sequential = XET_WORKLOADS
    try:
        stage.xet = XetOrigin.start(stage)
        size = stage.xet.size
        step(first_tensor, XetManifest(stage), stage, results)
        step(sequential, XetMount(stage), stage, results)
    finally:
        for subject in XET_SUBJECTS:
            subject.clean_up(stage)
        stage.close()
    # A step fails unless `lazyfs status` says the file is verified as its subject says.
    assert results.errors == {}
    fetched = results.values[XET_FIRST_FETCHED.key(MANIFEST)][0] * MIB
    assert 4 * MIB <= fetched <= size  # the tensor's blocks, from the CDN
    assert XET_FIRST_FETCHED.key(XET) not in results.values
    for name in REQUEST_KINDS:  # a token, proofs, reconstructions and data: each asked
        assert results.values[XET_REQUESTS_BY_KIND[name].key(XET)][0] > 0, name
    total = results.values[XET_REQUESTS.key(XET)][0]
    split = sum(results.values[metric.key(XET)][0] for metric in XET_REQUESTS_BY_KIND.values())
    assert total >= split  # and the listing's requests besides
    assert results.values[XET_SEQ_COLD.key(XET)][0] > 0
    for subject in XET_SUBJECTS:
        assert not is_mounted(stage.mountpoint(subject.name))


def test_the_fleet_section_counts_what_the_origin_sent_and_fails_on_a_wrong_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three mounts through one tier, then the cold sequential read through a tier, direct and
    with curl; then one mount, told to expect another digest."""
    stage = Stage(tmp_path / "work", quick=True)
    stage.fleet_size = 16 * MIB  # four 4 MiB blocks
    stage.prepare(everything=False)
    monkeypatch.setattr(stage, "drop_caches", lambda: None)  # the machine's, not the test's
    results = Results("0" * 40, [], "test", "2026-12-01", 1, True, Parameters("2G", "1G"))
    one, three = (
        next(w for w in FLEET_WORKLOADS if isinstance(w, OriginOnce) and w.nodes == nodes)
        for nodes in (1, 3)
    )
    (sequential,) = [w for w in FLEET_WORKLOADS if isinstance(w, FleetSequential)]
    try:
        stage.fleet = FleetOrigin.start(stage)
        step(three, TierMount(stage), stage, results)
        for subject in (TierMount(stage), LazyfsMount(stage), Curl(stage)):
            step(sequential, subject, stage, results)
        assert results.errors == {}
        stage.fleet.sha256 = "0" * 64
        step(one, TierMount(stage), stage, results)
    finally:
        TierMount.clean_up(stage)
        LazyfsMount.clean_up(stage)
        stage.close()
    # The file went out of the origin once for the three mounts: one transfer of each block.
    assert results.values[ORIGIN_SHARE[3].key(THROUGH_TIER)] == [1 / 3]
    assert results.values[FLEET_READ[3].key(THROUGH_TIER)][0] > 0
    for series in (THROUGH_TIER, DIRECT, LIMIT):
        assert results.values[FLEET_SEQ_COLD.key(series)][0] > 0
    # A digest that is not the file's fails the step, and it records no figure.
    for metric in (ORIGIN_SHARE[1], FLEET_READ[1]):
        (reason,) = results.errors[metric.key(THROUGH_TIER)]
        assert reason.startswith("wrong bytes: mount 1 of 1 through the tier read sha256 ")
        assert results.values.get(metric.key(THROUGH_TIER), []) == []
    for node in range(3):
        assert not is_mounted(TierMount(stage, node).mountpoint)
