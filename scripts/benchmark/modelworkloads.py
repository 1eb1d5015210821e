"""Issue 12's workloads: models loaded the way their users load them (transformers, safetensors,
a GGUF reader, sentence-transformers), from lazyfs with and without --tensor-aware, against
downloading every file first and against the local disk.

Each load runs in a process of its own (scripts/benchmark/modelload.py) that did its imports
before the mount or the download started, and times the load alone; every load is checked
against a load of the local copy (per-tensor hashes, the embeddings) and a step whose load
differs fails loudly. These workloads take part in the first MODEL_RUNS runs only.

"cold" here: a new mount on an empty cache (its files have no page cache yet), the origin's
files read once (nginx serves from memory). "page cache dropped" for a local copy or a mount's
cache: those files only are dropped (posix_fadvise), not the whole page cache, so the load
process's own pages (torch's) stay.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from scripts.benchmark.commands import StepError
from scripts.benchmark.metrics import (
    MEBIBYTES,
    MILLISECONDS,
    PERCENT,
    REQUESTS,
    SECONDS,
    TIMES,
    Metric,
    Series,
)
from scripts.benchmark.modeljob import LoadProcess, load_process
from scripts.benchmark.models import block_size, first_tensor, range_hash, served_files
from scripts.benchmark.reads import MIB
from scripts.benchmark.results import StepRecorder
from scripts.benchmark.stage import Served, Stage
from scripts.benchmark.subjects import (
    Counters,
    Download,
    LazyfsMount,
    LazyfsPlain,
    RepoDownload,
    Subject,
)
from scripts.benchmark.workload import THROUGH_LAZYFS, Workload, unexpected

MODEL_RUNS = 1  # each loads gigabytes a few times over: one run keeps the section to minutes
HOT_SHARE_GOAL = 1.0  # % of the cold load's FUSE reads a second load on the same mount may cost

PLAIN = Series(LazyfsPlain, "lazyfs --no-tensor-aware")
THEN_LOAD = Series(RepoDownload, "curl every file, then load (both timed)")
DOWNLOAD_ALONE = Series(RepoDownload, "curl every file (download alone)", tag="download_alone")
LOCAL_LOAD = Series(RepoDownload, "load the local copy, page cache dropped", tag="local_copy")
SLOWER_OF = Series(RepoDownload, "max(download alone, local load)", tag="download_or_local")
COLD_READS = Series(LazyfsMount, "lazyfs, the cold load before it", tag="lazyfs_cold")

LLAMA_COLD = Metric(
    "llama_cold",
    9,
    "cold load of a Llama ({llama}): `from_pretrained` + tokenizer + every parameter read",
    SECONDS,
    (THROUGH_LAZYFS, PLAIN, THEN_LOAD, DOWNLOAD_ALONE, LOCAL_LOAD, SLOWER_OF),
)
LLAMA_COLD_MOUNT = Metric(
    "llama_cold_mount",
    9,
    "`lazyfs mount` before the cold load (not in its time)",
    SECONDS,
    (THROUGH_LAZYFS, PLAIN),
    in_table=False,  # the renderer's note on the cold load
)
LLAMA_COLD_FETCHED = Metric(
    "llama_cold_fetched",
    9,
    "data the cold load fetched (status bytes_fetched) over the model's size",
    TIMES,
    (THROUGH_LAZYFS, PLAIN),
)
LLAMA_WARM = Metric(
    "llama_warm",
    9,
    "warm load (disk cache from the cold load, new mount, its page cache dropped)",
    SECONDS,
    (THROUGH_LAZYFS, PLAIN, LOCAL_LOAD),
)
LLAMA_HOT = Metric(
    "llama_hot",
    9,
    "hot load (a second process, the same mount)",
    SECONDS,
    (THROUGH_LAZYFS, PLAIN),
)
LLAMA_HOT_READS = Metric(
    "llama_hot_reads",
    9,
    "FUSE read requests of the hot load (status read_requests)",
    REQUESTS,
    (THROUGH_LAZYFS, PLAIN, COLD_READS),
)
LLAMA_HOT_SHARE = Metric(
    "llama_hot_share",
    9,
    "the hot load's FUSE read requests, % of the cold load's",
    PERCENT,
    (THROUGH_LAZYFS, PLAIN),
)

SHARD_THEN_READ = Series(Download, "curl -o the shard, then the same read (both timed)")
ORIGIN_LOG = Series(LazyfsMount, "lazyfs, by the origin's access log", tag="lazyfs_origin_log")
ALLOWANCE = Series(LazyfsMount, "the tensor + 2 blocks + 1 MiB", tag="allowance")
FIRST_TENSOR = Metric(
    "first_tensor",
    10,
    "first tensor, cold mount (not timed): `safe_open` of the last shard + `get_tensor` of "
    "{first_tensor} ({first_tensor_size})",
    MILLISECONDS,
    (THROUGH_LAZYFS, PLAIN, SHARD_THEN_READ),
)
FIRST_TENSOR_FETCHED = Metric(
    "first_tensor_fetched",
    10,
    "data fetched for the first tensor (status bytes_fetched)",
    MEBIBYTES,
    (
        THROUGH_LAZYFS,
        PLAIN,
        ORIGIN_LOG,
        ALLOWANCE,
        Series(Download, "curl -o the shard (its size)"),
    ),
)

GGUF_READ = Metric(
    "gguf_read",
    11,
    "cold read of a GGUF file ({gguf}): `GGUFReader` (mmap) + every tensor, front to back",
    SECONDS,
    (
        THROUGH_LAZYFS,
        PLAIN,
        Series(RepoDownload, "curl, then read (both timed)"),
        Series(RepoDownload, "read the local copy, page cache dropped", tag="local_copy"),
    ),
)

SENTENCE_LOAD = Metric(
    "sentence_load",
    12,
    "cold load of a sentence-transformers BERT ({sentence}) + embeddings of 4 sentences",
    SECONDS,
    (
        THROUGH_LAZYFS,
        PLAIN,
        Series(RepoDownload, "curl every file, then load (both timed)"),
        Series(RepoDownload, "load the local copy, page cache dropped", tag="local_copy"),
    ),
)


@dataclass(frozen=True)
class Loaded:
    """One load on a mount: its answer, and what the mount counted while it ran."""

    seconds: float
    counted: Counters


class ModelWorkload(Workload):
    """A load process of ``kind`` per load; ``check`` holds every answer against the local
    copy's."""

    most_runs = MODEL_RUNS
    kind: ClassVar[str]  # modelload.py's

    def load(self, process: LoadProcess, stage: Stage, where: str, **request: object) -> float:
        answer = process.load(stage.io_timeout, **request)
        self.check(answer, stage, where)
        return float(answer["seconds"])

    def load_on_mount(
        self, mount: LazyfsMount, process: LoadProcess, stage: Stage, **request: object
    ) -> Loaded:
        before = mount.counters()
        seconds = self.load(process, stage, mount.name, **request)
        return Loaded(seconds, mount.counters() - before)

    @abstractmethod
    def check(self, answer: dict[str, Any], stage: Stage, where: str) -> None:
        """Raise StepError if the load gave other tensors than a load of the local copy."""


