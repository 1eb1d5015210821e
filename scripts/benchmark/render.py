"""Results to text: the table and summary a run prints, and docs/performance.md.

The doc is written only from the results of a full run on a committed tree: it states the commit
it was measured on, and a tree with uncommitted changes (or a --quick smoke run) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from scripts.benchmark.fleet import NODES as FLEET_NODES
from scripts.benchmark.fleet import WORKERS as FLEET_WORKERS
from scripts.benchmark.goals import goals_table
from scripts.benchmark.metrics import Metric, Series, Unit
from scripts.benchmark.modelworkloads import HOT_SHARE_GOAL, LLAMA_COLD_MOUNT, MODEL_RUNS
from scripts.benchmark.results import Results, ResultsError
from scripts.benchmark.stage import BLOCK_SIZE, RANDOM_1M, RANDOM_4K, SHARDS
from scripts.benchmark.workload import THROUGH_LAZYFS, Workload
from scripts.benchmark.workloads import STARTS, TTFT, TTFT_MOUNT, WORKLOADS

DOC = Path(__file__).resolve().parents[2] / "docs" / "performance.md"
DOC_RESULTS = DOC.with_suffix(".json")  # what DOC was rendered from, committed beside it
# What bounds each goal, written by hand after a full run; included below the goals table.
BOUNDS = DOC.with_name("performance-bounds.md")


def table_metrics(workloads: Sequence[Workload] = WORKLOADS) -> list[Metric]:
    """The table's rows: by section, then in the order the workloads declare them."""
    ranked = [
        ((metric.section, rank, position), metric)
        for rank, workload in enumerate(workloads)
        for position, metric in enumerate(workload.metrics)
        if metric.in_table
    ]
    return [metric for _, metric in sorted(ranked, key=lambda item: item[0])]


def cell(results: Results, key: str, unit: Unit) -> str:
    value = results.median(key)
    if value is None:
        reasons = results.errors.get(key) or ["not measured"]
        return f"failed: {reasons[0]}".replace("|", "\\|")
    text = unit.format(value)
    failed = len(results.errors.get(key, []))
    if failed:
        text += f" ({failed} of {failed + len(results.values[key])} runs failed)"
    return text


def ratio(results: Results, metric: Metric, other: Series) -> str:
    """>1: lazyfs is better."""
    mine, theirs = results.median(metric.key(metric.series[0])), results.median(metric.key(other))
    if mine is None or theirs is None or mine <= 0 or theirs <= 0:
        return "-"
    return f"{mine / theirs if metric.unit.higher_is_better else theirs / mine:.2f}"


def table(results: Results, metrics: Sequence[Metric] | None = None) -> str:
    lines = [
        "| measurement | lazyfs | alternative | alternative's figure | ratio (>1: lazyfs better) |",
        "|---|---|---|---|---|",
    ]
    parameters = asdict(results.parameters)
    for metric in table_metrics() if metrics is None else metrics:
        mine = cell(results, metric.key(metric.series[0]), metric.unit)
        if len(metric.series) == 1:  # lazyfs alone: nothing to compare with
            lines.append(f"| {metric.heading(parameters)} | {mine} | - | - | - |")
        for other in metric.series[1:]:
            lines.append(
                f"| {metric.heading(parameters)} | {mine} | {other.label} "
                f"| {cell(results, metric.key(other), metric.unit)} "
                f"| {ratio(results, metric, other)} |"
            )
    return "\n".join(lines)


def header(results: Results, workloads: Sequence[Workload] = WORKLOADS) -> str:
    """``workloads``: those measured (a section run alone: its own)."""
    fewer = fewer_runs(results.runs, workloads)
    return (
        f"Medians of {results.runs} run(s){fewer}. Ratio: lazyfs/alternative "
        "for throughput (GB/s, 10^9 bytes/s), alternative/lazyfs for latency, memory, CPU and "
        "data fetched: >1 means lazyfs is better."
    )


def fewer_runs(runs: int, workloads: Sequence[Workload] = WORKLOADS) -> str:
    """The sections whose workloads took part in fewer runs, and in how many: " (9-12: 1 run)"."""
    fewer: dict[int, list[int]] = {}
    for workload in workloads:
        if workload.runs(runs) < runs:
            own = [metric.section for metric in workload.metrics]
            fewer.setdefault(workload.runs(runs), []).extend(own)
    parts = []
    for count, sections in sorted(fewer.items()):
        low, high = min(sections), max(sections)
        span = f"{low}" if low == high else f"{low}-{high}"
        parts.append(f"{span}: {count} run{'s' if count > 1 else ''}")
    return f" ({'; '.join(parts)})" if parts else ""


