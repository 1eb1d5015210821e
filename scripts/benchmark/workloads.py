"""How the subjects are read, and what each reading measures.

A workload declares its metrics (name, unit, table row, which subjects) and records only those;
``run`` is called once per subject a metric of it names, with a fresh scratch area each time.
"""

from __future__ import annotations

import shlex
import statistics
import time
from collections import Counter
from pathlib import Path

from scripts.benchmark.commands import LAZYFS, StepError, timed
from scripts.benchmark.fleet import FLEET_WORKLOADS
from scripts.benchmark.metrics import (
    CPU_PER_GB,
    GB_PER_S,
    MEBIBYTES,
    MEGABYTES,
    MILLISECONDS,
    REQUESTS,
    SECONDS,
    TIMES,
    Metric,
    Series,
)
from scripts.benchmark.modelworkloads import MODEL_WORKLOADS
from scripts.benchmark.reads import (
    MIB,
    cpu_seconds,
    dd,
    dd_at_once,
    hash_with_threads,
    load_tensor,
    peak_rss_mib,
    percentile,
    preads,
)
from scripts.benchmark.results import StepRecorder
from scripts.benchmark.stage import BLOCK_SIZE, RANDOM_PATTERNS, SHARDS, Pattern, Served, Stage
from scripts.benchmark.subjects import (
    Curl,
    Download,
    LazyfsMount,
    LocalDisk,
    Mount,
    Passthrough,
    RcloneMount,
    Subject,
)
from scripts.benchmark.workload import (
    THROUGH_LAZYFS,
    THROUGH_PASSTHROUGH,
    THROUGH_RCLONE,
    Workload,
    unexpected,
)
from scripts.benchmark.xet import XET_WORKLOADS
from tests.support.processes import AccessRecord

SEQ_COLD = Metric(
    "seq_cold",
    1,
    "cold sequential read, {big} file",
    GB_PER_S,
    (
        THROUGH_LAZYFS,
        Series(Curl, "curl \\| openssl dgst -sha256"),
        Series(Download, "curl -o, then openssl dgst"),
        Series(RcloneMount, "rclone mount, dd"),
    ),
)
SEQ_WARM = Metric(
    "seq_warm",
    3,
    "warm sequential read (disk cache, new mount, no page cache), {big}",
    GB_PER_S,
    (
        THROUGH_LAZYFS,
        THROUGH_PASSTHROUGH,
        Series(LocalDisk, "local disk dd, cold page cache"),
        THROUGH_RCLONE,
    ),
)
SEQ_HOT = Metric(
    "seq_hot",
    3,
    "hot sequential read (second read, same mount: page cache), {big}",
    GB_PER_S,
    (
        THROUGH_LAZYFS,
        Series(LocalDisk, "local disk dd, hot page cache"),
        THROUGH_PASSTHROUGH,
        THROUGH_RCLONE,
    ),
)
PEAK_RSS = Metric(
    "rss",
    5,
    "daemon peak RSS (VmHWM) during the cold sequential read",
    MEBIBYTES,
    (THROUGH_LAZYFS, THROUGH_RCLONE),
)
CPU = Metric(
    "cpu",
    5,
    "daemon CPU time (user + system) per GB of the cold sequential read",
    CPU_PER_GB,
    (THROUGH_LAZYFS, THROUGH_RCLONE),
)