class WholeModel(ModelWorkload):
    """A whole model loaded: cold on each lazyfs (``on_mount``), and by the repository's
    download (every file with curl, then the load: both timed), then by a new process from that
    copy with its page cache dropped (the local load)."""

    cold: ClassVar[Metric]  # its series: lazyfs, PLAIN, the download's, then the local copy's
    then_load: ClassVar[Series]
    local_copy: ClassVar[Series]

    @abstractmethod
    def served(self, stage: Stage) -> Served:
        """A file of the model's directory: the one a load is pointed at, or any."""

    @abstractmethod
    def request(self, loaded: Path, stage: Stage) -> dict[str, object]:
        """What the load process is asked, for ``loaded``: the served file on a mount or a copy."""

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        served = self.served(stage)
        state = stage.fresh_dir(subject.name)
        if isinstance(subject, LazyfsMount):
            self.on_mount(subject, served, state, stage, record)
        elif isinstance(subject, RepoDownload):
            with load_process(self.kind, stage.work, stage.logs) as process:
                stage.warm_origin(served)
                with subject.open(served, state, drop_page_cache=False) as target:
                    request = self.request(target.file, stage)
                    loading = self.load(process, stage, "the download", **request)
                    record(self.cold, target.opened_in + loading, self.then_load)
                    self.downloaded(target.opened_in, record)
                    with load_process(self.kind, stage.work, stage.logs) as local:
                        stage.evict(state)
                        local_seconds = self.load(local, stage, "the local copy", **request)
            self.local(local_seconds, target.opened_in, record)
        else:
            raise unexpected(self, subject)

    def on_mount(
        self, mount: LazyfsMount, served: Served, state: Path, stage: Stage, record: StepRecorder
    ) -> None:
        with load_process(self.kind, stage.work, stage.logs) as process:
            stage.warm_origin(served)
            with mount.open(served, state, drop_page_cache=False) as target:
                cold = self.load_on_mount(mount, process, stage, **self.request(target.file, stage))
        record(self.cold, cold.seconds)

    def downloaded(self, download: float, record: StepRecorder) -> None:
        """Record what the download alone took, if this workload says."""

    def local(self, seconds: float, download: float, record: StepRecorder) -> None:
        record(self.cold, seconds, self.local_copy)