def provenance(results: Results) -> str:
    """The commit measured; loud when it was not what the commit holds."""
    commit = results.commit[:7]
    if results.committed:
        return f"git {commit}"
    return f"git {commit} + UNCOMMITTED CHANGES ({len(results.changes)} files)"


def notes(results: Results) -> list[str]:
    mount = results.median(TTFT_MOUNT.key(THROUGH_LAZYFS))
    total = results.median(TTFT.key(THROUGH_LAZYFS))
    breakdown = []
    if mount is not None and total is not None:
        breakdown.append(
            f"time to first tensor through lazyfs: `lazyfs mount` returned after {mount:.2f}s "
            f"of the {total:.2f}s (medians)"
        )
    before_load = results.median(LLAMA_COLD_MOUNT.key(THROUGH_LAZYFS))
    if before_load is not None:
        breakdown.append(
            f"cold Llama load through lazyfs: `lazyfs mount` took {before_load:.2f}s before it "
            "(not in the load's time; a mount is made once and loaded from many times)"
        )
    return list(dict.fromkeys(breakdown + results.notes))


def machine(results: Results) -> list[str]:
    lines = []
    for line in results.machine:
        if line.startswith("lazyfs: "):
            line += f", {provenance(results)}"
        lines.append(f"- {line}")
    return lines


def summary(results: Results, workloads: Sequence[Workload] | None = None) -> str:
    """What a run prints on stdout: of ``workloads`` only, if given (a section run alone)."""
    metrics = table_metrics(workloads) if workloads is not None else None
    measured = WORKLOADS if workloads is None else workloads
    lines = ["", header(results, measured), table(results, metrics), ""]
    lines.append(goals_table(results, metrics))
    lines += ["", *machine(results)]
    lines += [f"note: {note}" for note in notes(results)]
    if not results.committed:
        lines.append("MEASURED WITH UNCOMMITTED CHANGES: " + "; ".join(results.changes[:5]))
    return "\n".join(lines)


