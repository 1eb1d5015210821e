"""Issue 13's workloads: a safetensors file stored in Xet, read through three mounts of the same
Hugging Face repository side by side: Xet mode (the default: windows proven against the
listing's xetHash), whole-file mode (``--no-xet``: the file streamed and checked whole before
its first byte is served) and block-manifest mode (the same repository at a branch that also
commits a ``lazyfs-manifest.json`` of 4 MiB blocks).

The origin is the tests' fakes, in this process, on 127.0.0.1: a fake Xet CAS
(tests/fakexet.py) filled by the real ``hf_xet`` client's upload, and a fake Hub
(tests/fakehubs.py) that lists the file's xetHash and serves ``resolve`` through its CDN. What
was fetched and asked is read from their counters (CAS xorb bytes, CDN bytes, requests by kind),
from a mount's start to its unmount, so read-ahead that finishes after a read counts too. Their
threads serve while this process waits for its readers (dd, a pread helper: other processes),
so they do not compete with the measuring for the GIL.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from safetensors.numpy import save_file

from scripts.benchmark.commands import LAZYFS, StepError, progress, run
from scripts.benchmark.metrics import (
    CPU_PER_GB,
    GB_PER_S,
    MEBIBYTES,
    MILLISECONDS,
    PERCENT,
    REQUESTS_PER_GIB,
    Metric,
    Series,
)
from scripts.benchmark.reads import GIB, MIB, Probe, cpu_seconds, dd, preads, size_label
from scripts.benchmark.results import StepRecorder
from scripts.benchmark.stage import BLOCK_SIZE, Served, Stage
from scripts.benchmark.subjects import LazyfsMount, Subject
from scripts.benchmark.workload import Workload, unexpected
from tests.fakehubs import FakeHub, fake_hub, sha256_of
from tests.fakexet import FakeXetCas, fake_xet_cas, upload

ORIGIN = (
    f"Xet section's origin: the tests' fake Hub, CDN and Xet CAS (Python http.server) in the "
    f"bench process on 127.0.0.1; hf_xet {importlib.metadata.version('hf_xet')} uploaded to it"
)
REPO = "bench/xet-model"
MANIFEST_BRANCH = "with-manifest"  # the same files, and a lazyfs-manifest.json
TENSOR_VALUES = 1 << 20  # float32: each layer's large tensor is 4 MiB ...
NORM_VALUES = 4096  # ... followed by a 16 KiB one, so tensors sit on no block boundary
CONFIG = b'{"model_type": "llama", "hidden_size": 1024}\n'
UPLOAD_TIMEOUT = 1800.0  # hf_xet chunking, compressing and posting a GiB to a Python server


@dataclass(frozen=True)
class Fetched:
    """What the fakes have sent and been asked, so far."""

    data_bytes: int  # CAS xorb bytes + CDN bytes
    requests: Counter[str]  # by kind: the CAS's kinds, "token", "hub-api", "hub-cdn"

    def __sub__(self, other: Fetched) -> Fetched:
        requests = Counter(self.requests)
        requests.subtract(other.requests)
        return Fetched(self.data_bytes - other.data_bytes, requests)


@dataclass
class XetOrigin:
    """The fakes serving the repository, the file's local copy and the tensor read from it."""

    hub: FakeHub
    cas: FakeXetCas
    served: Served  # the local copy (what reads are checked against); its URL is unused
    tensor: str
    probe: Probe  # one pread of that tensor's bytes
    stack: contextlib.ExitStack

    @classmethod
    def start(cls, stage: Stage) -> XetOrigin:
        directory = stage.www / f"xet-{size_label(stage.xet_size)}"
        model = directory / "model.safetensors"
        write_model(model, stage.xet_size, stage.fresh)
        (directory / "config.json").write_bytes(CONFIG)
        progress(f"lazyfs manifest build {directory}")
        build = [*LAZYFS, "manifest", "build", str(directory), "--block-size", BLOCK_SIZE]
        run(build, 600, what="lazyfs manifest build")
        data = model.read_bytes()
        files = {"config.json": CONFIG, "model.safetensors": data}
        manifest = (directory / "lazyfs-manifest.json").read_bytes()
        stack = contextlib.ExitStack()
        try:
            cas = stack.enter_context(fake_xet_cas())
            hub = stack.enter_context(fake_hub("hf", cas=cas))
            progress(f"uploading {model.name} ({len(data) / MIB:.0f} MiB) with hf_xet")
            started = time.monotonic()
            # Uploaded here, with room for a GiB; the hub then finds it stored and uploads nothing.
            xet_hash = upload(cas, {model.name: data}, UPLOAD_TIMEOUT)[model.name]
            hub.xet_hashes[sha256_of(data)] = xet_hash
            progress(f"  uploaded in {time.monotonic() - started:.0f}s, xetHash {xet_hash[:12]}")
            repo = hub.add_repo(REPO, files)
            hub.push(repo, {**files, "lazyfs-manifest.json": manifest}, MANIFEST_BRANCH)
            tensor, start, end = middle_tensor(model)
            probe = Probe.of(model, [start], end - start)
        except BaseException:
            stack.close()
            raise
        return cls(hub, cas, Served(model, hub.endpoint), tensor, probe, stack)

    def close(self) -> None:
        self.stack.close()

    @property
    def size(self) -> int:
        return self.served.size

    def describe(self) -> dict[str, str]:
        """What the tables' titles say of the file and the tensor (Parameters' fields)."""
        header = json.loads(read_header(self.served.path))
        tensors = sum(1 for name in header if name != "__metadata__")
        offset = self.probe.offsets[0]
        return {
            "xet": f"{self.size / 1e9:.2f} GB, {tensors} tensors",
            "xet_tensor": f"{self.probe.size / MIB:.1f} MiB at {offset / self.size:.0%}",
        }

    def fetched(self) -> Fetched:
        """Read when no mount is up: nothing is being counted meanwhile."""
        requests = Counter(self.cas.counts)
        for request in self.hub.requests:
            kind = "token" if "/xet-read-token/" in request.path else f"hub-{request.server}"
            requests[kind] += 1
        return Fetched(self.cas.xorb_bytes_sent + self.hub.cdn_bytes_sent, requests)


