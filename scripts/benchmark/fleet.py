"""Issue 14's workloads: a fleet on one origin. lazyfs mounts, each with a cache of its own, read
one file of random bytes through the shipped nginx cache tier (scripts/cluster/cache-config, run
by tests/origins.py's ``start_cache_tier``) in front of an origin nginx, both on 127.0.0.1:

- origin once: 1, 3 and 8 mounts read the whole file at once through one tier, each reader
  hashing what it read; what the origin sent for the file (its access log: bytes sent) over
  nodes x file size, whose goal is 1/nodes (the origin sends the file once). A reader whose
  sha256 differs from the file's fails the step: no figure of it is recorded;
- cold sequential read: dd on one mount through the tier against one mount of the origin
  itself, and `curl | openssl dgst -sha256` of the file from the origin (the limit).

Every measurement through the tier starts a new tier nginx on an empty cache directory: the tier
is cold. The origin is warm (its file read once after the page cache is dropped), as everywhere
in the benchmark: the reader's side is what is cold.
"""

from __future__ import annotations

import contextlib
import hashlib
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from scripts.benchmark.commands import LAZYFS, StepError, first_line, one_line, progress, run
from scripts.benchmark.metrics import GB_PER_S, SHARE, Metric, Series
from scripts.benchmark.reads import MIB, dd, sha256_at_once, size_label
from scripts.benchmark.results import StepRecorder
from scripts.benchmark.stage import BLOCK_SIZE, Served, Stage, stop_stale_nginx, write_random
from scripts.benchmark.subjects import Curl, LazyfsMount, Subject, stop_lazyfs
from scripts.benchmark.workload import Workload, unexpected
from tests.origins import start_cache_tier
from tests.support.processes import NGINX, Origin, start_nginx_origin

NODES = (1, 3, 8)  # mounts reading at once through one tier
WORKERS = 2  # nginx worker processes of the origin and of the tier: one per core here
READ_RATE = 20e6  # bytes/s: the slowest aggregate a fleet's read is given time for


def machine_line() -> str:
    return (
        f"fleet section's origin and cache: {first_line([str(NGINX), '-v'])} on 127.0.0.1, "
        f"the origin and the shipped cache tier (scripts/cluster/cache-config) with {WORKERS} "
        f"workers each; a new tier, on an empty cache directory, for every measurement"
    )


@dataclass
class FleetOrigin:
    """The origin nginx serving the fleet's file (with its manifest), and where a tier in front
    of it is started."""

    origin: Origin
    path: Path  # the served file, on the local disk
    sha256: str  # what every reader must read
    tier_dir: Path  # a tier's nginx directory (configuration, logs, its cache in blocks/)

    @classmethod
    def start(cls, stage: Stage) -> FleetOrigin:
        path = stage.www / f"fleet-{size_label(stage.fleet_size)}" / "file.bin"
        write_random(path, stage.fleet_size, stage.fresh)
        progress(f"lazyfs manifest build {path.parent}")
        build = [*LAZYFS, "manifest", "build", str(path.parent), "--block-size", BLOCK_SIZE]
        run(build, 600, what="lazyfs manifest build")
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(16 * MIB):
                digest.update(chunk)
        origin_dir, tier_dir = stage.work / "nginx-fleet-origin", stage.work / "nginx-fleet-tier"
        for directory in (origin_dir, tier_dir):
            stop_stale_nginx(directory)
        try:
            origin = start_nginx_origin(stage.www, origin_dir, workers=WORKERS)
        except (RuntimeError, OSError) as exc:
            raise StepError(f"the fleet's origin nginx did not start: {one_line(exc)}") from None
        progress(f"fleet: nginx serving {path.parent} at {origin.url}")
        return cls(origin, path, digest.hexdigest(), tier_dir)

    def close(self) -> None:
        self.origin.stop()

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def served(self) -> Served:
        """The file as the origin serves it."""
        return Served(self.path, self.origin.url)

    @contextlib.contextmanager
    def cold_tier(self) -> Iterator[Served]:
        """A new tier nginx on an empty cache in front of the origin, and the file as it serves
        it (the tier mirrors the origin's URLs); stopped on the way out."""
        shutil.rmtree(self.tier_dir, ignore_errors=True)
        try:
            tier, _ = start_cache_tier(self.origin, self.tier_dir, BLOCK_SIZE, workers=WORKERS)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            raise StepError(f"the cache tier did not start: {one_line(exc)}") from None
        try:
            yield Served(self.path, tier.url)
        finally:
            tier.stop()

    def bytes_sent(self) -> int:
        """What the origin's access log says it sent of the file (its manifest not counted)
        since the log was last cleared."""
        path = f"/{self.path.parent.name}/{self.path.name}"
        return sum(r.bytes_sent for r in self.origin.requests() if r.path == path)


def fleet_origin(stage: Stage) -> FleetOrigin:
    if stage.fleet is None:
        raise StepError("the fleet's origin nginx is not running")
    return stage.fleet


class TierMount(LazyfsMount):
    """lazyfs mounting the file's directory through the tier (the workload hands it the file as
    the tier serves it); ``node`` tells the fleet's mounts apart, each on a mount point of its
    own."""

    name = "lazyfs_tier"

    def __init__(self, stage: Stage, node: int = 0) -> None:
        super().__init__(stage)
        self.node = node

    @property
    def mountpoint(self) -> Path:
        return self.stage.mountpoint(f"{self.name}-{self.node}")

    @classmethod
    def clean_up(cls, stage: Stage) -> None:
        for node in range(max(NODES)):
            stop_lazyfs(stage.mountpoint(f"{cls.name}-{node}"))