def methods(results: Results) -> str:
    p = results.parameters
    fleets = ", ".join(str(nodes) for nodes in FLEET_NODES[:-1]) + f" and {FLEET_NODES[-1]}"
    return f"""\
- Everything runs on this one machine: nginx serves the files on 127.0.0.1, so the network
  is loopback and the origin is never the bottleneck the way a real one can be.
- "cold" means the reader's side is cold, not the origin's disk: a fresh cache directory
  (lazyfs or rclone) and a new mount, then `echo 3 > /proc/sys/vm/drop_caches`, then the
  served files read once (to /dev/null), so nginx serves them from memory, as an origin on
  another machine would, and this machine's disk bounds no cold figure. "warm": the blocks
  are on the mount's disk cache from a full read, new mount, page cache dropped (and the
  origin's files not read again: a warm read does not touch the origin, and on this VM pages
  the page cache has just used are cheap to reuse while fresh ones are not, so a 2 GiB origin
  read just before made a warm read half as fast, 0.3 against 0.7 GB/s). "hot": the
  second read on the same mount (kernel page cache). The local disk and the passthrough read
  the file itself: for them only the page cache is dropped.
- "pyfuse3 passthrough (Python-FUSE limit)": scripts/benchmark/passthrough.py, a minimal
  pyfuse3 read-only filesystem in a process of its own that answers each read with `os.pread`
  on the local file, mounted with lazyfs's FUSE options and `read_ahead_kb` raised to 1024
  (1 MiB kernel reads, as lazyfs does): what a Python FUSE daemon can do at best here.
- 1: `dd if=MNT/file of=/dev/null bs=1M` on a {p.big} random file; `curl -s URL | openssl dgst
  -sha256`; `curl -o` to local disk then `openssl dgst -sha256`; `rclone mount :http:
  --vfs-cache-mode full --read-only` then the same dd.
- 2: time to first tensor is wall time from nothing mounted, cold cache, to a subprocess
  having opened the {p.model} `model.safetensors` with `safe_open` (header) and loaded
  `{p.tensor}` from the middle; the alternative downloads the whole file first.
  "First MiB": one 1 MiB pread at offset {p.first_mib_offset} (3/4 into the file), only
  the pread timed (the alternative: download + the pread).
- 4: {RANDOM_4K.count} x {RANDOM_4K.label} and {RANDOM_1M.count} x {RANDOM_1M.label} preads \
at 4 KiB-aligned offsets
  from a fixed seed, `posix_fadvise(RANDOM)` on the fd, each on its own new mount; with
  {BLOCK_SIZE[:-1]} MiB blocks, later random reads often land in blocks earlier ones fetched.
- 4: "data fetched" is the size of the fresh cache directory (blocks for lazyfs, rclone's
  vfs dir) after the cold random reads and the unmount.
- 5: VmHWM from /proc/PID/status of the mount daemon right after the cold sequential read;
  CPU is the daemon's utime + stime over that read, per 10^9 bytes read.
- 6: the file in the page cache; `lazyfs manifest build` computes block digests and the
  whole-file digest (end to end, including the CLI's start); hashlib reads 4 MiB at a time.
- 7: a sharded model, {SHARDS} files of {p.shard} random bytes with their manifest
  ({BLOCK_SIZE[:-1]} MiB blocks), served by the same nginx. On a cold mount one `dd bs=1M` of
  one shard; on a new cold mount {SHARDS} dd at once, one per shard: aggregate is all shards'
  bytes over the wall time to the last dd's exit. nginx logs every request with its Range
  header and the bytes it sent; "already fetched" counts GETs of a shard whose (path, Range)
  an earlier GET of the same run asked for, and "bytes sent" is the sum over those GETs
  divided by the shards' total size.
  RSS is the daemon's VmHWM after the {SHARDS} readers, in 10^6 bytes.
- 8: wall time of `lazyfs mount URL MNT` (the {p.model} model's directory, a new cache dir and
  mount each time) until it returns with the mount live, and of `lazyfs status MNT` on it;
  the median of {STARTS} each per run, page cache not dropped.
- The bytes of every pread (first MiB, random reads) are checked against the original file.
- 9-12 (issue 12), {MODEL_RUNS} run(s) each: models with random weights written once by
  scripts/benchmark/modelmake.py and served by the same nginx with their manifests: a Llama
  ({p.llama}: `LlamaConfig`, `save_pretrained` with a shard limit, the index, config.json,
  generation_config.json and a byte-level BPE tokenizer), a GGUF file ({p.gguf}, tensor sizes
  on no block boundary, written with `GGUFWriter`) and a sentence-transformers BERT
  ({p.sentence}, WordPiece tokenizer, mean pooling). "lazyfs" mounts with `--tensor-aware`
  (the default), "lazyfs --no-tensor-aware" without. Every load runs in a process of its own
  (scripts/benchmark/modelload.py, HF_HUB_OFFLINE=1) that imported torch and the rest before
  the mount or the download started and times the load alone; `lazyfs mount` is not in it.
  "cold": a new mount on an empty cache, the origin's files read once before (nginx serves
  them from memory). "page cache dropped": the files of the local copy or of the mount's
  cache are dropped (`posix_fadvise(DONTNEED)`), not the whole page cache (the load process
  keeps torch's pages).
- 9: `AutoTokenizer.from_pretrained(DIR)`, `AutoModelForCausalLM.from_pretrained(DIR,
  dtype=torch.float16)`, then every parameter read whole (hashed with xxh3-128). Every load's
  hashes must equal those of a load of the local copy made when the model was written, or the
  step fails. The download: one curl process fetching every file of the repository to the
  local disk (the manifest excluded); "then load" is the download and a load of the copy
  (its pages still cached); "local copy" is a new process loading the copy with its page cache
  dropped. Hot: a second process on the same mount; its FUSE read requests are `lazyfs status
  --json`'s `read_requests` over the load (goal: at most {HOT_SHARE_GOAL:g}% of the cold
  load's). Warm: a new mount on the cache the cold load filled, the cache's page cache
  dropped. Data fetched: `bytes_fetched` over the cold load, divided by the model's size.
- 10: a new process does `safe_open(LAST_SHARD, framework="pt")` and `get_tensor`
  of `{p.first_tensor}` ({p.first_tensor_size}: the tensor of the last shard closest to 8 MiB,
  the nearest to its middle among those), timed, on a cold mount; its bytes are checked against
  the shard's. The alternative downloads the shard with curl (timed), then the same. Data
  fetched: `bytes_fetched` over the read, and the bytes nginx's access log says it sent from
  the mount's start (after the manifest) to its unmount (read-ahead finishing after the read
  included).
- 11: `gguf.GGUFReader(FILE)` (numpy's memory map, as llama.cpp maps a file), then every
  tensor's data hashed in file order; hashes checked as in 9.
- 12: `SentenceTransformer(DIR)` and `encode` of 4 sentences; the embeddings must equal
  (`np.array_equal`) those of a load of the local copy.
- 13 (issue 13): a safetensors file ({p.xet}: layers of a 4 MiB and a 16 KiB float32
  tensor of whole numbers) uploaded by the real `hf_xet` client to the tests' fake Xet CAS
  (tests/fakexet.py) and served with the fake Hub (tests/fakehubs.py: a listing with
  `xetHash`, `resolve` through its CDN), both in the bench process on 127.0.0.1: Python
  servers, not nginx. Three mounts of the same repository: Xet mode (the default),
  whole-file mode (`--no-xet`) and block-manifest mode (a branch that also commits a
  `lazyfs-manifest.json` of {BLOCK_SIZE[:-1]} MiB blocks); a step fails unless `lazyfs
  status` says the file is verified that way. Every step: a new mount on an empty cache,
  page cache dropped. First tensor: one pread of the whole tensor nearest the middle
  ({p.xet_tensor}) in a helper process, timed there, its bytes checked; data fetched is the
  CAS's xorb bytes plus the CDN's bytes from the mount's start to its unmount, and the
  fakes' CPU time is the bench process's over the same span (it only waits for its helpers
  meanwhile). Sequential: `dd bs=1M` of the file; the daemon's CPU as in 5, the fakes' as
  the bench process's over the read: where it nears a core, the origin bounds the figure.
  Requests: every request the Hub, its CDN and the CAS answered from the mount's start to
  its unmount, per GiB of the file, and Xet mode's split by kind (CAS read tokens are the
  Hub's `xet-read-token`).
- 14 (issue 14): a fleet on one origin. A {p.fleet} file of random bytes with its manifest
  ({BLOCK_SIZE[:-1]} MiB blocks) served by an origin nginx of its own, and the shipped cache
  tier (`scripts/cluster/cache-config`, slice = block size, `proxy_cache_lock`) in an nginx in
  front of it, {FLEET_WORKERS} workers each, on 127.0.0.1; every measurement through the tier
  starts a new tier on an empty cache directory. Origin once: {fleets} lazyfs mounts
  of the tier's URL, each with an empty cache of its own, mounted one after the other, then
  the page cache dropped and the origin's file read once, then one reader per mount at once
  (a process reading 1 MiB at a time and hashing it: a sha256 that is not the file's fails
  the step). "origin bytes" is the sum of the bytes the origin's access log says it sent for
  the file (its manifest not counted), read after every unmount and the tier's stop; the goal
  is 1/nodes, the file sent once. Aggregate: nodes x file size over the wall time to the last
  reader's exit. Cold sequential read: `dd bs=1M` on a new mount with an empty cache, page
  cache dropped as in 1, through a new tier or direct from the origin; the limit is `curl -s
  URL | openssl dgst -sha256` from the origin, its digest checked."""