def write_model(path: Path, size: int, fresh: bool) -> None:
    """About ``size`` bytes of safetensors: layers of a 4 MiB and a 16 KiB tensor, whole
    numbers as float32 (LZ4 and byte grouping have something to do, as on real weights)."""
    layers = size // (4 * (TENSOR_VALUES + NORM_VALUES))
    if not fresh and path.exists() and tensors_in(path) == 2 * layers:
        return
    progress(f"writing a {size_label(size)} safetensors file of {2 * layers} tensors to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(13)
    arrays = {}
    for layer in range(layers):
        for name, values in (("mlp.weight", TENSOR_VALUES), ("norm.weight", NORM_VALUES)):
            weights = (rng.standard_normal(values, dtype=np.float32) * 8).round()
            arrays[f"model.layers.{layer}.{name}"] = weights
    save_file(arrays, str(path))


def read_header(path: Path) -> bytes:
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        return handle.read(length)


def tensors_in(path: Path) -> int:
    try:
        return sum(1 for name in json.loads(read_header(path)) if name != "__metadata__")
    except (OSError, ValueError):
        return 0


def middle_tensor(path: Path) -> tuple[str, int, int]:
    """The large tensor closest to the middle of the file: its name and byte span."""
    header = read_header(path)
    base = 8 + len(header)
    spans = [
        (name, base + entry["data_offsets"][0], base + entry["data_offsets"][1])
        for name, entry in json.loads(header).items()
        if name != "__metadata__" and name.endswith("mlp.weight")
    ]
    middle = path.stat().st_size // 2
    return min(spans, key=lambda span: abs(span[1] - middle))


class XetMount(LazyfsMount):
    """A lazyfs mount of the fake Hub's repository: Xet mode (the default)."""

    name = "lazyfs_xet"
    revision: ClassVar[str] = "main"
    verified_by: ClassVar[str] = "xet"  # what `lazyfs status` must say of the file

    @property
    def origin(self) -> XetOrigin:
        if self.stage.xet is None:
            raise StepError("the fake Hub and Xet CAS are not running")
        return self.stage.xet

    def source(self, served: Served) -> str:
        return f"hf://{REPO}@{self.revision}"

    def environment(self) -> dict[str, str]:
        environment = dict(os.environ, HF_ENDPOINT=self.origin.hub.endpoint)
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE"):
            environment.pop(name, None)
        return environment

    def make_cold(self, served: Served, warm: bool = False) -> None:
        # The fakes serve from this process's memory: there is no origin file to warm.
        self.stage.drop_caches()

    def check_mode(self, path: Path) -> None:
        """Fail the step unless the mount verifies ``path`` the way this subject is about."""
        status = [*LAZYFS, "status", str(self.mountpoint), "--json"]
        report = json.loads(run(status, 60, what="lazyfs status").stdout)
        found = [item for item in report["files"] if item["path"] == path.name]
        mode = found[0].get("verified_by") if found else None
        if mode != self.verified_by:
            raise StepError(f"{path.name} is verified by {mode}, not {self.verified_by}")


class XetWholeFile(XetMount):
    name = "lazyfs_xet_whole"
    options = ("--tensor-aware", "--no-xet")
    verified_by = "whole"


class XetManifest(XetMount):
    name = "lazyfs_xet_manifest"
    revision = MANIFEST_BRANCH
    verified_by = "manifest"


XET_SUBJECTS: tuple[type[Subject], ...] = (XetMount, XetWholeFile, XetManifest)

XET = Series(XetMount, "lazyfs, Xet mode")
WHOLE = Series(XetWholeFile, "whole-file mode (--no-xet)")
MANIFEST = Series(XetManifest, f"block manifest ({BLOCK_SIZE[:-1]} MiB blocks)")

XET_FIRST_TENSOR = Metric(
    "xet_first_tensor",
    13,
    "Xet file (safetensors, {xet}): first tensor from the middle ({xet_tensor}), one pread, "
    "cold mount",
    MILLISECONDS,
    (XET, WHOLE, MANIFEST),
)
XET_FIRST_FETCHED = Metric(
    "xet_first_fetched",
    13,
    "data fetched for that tensor (CAS xorb + CDN bytes, mount to unmount)",
    MEBIBYTES,
    (XET, WHOLE, MANIFEST),
)
XET_FIRST_ORIGIN_CPU = Metric(
    "xet_first_origin_cpu",
    13,
    "the fakes' CPU time for that tensor (the bench process, mount to unmount)",
    MILLISECONDS,
    (XET, WHOLE, MANIFEST),
)
XET_FIRST_SHARE = Metric(
    "xet_first_share",
    13,
    "Xet mode: data fetched for that tensor, % of the file",
    PERCENT,
    (XET,),
)
XET_SEQ_COLD = Metric(
    "xet_seq_cold", 13, "cold sequential read of the Xet file (dd)", GB_PER_S, (XET, MANIFEST)
)
XET_CPU = Metric(
    "xet_cpu",
    13,
    "daemon CPU time (user + system) per GB of that read",
    CPU_PER_GB,
    (XET, MANIFEST),
)
XET_ORIGIN_CPU = Metric(
    "xet_origin_cpu",
    13,
    "the fakes' CPU time per GB of that read (the bench process: Hub, CDN and CAS threads)",
    CPU_PER_GB,
    (XET, MANIFEST),
)
XET_REQUESTS = Metric(
    "xet_requests",
    13,
    "requests per GiB of that read (Hub, CDN and CAS, mount to unmount)",
    REQUESTS_PER_GIB,
    (XET, MANIFEST),
)
# The CAS's request kinds (tests/fakexet.py) and the Hub's token requests, by what they are for.
REQUEST_KINDS = {
    "token": ("CAS read tokens", ("token",)),
    "chunk_hashes": ("file-chunk-hashes (proofs)", ("file-chunk-hashes",)),
    "reconstructions": ("reconstructions", ("reconstructions-v2", "reconstructions-v1")),
    "xorb_data": ("xorb data (signed URLs)", ("xorb-data",)),
}
XET_REQUESTS_BY_KIND = {
    name: Metric(
        f"xet_requests_{name}", 13, f"Xet mode: {label} requests per GiB", REQUESTS_PER_GIB, (XET,)
    )
    for name, (label, _) in REQUEST_KINDS.items()
}


def xet_subject(workload: Workload, subject: Subject) -> XetMount:
    if not isinstance(subject, XetMount):
        raise unexpected(workload, subject)
    return subject


class XetFirstTensor(Workload):
    """A cold mount (fresh cache, page cache dropped), then one pread of the whole middle tensor
    in a helper process, timed there and checked against the file; what the fakes sent, and
    their CPU time, from the mount's start to its unmount."""

    title = "Xet file: first tensor"
    metrics = (XET_FIRST_TENSOR, XET_FIRST_FETCHED, XET_FIRST_ORIGIN_CPU, XET_FIRST_SHARE)

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        mount = xet_subject(self, subject)
        origin = mount.origin
        before, served = origin.fetched(), time.process_time()
        state = stage.fresh_dir(mount.name)
        with mount.open(origin.served, state, drop_page_cache=True) as target:
            seconds = preads(target.file, origin.probe, stage.io_timeout, fadvise_random=True)[0]
            mount.check_mode(target.file)
        serving = time.process_time() - served  # this process waited for its helpers meanwhile
        fetched = (origin.fetched() - before).data_bytes
        record(XET_FIRST_TENSOR, seconds * 1000)
        record(XET_FIRST_ORIGIN_CPU, serving * 1000)
        record(XET_FIRST_FETCHED, fetched / MIB)
        if XET_FIRST_SHARE.series_of(type(mount)):
            record(XET_FIRST_SHARE, 100 * fetched / origin.size)


class XetSequential(Workload):
    """dd of the whole file on a cold mount (fresh cache, page cache dropped); the daemon's and
    the fakes' CPU time over it, and the requests the fakes answered from the mount's start to
    its unmount."""

    title = "Xet file: cold sequential read"
    metrics = (XET_SEQ_COLD, XET_CPU, XET_ORIGIN_CPU, XET_REQUESTS, *XET_REQUESTS_BY_KIND.values())

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        mount = xet_subject(self, subject)
        origin = mount.origin
        before = origin.fetched()
        state = stage.fresh_dir(mount.name)
        with mount.open(origin.served, state, drop_page_cache=True) as target:
            # This process only waits for dd meanwhile: its CPU time is the fakes' serving.
            cpu, served = cpu_seconds(target.daemon), time.process_time()
            record(XET_SEQ_COLD, dd(target.file, stage.io_timeout))
            gigabytes = origin.size / 1e9
            record(XET_CPU, (cpu_seconds(target.daemon) - cpu) / gigabytes)
            record(XET_ORIGIN_CPU, (time.process_time() - served) / gigabytes)
            mount.check_mode(target.file)
        requests = (origin.fetched() - before).requests
        gibibytes = origin.size / GIB
        record(XET_REQUESTS, sum(requests.values()) / gibibytes)
        for name, (_, kinds) in REQUEST_KINDS.items():
            metric = XET_REQUESTS_BY_KIND[name]
            if metric.series_of(type(mount)):
                record(metric, sum(requests[kind] for kind in kinds) / gibibytes)


XET_WORKLOADS: tuple[Workload, ...] = (XetFirstTensor(), XetSequential())