class Sequential(Workload):
    """The whole big file with dd: cold (fresh cache, new mount, page cache dropped, the
    origin's file read once), hot (again, same mount) and warm (a new mount on the filled
    cache, page cache dropped); the local disk and the passthrough read the file itself."""

    title = "sequential read"
    metrics = (SEQ_COLD, SEQ_WARM, SEQ_HOT, PEAK_RSS, CPU)

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        big, timeout = stage.big, stage.io_timeout
        state = stage.fresh_dir(subject.name)
        if isinstance(subject, Mount):
            with subject.open(big, state, drop_page_cache=True) as target:
                pid = target.daemon
                cpu = cpu_seconds(pid)
                record(SEQ_COLD, dd(target.file, timeout))
                record(CPU, (cpu_seconds(pid) - cpu) / (big.size / 1e9))
                record(PEAK_RSS, peak_rss_mib(pid))
                record(SEQ_HOT, dd(target.file, timeout))
            cached = subject.fetched_bytes(state)
            if cached < big.size:
                stage.note(
                    f"after a full read the {subject.name} disk cache held only "
                    f"{cached / MIB:.0f} MiB of the {big.size / MIB:.0f} MiB file"
                )
            with subject.open(big, state, drop_page_cache=True, warm=True) as target:
                record(SEQ_WARM, dd(target.file, timeout))
        elif isinstance(subject, (LocalDisk, Passthrough)):
            with subject.open(big, state, drop_page_cache=True) as target:
                record(SEQ_WARM, dd(target.file, timeout))
                record(SEQ_HOT, dd(target.file, timeout))
        elif isinstance(subject, Curl):
            with subject.open(big, state, drop_page_cache=True) as target:
                pipe = f"curl -sS --fail {shlex.quote(target.stream)} | openssl dgst -sha256"
                bash = ["bash", "-o", "pipefail", "-c", pipe]
                seconds = timed(bash, timeout, what="curl | openssl")
                record(SEQ_COLD, big.size / seconds / 1e9)
        elif isinstance(subject, Download):
            with subject.open(big, state, drop_page_cache=True) as target:
                digest = ["openssl", "dgst", "-sha256", str(target.file)]
                seconds = target.opened_in + timed(digest, timeout, what="openssl")
                record(SEQ_COLD, big.size / seconds / 1e9)
        else:
            raise unexpected(self, subject)


TTFT = Metric(
    "ttft",
    2,
    "time to first tensor ({model} safetensors, mount + header + 1 tensor)",
    SECONDS,
    (THROUGH_LAZYFS, Series(Download, "curl -o, then read the tensor")),
)
TTFT_MOUNT = Metric(
    "ttft_mount",
    2,
    "`lazyfs mount` within the time to first tensor",
    SECONDS,
    (THROUGH_LAZYFS,),
    in_table=False,  # the renderer's note on time to first tensor
)


class TimeToFirstTensor(Workload):
    """Wall time from nothing mounted (or downloaded), page cache dropped, to a subprocess having
    opened the sample model with safe_open and loaded its middle tensor."""

    title = "time to first tensor"
    metrics = (TTFT, TTFT_MOUNT)

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        state = stage.fresh_dir(subject.name)
        stage.cold(stage.model)
        started = time.perf_counter()
        with subject.open(stage.model, state, drop_page_cache=False) as target:
            if isinstance(subject, LazyfsMount):
                record(TTFT_MOUNT, target.opened_in)
            load_tensor(target.file, stage.tensor, stage.io_timeout)
            record(TTFT, time.perf_counter() - started)


FIRST_MIB = Metric(
    "first_mib",
    2,
    "first MiB at 3/4 of the {big} file (pread only, cold)",
    MILLISECONDS,
    (THROUGH_LAZYFS, THROUGH_RCLONE, Series(Download, "curl -o, then pread")),
)


class FirstMiB(Workload):
    """One 1 MiB pread 3/4 into the big file, cold; a mount's mount is not timed, a download is."""

    title = "first MiB"
    metrics = (FIRST_MIB,)

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        probe = stage.first_mib
        if probe is None:
            raise StepError("no first MiB offset picked")
        state = stage.fresh_dir(subject.name)
        with subject.open(stage.big, state, drop_page_cache=True) as target:
            seconds = preads(target.file, probe, stage.io_timeout, fadvise_random=False)[0]
            if subject.fetches_on_open:
                seconds += target.opened_in
            record(FIRST_MIB, seconds * 1000)


QUANTILES = {"p50": 0.5, "p99": 0.99}


def latency_metric(state: str, pattern: Pattern, quantile: str) -> Metric:
    title = f"random {pattern.count} x {pattern.label} preads, {state}, {quantile}"
    name = f"rand_{pattern.name}_{state}_{quantile}"
    others = (THROUGH_RCLONE, THROUGH_PASSTHROUGH) if state == "warm" else (THROUGH_RCLONE,)
    return Metric(name, 4, title, MILLISECONDS, (THROUGH_LAZYFS, *others))