FLEET_SUBJECTS: tuple[type[Subject], ...] = (TierMount,)

THROUGH_TIER = Series(TierMount, "lazyfs through the cache tier")
DIRECT = Series(LazyfsMount, "lazyfs, direct from the origin")
LIMIT = Series(Curl, "curl \\| openssl dgst -sha256 from the origin (the limit)")


def mounts(nodes: int) -> str:
    return f"{nodes} mount{'s' if nodes > 1 else ''}"


ORIGIN_SHARE = {
    nodes: Metric(
        f"fleet_origin_{nodes}",
        14,
        f"{mounts(nodes)} reading the {{fleet}} file at once through one cold cache tier: "
        f"origin bytes / ({nodes} x file size)",
        SHARE,
        (THROUGH_TIER,),
    )
    for nodes in NODES
}
FLEET_READ = {
    nodes: Metric(
        f"fleet_read_{nodes}",
        14,
        f"{mounts(nodes)} at once: aggregate read ({nodes} x file size / wall time, each "
        f"reader hashing)",
        GB_PER_S,
        (THROUGH_TIER,),
    )
    for nodes in NODES
}
FLEET_SEQ_COLD = Metric(
    "fleet_seq_cold",
    14,
    "cold sequential read of the {fleet} file, one mount through a cold cache tier (dd)",
    GB_PER_S,
    (THROUGH_TIER, DIRECT, LIMIT),
)


class OriginOnce(Workload):
    """``nodes`` mounts, each on an empty cache of its own, through one new tier: mounted one
    after the other, then the page cache dropped (the origin's file read once), then one reader
    per mount at once. After every unmount and the tier's stop, nothing is in flight: the
    origin's log has all it sent."""

    nodes: ClassVar[int]

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        if not isinstance(subject, TierMount):
            raise unexpected(self, subject)
        fleet = fleet_origin(stage)
        nodes, size = self.nodes, fleet.size
        fleet_mounts = [subject, *(TierMount(stage, node) for node in range(1, nodes))]
        with fleet.cold_tier() as served, contextlib.ExitStack() as mounted:
            fleet.origin.clear_log()  # what the mounts fetch to start counts too
            files = [
                mounted.enter_context(
                    mount.open(
                        served, stage.fresh_dir(mount.mountpoint.name), drop_page_cache=False
                    )
                ).file
                for mount in fleet_mounts
            ]
            stage.cold(served)
            seconds, digests = sha256_at_once(files, 120 + nodes * size / READ_RATE)
        wrong = [node for node, digest in enumerate(digests) if digest != fleet.sha256]
        if wrong:
            raise StepError(
                f"wrong bytes: mount {wrong[0] + 1} of {nodes} through the tier read sha256 "
                f"{digests[wrong[0]][:16]}..., the file's is {fleet.sha256[:16]}... "
                f"({len(wrong)} mount(s) wrong)"
            )
        record(ORIGIN_SHARE[nodes], fleet.bytes_sent() / (nodes * size))
        record(FLEET_READ[nodes], nodes * size / seconds / 1e9)


def origin_once(nodes: int) -> OriginOnce:
    """The workload of ``nodes`` mounts: a step of its own, so one fleet's failure costs the
    others nothing."""
    declared = {
        "nodes": nodes,
        "title": f"fleet: {mounts(nodes)} at once through one cache tier",
        "metrics": (ORIGIN_SHARE[nodes], FLEET_READ[nodes]),
    }
    workload: OriginOnce = type(f"OriginOnce{nodes}", (OriginOnce,), declared)()
    return workload


class FleetSequential(Workload):
    """dd of the whole file on a new mount with an empty cache, the page cache dropped (the
    origin's file read once): through a new tier, and direct from the origin; and curl of the
    file from the origin piped into openssl, whose digest must be the file's."""

    title = "fleet: cold sequential read, through the tier and direct"
    metrics = (FLEET_SEQ_COLD,)

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        fleet = fleet_origin(stage)
        timeout = 120 + fleet.size / READ_RATE
        if isinstance(subject, TierMount):
            with fleet.cold_tier() as served:
                record(FLEET_SEQ_COLD, self.cold_dd(subject, served, stage, timeout))
        elif isinstance(subject, LazyfsMount):
            record(FLEET_SEQ_COLD, self.cold_dd(subject, fleet.served, stage, timeout))
        elif isinstance(subject, Curl):
            state = stage.fresh_dir(subject.name)
            with subject.open(fleet.served, state, drop_page_cache=True) as target:
                pipe = f"curl -sS --fail {shlex.quote(target.stream)} | openssl dgst -sha256 -r"
                started = time.perf_counter()
                result = run(["bash", "-o", "pipefail", "-c", pipe], timeout, what="curl | openssl")
                seconds = time.perf_counter() - started
            digest = result.stdout.split()[0] if result.stdout.split() else ""
            if digest != fleet.sha256:
                raise StepError(f"wrong bytes: curl from the origin read sha256 {digest[:16]}...")
            record(FLEET_SEQ_COLD, fleet.size / seconds / 1e9)
        else:
            raise unexpected(self, subject)

    @staticmethod
    def cold_dd(mount: LazyfsMount, served: Served, stage: Stage, timeout: float) -> float:
        state = stage.fresh_dir(mount.name)
        with mount.open(served, state, drop_page_cache=True) as target:
            return dd(target.file, timeout)


FLEET_WORKLOADS: tuple[Workload, ...] = (
    *(origin_once(nodes) for nodes in NODES),
    FleetSequential(),
)