class HashedModel(WholeModel):
    """A model whose load answers with a hash of every tensor, held against the reference's."""

    reference: ClassVar[str]  # the model's name in Models

    def check(self, answer: dict[str, Any], stage: Stage, where: str) -> None:
        expected = stage.models.reference_hashes(self.reference)
        got: dict[str, str] = answer["hashes"]
        names = sorted(expected.keys() | got.keys())
        wrong = [name for name in names if expected.get(name) != got.get(name)]
        if wrong:
            raise StepError(
                f"{len(wrong)} of {len(expected)} tensors loaded from {where} differ from a "
                f"local load (first: {wrong[0]})"
            )


class LlamaLoad(HashedModel):
    """The Llama with `from_pretrained` and its tokenizer, every parameter read whole: cold (new
    mount, empty cache), hot (a second process on that mount) and warm (a new mount on the
    cache the cold load filled)."""

    title = "Llama load: cold, hot, warm"
    metrics = (
        LLAMA_COLD,
        LLAMA_COLD_MOUNT,
        LLAMA_COLD_FETCHED,
        LLAMA_WARM,
        LLAMA_HOT,
        LLAMA_HOT_READS,
        LLAMA_HOT_SHARE,
    )
    kind = "causal"
    reference = "llama"
    cold = LLAMA_COLD
    then_load = THEN_LOAD
    local_copy = LOCAL_LOAD

    def served(self, stage: Stage) -> Served:
        return stage.served(stage.models.llama / "config.json")

    def request(self, loaded: Path, stage: Stage) -> dict[str, object]:
        return {"path": loaded.parent}

    def on_mount(
        self, mount: LazyfsMount, served: Served, state: Path, stage: Stage, record: StepRecorder
    ) -> None:
        size = repo_bytes(served.path.parent)
        with load_process(self.kind, stage.work, stage.logs) as process:
            stage.warm_origin(served)
            with mount.open(served, state, drop_page_cache=False) as target:
                record(LLAMA_COLD_MOUNT, target.opened_in)
                request = self.request(target.file, stage)
                cold = self.load_on_mount(mount, process, stage, **request)
                record(LLAMA_COLD, cold.seconds)
                record(LLAMA_COLD_FETCHED, cold.counted.bytes_fetched / size)
                with load_process(self.kind, stage.work, stage.logs) as second:
                    hot = self.load_on_mount(mount, second, stage, **request)
        record(LLAMA_HOT, hot.seconds)
        record(LLAMA_HOT_READS, hot.counted.read_requests, own(LLAMA_HOT_READS, mount))
        if type(mount) is LazyfsMount:
            record(LLAMA_HOT_READS, cold.counted.read_requests, COLD_READS)
        cold_reads = max(cold.counted.read_requests, 1)
        record(LLAMA_HOT_SHARE, 100 * hot.counted.read_requests / cold_reads)
        with load_process(self.kind, stage.work, stage.logs) as process:
            stage.evict(state)
            with mount.open(served, state, drop_page_cache=False) as target:
                warm = self.load_on_mount(mount, process, stage, **self.request(target.file, stage))
        record(LLAMA_WARM, warm.seconds)

    def downloaded(self, download: float, record: StepRecorder) -> None:
        record(LLAMA_COLD, download, DOWNLOAD_ALONE)

    def local(self, seconds: float, download: float, record: StepRecorder) -> None:
        record(LLAMA_COLD, seconds, LOCAL_LOAD)
        record(LLAMA_WARM, seconds, LOCAL_LOAD)
        record(LLAMA_COLD, max(download, seconds), SLOWER_OF)