LATENCY = {
    (state, pattern, quantile): latency_metric(state, pattern, quantile)
    for state in ("cold", "warm")
    for pattern in RANDOM_PATTERNS
    for quantile in QUANTILES
}
FETCHED = {
    pattern: Metric(
        f"rand_{pattern.name}_fetched",
        4,
        f"data fetched for the cold {pattern.count} x {pattern.label} preads (cache size after)",
        MEBIBYTES,
        (THROUGH_LAZYFS, THROUGH_RCLONE),
    )
    for pattern in RANDOM_PATTERNS
}


class RandomReads(Workload):
    """Preads at random offsets with posix_fadvise(RANDOM), each pattern on a new mount: cold (a
    fresh cache, then what it fetched) and warm (a cache filled by a full read); the passthrough
    warm only (the local file, page cache dropped)."""

    title = "random preads, cold and warm"
    metrics = (*LATENCY.values(), *FETCHED.values())

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        if isinstance(subject, Passthrough):
            for pattern in RANDOM_PATTERNS:
                with subject.open(stage.big, stage.scratch, drop_page_cache=True) as target:
                    self.preads(target.file, stage, pattern, "warm", record)
            return
        if not isinstance(subject, Mount):
            raise unexpected(self, subject)
        big, timeout = stage.big, stage.io_timeout
        for pattern in RANDOM_PATTERNS:
            state = stage.fresh_dir(subject.name)
            with subject.open(big, state, drop_page_cache=True) as target:
                self.preads(target.file, stage, pattern, "cold", record)
            record(FETCHED[pattern], subject.fetched_bytes(state) / MIB)
        state = stage.fresh_dir(subject.name)
        with subject.open(big, state, drop_page_cache=False) as target:
            dd(target.file, timeout)  # fills the cache
        for pattern in RANDOM_PATTERNS:
            with subject.open(big, state, drop_page_cache=True, warm=True) as target:
                self.preads(target.file, stage, pattern, "warm", record)

    @staticmethod
    def preads(
        path: Path, stage: Stage, pattern: Pattern, state: str, record: StepRecorder
    ) -> None:
        latencies = preads(path, stage.probes[pattern], stage.io_timeout, fadvise_random=True)
        for quantile, fraction in QUANTILES.items():
            record(LATENCY[state, pattern, quantile], percentile(latencies, fraction) * 1000)


MANIFEST_BUILD = Series(LocalDisk, tag="manifest_build")
HASHLIB = {
    2: Series(LocalDisk, "hashlib sha256, 2 threads (a half each)", tag="hashlib_2threads"),
    1: Series(LocalDisk, "hashlib sha256, 1 thread", tag="hashlib_1thread"),
}
HASHING = Metric(
    "hash",
    6,
    "`lazyfs manifest build` of the {big} file (end to end, page cache hot)",
    GB_PER_S,
    (MANIFEST_BUILD, *HASHLIB.values()),
)


class Hashing(Workload):
    """The big file in the page cache: `lazyfs manifest build` (block digests and the whole-file
    digest, the CLI's start included) against hashlib reading 4 MiB at a time."""

    title = "hashing"
    metrics = (HASHING,)

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        big, timeout = stage.big, stage.io_timeout
        with subject.open(big, stage.fresh_dir(subject.name), drop_page_cache=False) as target:
            dd(target.file, timeout)  # page cache hot for all three
            # hash_dir holds a hard link of the file: the served manifest stays as it is
            build = [*LAZYFS, "manifest", "build", str(stage.hash_dir), "--block-size", BLOCK_SIZE]
            seconds = timed(build, timeout, what="lazyfs manifest build")
            record(HASHING, big.size / seconds / 1e9, MANIFEST_BUILD)
            for threads, series in HASHLIB.items():
                record(HASHING, big.size / hash_with_threads(target.file, threads) / 1e9, series)


ONE_READER = Series(LazyfsMount, "lazyfs, one reader alone", tag="lazyfs_one_reader")
READERS = Metric(
    "readers",
    7,
    f"{SHARDS} readers at once, one {{shard}} shard each, cold (aggregate)",
    GB_PER_S,
    (THROUGH_LAZYFS, ONE_READER),
)
READERS_RSS = Metric(
    "readers_rss",
    7,
    f"daemon peak RSS (VmHWM) after the {SHARDS} readers",
    MEGABYTES,
    (THROUGH_LAZYFS,),
)
READERS_DUPLICATES = Metric(
    "readers_duplicates",
    7,
    f"repeated requests for a (file, range), {SHARDS} readers (origin's log)",
    REQUESTS,
    (THROUGH_LAZYFS,),
)
READERS_SENT = Metric(
    "readers_sent",
    7,
    f"bytes the origin sent over the shards' size, {SHARDS} readers",
    TIMES,
    (THROUGH_LAZYFS,),
)