def document(results: Results) -> str:
    """docs/performance.md; refuses results that must not be published."""
    if results.quick:
        raise ResultsError("not rendering a --quick smoke run as docs/performance.md")
    if results.only:
        raise ResultsError(f"not rendering a run of one section (--only {results.only})")
    if not results.committed:
        changed = ", ".join(line[3:] for line in results.changes[:5])
        more = f" and {len(results.changes) - 5} more" if len(results.changes) > 5 else ""
        raise ResultsError(
            f"measured with uncommitted changes ({changed}{more}): commit, then run scripts/bench"
        )
    the_notes = notes(results)
    return "\n".join(
        [
            "# Performance",
            "",
            "What lazyfs costs and gains against the obvious alternatives, measured on one "
            "machine with nginx on loopback as the origin. Reproduce with `scripts/bench` "
            "(about 13 minutes; `scripts/bench --quick` for a smoke run); it prints the same "
            "table. This page is rendered from `docs/performance.json` "
            "(`scripts/bench --render docs/performance.json`).",
            "",
            f"Command: `{results.command}` on commit {results.commit[:7]} "
            f"({results.date}, {results.minutes:.0f} min)",
            "",
            "## Goals",
            "",
            "Issues 11 to 14's goals, each held against this run's figures "
            "(scripts/benchmark/goals.py).",
            "",
            goals_table(results),
            "",
            *bounds(),
            "## Machine",
            "",
            *machine(results),
            "",
            "## Results",
            "",
            header(results),
            "",
            table(results),
            "",
            "## How",
            "",
            methods(results),
            *([""] + [f"Note: {note}" for note in the_notes] if the_notes else []),
            "",
        ]
    )


def bounds() -> list[str]:
    """The hand-written analysis of what bounds each goal, if there is one, and a blank line."""
    try:
        text = BOUNDS.read_text().strip()
    except FileNotFoundError:
        return []
    return [text, ""] if text else []


def publish(results: Results, doc: Path = DOC, doc_results: Path = DOC_RESULTS) -> None:
    """Write the doc and, beside it, the results it was rendered from."""
    text = document(results)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    results.save(doc_results)