class GgufRead(HashedModel):
    """The GGUF file with gguf's GGUFReader (a memory map of the file), every tensor's data
    read in file order."""

    title = "GGUF read"
    metrics = (GGUF_READ,)
    kind = "gguf"
    reference = "gguf"
    cold = GGUF_READ
    then_load = GGUF_READ.series[2]
    local_copy = GGUF_READ.series[3]

    def served(self, stage: Stage) -> Served:
        return stage.served(stage.models.gguf)

    def request(self, loaded: Path, stage: Stage) -> dict[str, object]:
        return {"path": loaded}


class SentenceLoad(WholeModel):
    """The sentence-transformers model with SentenceTransformer(DIR) and the embeddings of a few
    sentences, which must equal (np.array_equal) those of a load of the local copy."""

    title = "sentence-transformers load"
    metrics = (SENTENCE_LOAD,)
    kind = "sentence"
    cold = SENTENCE_LOAD
    then_load = SENTENCE_LOAD.series[2]
    local_copy = SENTENCE_LOAD.series[3]

    def served(self, stage: Stage) -> Served:
        return stage.served(stage.models.sentence / "modules.json")

    def request(self, loaded: Path, stage: Stage) -> dict[str, object]:
        return {"path": loaded.parent, "reference": stage.models.embeddings()}

    def check(self, answer: dict[str, Any], stage: Stage, where: str) -> None:
        if not answer["equal"]:
            raise StepError(f"embeddings from {where} differ from those of a local load")


class FirstTensor(ModelWorkload):
    """One tensor from the middle of the Llama's last shard (the one closest to 8 MiB): a new
    process does `safe_open` and `get_tensor`, timed, on a cold mount whose mount is not timed;
    the reference downloads the shard (timed), then does the same. What the mount fetched for
    it: its status counters, and the origin's access log from the mount on to the unmount."""

    title = "first tensor"
    metrics = (FIRST_TENSOR, FIRST_TENSOR_FETCHED)
    kind = "tensor"

    def __init__(self) -> None:
        self.expected = ""

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        shard = stage.models.last_shard
        place = first_tensor(shard)
        self.expected = range_hash(shard, place.start, place.end)
        served = stage.served(shard)
        state = stage.fresh_dir(subject.name)
        if isinstance(subject, LazyfsMount):
            origin = stage.running_origin
            with load_process(self.kind, stage.work, stage.logs) as process:
                stage.warm_origin(served)
                with subject.open(served, state, drop_page_cache=False) as target:
                    origin.clear_log()  # the mount's own start is not the tensor's
                    read = self.load_on_mount(
                        subject, process, stage, path=target.file, name=place.name
                    )
            sent = sum(line.bytes_sent for line in origin.requests() if line.method == "GET")
            record(FIRST_TENSOR, read.seconds * 1000)
            fetched = read.counted.bytes_fetched / MIB
            record(FIRST_TENSOR_FETCHED, fetched, own(FIRST_TENSOR_FETCHED, subject))
            if type(subject) is LazyfsMount:
                record(FIRST_TENSOR_FETCHED, sent / MIB, ORIGIN_LOG)
                allowance = place.size + 2 * block_size(served.path.parent) + MIB
                record(FIRST_TENSOR_FETCHED, allowance / MIB, ALLOWANCE)
        elif isinstance(subject, Download):
            with load_process(self.kind, stage.work, stage.logs) as process:
                stage.warm_origin(served)
                with subject.open(served, state, drop_page_cache=False) as target:
                    request = {"path": target.file, "name": place.name}
                    seconds = self.load(process, stage, "the download", **request)
                    record(FIRST_TENSOR, (target.opened_in + seconds) * 1000)
            record(FIRST_TENSOR_FETCHED, served.size / MIB)
        else:
            raise unexpected(self, subject)

    def check(self, answer: dict[str, Any], stage: Stage, where: str) -> None:
        if answer["hash"] != self.expected:
            raise StepError(f"the tensor read from {where} differs from the local file's bytes")


def own(metric: Metric, subject: Subject) -> Series:
    """The series of ``metric`` a subject records its own figure in (its first), where the
    subject records others too."""
    return metric.series_of(type(subject))[0]


def repo_bytes(directory: Path) -> int:
    """The size of every file the repository publishes."""
    return sum((directory / path).stat().st_size for path in served_files(directory))


MODEL_WORKLOADS: tuple[Workload, ...] = (LlamaLoad(), FirstTensor(), GgufRead(), SentenceLoad())