class ManyReaders(Workload):
    """A sharded model (SHARDS files of random bytes): one dd of one shard on a cold mount, then
    on a new cold mount one dd per shard, all at once; what the origin's log says was fetched."""

    title = "many readers"
    metrics = (READERS, READERS_RSS, READERS_DUPLICATES, READERS_SENT)

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        if not isinstance(subject, LazyfsMount):
            raise unexpected(self, subject)
        shards, timeout = stage.shards, stage.io_timeout
        first = shards[0]
        with subject.open(first, stage.fresh_dir(subject.name), drop_page_cache=True) as target:
            record(READERS, dd(target.file, timeout), ONE_READER)
        origin = stage.running_origin
        total = sum(shard.size for shard in shards)
        with subject.open(first, stage.fresh_dir(subject.name), drop_page_cache=True) as target:
            origin.clear_log()  # what the mount fetched to start is not the readers'
            paths = [target.file.parent / shard.name for shard in shards]
            seconds = dd_at_once(paths, timeout)
            record(READERS, total / seconds / 1e9, THROUGH_LAZYFS)
            record(READERS_RSS, peak_rss_mib(target.daemon) * MIB / 1e6)
        # After the unmount: nothing of this mount is still in flight.
        repeated, sent = fetched(origin.requests(), shards)
        record(READERS_DUPLICATES, repeated)
        record(READERS_SENT, sent / total)


def fetched(log: list[AccessRecord], files: list[Served]) -> tuple[int, int]:
    """From an origin's access log, the GETs of ``files``: how many asked for a (path, range)
    an earlier one had asked for, and the bytes they were sent."""
    paths = {f"/{served.path.parent.name}/{served.name}" for served in files}
    gets = [record for record in log if record.method == "GET" and record.path in paths]
    requested = Counter((record.path, record.range) for record in gets)
    return sum(count - 1 for count in requested.values()), sum(r.bytes_sent for r in gets)


STARTS = 5  # mounts (and status calls) per run, of which the median is recorded
STARTUP_MOUNT = Metric(
    "startup_mount",
    8,
    f"`lazyfs mount URL MNT` until it returns a live mount ({{model}} model, median of {STARTS})",
    SECONDS,
    (THROUGH_LAZYFS,),
)
STARTUP_STATUS = Metric(
    "startup_status",
    8,
    f"`lazyfs status MNT` (median of {STARTS})",
    SECONDS,
    (THROUGH_LAZYFS,),
)


class Startup(Workload):
    """Wall time of the CLI: `lazyfs mount` (a new mount and cache each time) until it returns
    with the mount live, and `lazyfs status` on a live mount."""

    title = "startup"
    metrics = (STARTUP_MOUNT, STARTUP_STATUS)

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        if not isinstance(subject, LazyfsMount):
            raise unexpected(self, subject)
        mounts, statuses = [], []
        for _ in range(STARTS):
            state = stage.fresh_dir(subject.name)
            with subject.open(stage.model, state, drop_page_cache=False) as target:
                mounts.append(target.opened_in)
                status = [*LAZYFS, "status", str(target.file.parent)]
                statuses.append(timed(status, 60, what="lazyfs status"))
        record(STARTUP_MOUNT, statistics.median(mounts))
        record(STARTUP_STATUS, statistics.median(statuses))


WORKLOADS: tuple[Workload, ...] = (
    Sequential(),
    TimeToFirstTensor(),
    FirstMiB(),
    RandomReads(),
    Hashing(),
    ManyReaders(),
    Startup(),
    *MODEL_WORKLOADS,
    *XET_WORKLOADS,
    *FLEET_WORKLOADS,
)
# What `scripts/bench --only NAME` runs alone.
SECTIONS: dict[str, tuple[Workload, ...]] = {"xet": XET_WORKLOADS, "fleet": FLEET_WORKLOADS}


def all_metrics() -> list[Metric]:
    return [metric for workload in WORKLOADS for metric in workload.metrics]
