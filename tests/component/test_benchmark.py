"""scripts/benchmark without running a benchmark: the keys a step records under, results as
JSON, and the table and docs/performance.md rendered from them."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import pytest

from scripts.benchmark.__main__ import main
from scripts.benchmark.commands import StepError
from scripts.benchmark.fleet import (
    DIRECT,
    FLEET_READ,
    FLEET_SEQ_COLD,
    LIMIT,
    ORIGIN_SHARE,
    THROUGH_TIER,
)
from scripts.benchmark.goals import GOALS, Goal, goals_table
from scripts.benchmark.harness import ALL_SUBJECTS, step
from scripts.benchmark.metrics import Metric
from scripts.benchmark.modelworkloads import SENTENCE_LOAD
from scripts.benchmark.render import document, publish, summary, table, table_metrics
from scripts.benchmark.results import (
    Parameters,
    Results,
    ResultsError,
    StepRecorder,
    UndeclaredMetric,
)
from scripts.benchmark.stage import Served, Stage
from scripts.benchmark.subjects import LazyfsMount, LocalDisk, Subject
from scripts.benchmark.workload import (
    THROUGH_LAZYFS,
    THROUGH_PASSTHROUGH,
    THROUGH_RCLONE,
    Workload,
)
from scripts.benchmark.workloads import (
    FETCHED,
    HASHING,
    HASHLIB,
    LATENCY,
    MANIFEST_BUILD,
    ONE_READER,
    READERS,
    READERS_DUPLICATES,
    READERS_RSS,
    SECTIONS,
    SEQ_COLD,
    SEQ_HOT,
    SEQ_WARM,
    STARTUP_STATUS,
    TTFT,
    TTFT_MOUNT,
    WORKLOADS,
    all_metrics,
    fetched,
)
from scripts.benchmark.xet import (
    MANIFEST,
    WHOLE,
    XET,
    XET_FIRST_SHARE,
    XET_FIRST_TENSOR,
    XET_REQUESTS_BY_KIND,
    XET_SEQ_COLD,
)
from tests.support.pagecache import resident_bytes
from tests.support.processes import AccessRecord

PARAMETERS = Parameters(big="2G", model="1G", tensor="layers.3.weight", first_mib_offset=123)
XET_PARAMETERS = Parameters(
    big="2G", model="1G", xet="1.07 GB, 510 tensors", xet_tensor="4.0 MiB at 50%"
)
COMMIT = "c6b90e8" + "0" * 33


def results(**changes: object) -> Results:
    fields: dict[str, object] = {
        "commit": COMMIT,
        "changes": [],
        "command": "scripts/bench",
        "date": "2026-11-29",
        "runs": 3,
        "quick": False,
        "parameters": PARAMETERS,
        "machine": ["CPU: 2 x Test CPU (nproc 2)", "lazyfs: lazyfs, version 0.1.0"],
        "minutes": 8.2,
    }
    fields.update(changes)
    return Results(**fields)  # type: ignore[arg-type]


def row(text: str, heading_start: str, alternative: str) -> list[str]:
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if cells[0].startswith(heading_start) and cells[2] == alternative:
            return cells
    raise AssertionError(f"no row {heading_start!r} / {alternative!r} in\n{text}")


# ---- declarations --------------------------------------------------------------------------


def test_every_key_is_declared_once_and_every_title_renders() -> None:
    keys = Counter(key for metric in all_metrics() for key in metric.keys)
    assert [key for key, count in keys.items() if count > 1] == []
    for metric in all_metrics():
        assert metric.heading(asdict(PARAMETERS))  # no placeholder the parameters lack
    for workload in WORKLOADS:
        assert set(workload.subjects()) <= set(ALL_SUBJECTS)


def test_table_rows_go_by_section_then_declaration() -> None:
    rows = table_metrics()
    assert [metric.section for metric in rows] == sorted(metric.section for metric in rows)
    assert rows[0] is SEQ_COLD and rows[-1] is FLEET_SEQ_COLD
    assert rows[rows.index(SENTENCE_LOAD) + 1] is XET_FIRST_TENSOR  # issue 13's after 12's
    assert rows[rows.index(XET_REQUESTS_BY_KIND["xorb_data"]) + 1] is ORIGIN_SHARE[1]  # then 14's
    fleet_rows = [metric for metric in rows if metric.section == 14]
    assert fleet_rows == [
        *(metric for nodes in (1, 3, 8) for metric in (ORIGIN_SHARE[nodes], FLEET_READ[nodes])),
        FLEET_SEQ_COLD,
    ]
    assert TTFT_MOUNT not in rows  # a figure for a note, not a row
    random_rows = [metric for metric in rows if metric.section == 4]
    assert random_rows == [*LATENCY.values(), *FETCHED.values()]
    assert [metric.name for metric in random_rows[:2]] == ["rand_4k_cold_p50", "rand_4k_cold_p99"]


# ---- what a step records -------------------------------------------------------------------


def test_a_step_records_only_what_its_workload_declares_for_its_subject() -> None:
    run = results()
    record = StepRecorder(run, (SEQ_COLD, SEQ_WARM, SEQ_HOT), LazyfsMount)
    record(SEQ_COLD, 0.5)
    assert run.values == {"seq_cold.lazyfs": [0.5]}
    with pytest.raises(UndeclaredMetric):
        record(TTFT, 1.0)  # another workload's metric
    local = StepRecorder(run, (SEQ_COLD, SEQ_WARM), LocalDisk)
    with pytest.raises(UndeclaredMetric):
        local(SEQ_COLD, 1.0)  # the local disk has no cold sequential series
    hashing = StepRecorder(run, (HASHING,), LocalDisk)
    with pytest.raises(UndeclaredMetric):
        hashing(HASHING, 1.0)  # three series on the local disk: which one must be said
    hashing(HASHING, 2.0, HASHLIB[1])
    with pytest.raises(UndeclaredMetric):
        hashing(HASHING, 2.0, THROUGH_LAZYFS)  # a series of another metric
    assert run.values["hash.hashlib_1thread"] == [2.0]


class HalfDone(Workload):
    """Records its first metric, then fails."""

    title = "half done"
    metrics: ClassVar[tuple[Metric, ...]] = (SEQ_WARM, SEQ_HOT)

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        stage.fresh_dir(subject.name).joinpath("left-over").write_bytes(b"x")
        record(SEQ_WARM, 1.5)
        raise StepError("dd exited 1: Input/output error | more")


def test_a_failed_step_fails_the_figures_it_had_not_recorded(tmp_path: Path) -> None:
    stage = Stage(tmp_path / "work", quick=True)
    stage.clear_scratch()
    run = results()
    step(HalfDone(), LocalDisk(stage), stage, run)
    assert run.values == {"seq_warm.local": [1.5]}
    assert run.errors == {"seq_hot.local": ["dd exited 1: Input/output error | more"]}
    assert list(stage.scratch.iterdir()) == []  # the next step starts from nothing


# ---- results as JSON -----------------------------------------------------------------------


def test_results_round_trip_and_refuse_keys_no_metric_declares() -> None:
    run = results(notes=["a note"])
    run.add("seq_cold.lazyfs", 0.25)
    run.fail("seq_cold.rclone", "rclone mount exited 1")
    text = run.to_json()
    assert Results.from_json(text, all_metrics()) == run
    raw = json.loads(text)
    raw["values"]["seq_cold.nfs"] = [1.0]
    with pytest.raises(ResultsError, match=r"seq_cold\.nfs"):
        Results.from_json(json.dumps(raw), all_metrics())
    with pytest.raises(ResultsError):
        Results.from_json('{"values": {}}', all_metrics())


# ---- rendering -----------------------------------------------------------------------------


def test_table_cells_ratios_and_failures() -> None:
    run = results()
    run.values = {
        "seq_cold.lazyfs": [0.2, 0.22, 0.3],
        "seq_cold.curl": [0.44],
        "seq_cold.download": [0.11],
        "first_mib.lazyfs": [0.022],
        "first_mib.rclone": [0.0342],
        "first_mib.download": [5.034],
    }
    run.errors = {"seq_cold.lazyfs": ["timed out"], "seq_cold.rclone": ["exited 1: a | b"]}
    text = table(run)
    assert text.splitlines()[:2] == [
        "| measurement | lazyfs | alternative | alternative's figure | ratio (>1: lazyfs better) |",
        "|---|---|---|---|---|",
    ]
    piped = "curl \\| openssl dgst -sha256"
    curl = row(text, "1. cold sequential read, 2G file (GB/s)", piped)
    assert curl[1:] == ["0.22 (1 of 4 runs failed)", piped, "0.44", "0.50"]
    download = row(text, "1. cold", "curl -o, then openssl dgst")
    assert download[3:] == ["0.11", "2.00"]  # throughput: lazyfs / alternative
    rclone = row(text, "1. cold", "rclone mount, dd")
    assert rclone[3:] == ["failed: exited 1: a \\| b", "-"]
    pread = row(text, "2. first MiB at 3/4 of the 2G file (pread only, cold) (ms)", "rclone mount")
    assert pread[1:] == ["0.022", "rclone mount", "0.0342", "1.55"]  # latency: alternative / lazyfs
    assert row(text, "2. first MiB", "curl -o, then pread")[3:] == ["5.03", "228.82"]
    missing = row(text, "6. `lazyfs manifest build` of the 2G file", "hashlib sha256, 1 thread")
    assert missing[1:] == ["failed: not measured", HASHLIB[1].label, "failed: not measured", "-"]


def test_the_doc_states_its_commit_and_the_run() -> None:
    run = results(notes=["could not drop the page cache"])
    run.values = {TTFT.key(THROUGH_LAZYFS): [2.0], TTFT_MOUNT.key(THROUGH_LAZYFS): [1.3]}
    run.values[LATENCY["warm", next(iter(FETCHED)), "p99"].key(THROUGH_RCLONE)] = [0.5]
    run.values[HASHING.key(MANIFEST_BUILD)] = [0.96]
    text = document(run)
    assert text.startswith("# Performance\n")
    assert "Command: `scripts/bench` on commit c6b90e8 (2026-11-29, 8 min)" in text
    assert "- lazyfs: lazyfs, version 0.1.0, git c6b90e8\n" in text
    assert "Medians of 3 run(s) (9-12: 1 run)." in text  # the model workloads run once
    assert "`layers.3.weight` from the middle" in text and "at offset 123 " in text
    assert "Note: time to first tensor through lazyfs: `lazyfs mount` returned after 1.30s" in text
    assert text.rstrip().endswith("Note: could not drop the page cache")
    assert "| 4. random 1000 x 4 KiB preads, warm, p99 (ms) | failed: not measured |" in text


def test_uncommitted_or_quick_results_are_flagged_and_never_become_the_doc(
    tmp_path: Path,
) -> None:
    dirty = results(changes=[" M lazyfs/read/reader.py", "?? scratch.py"])
    with pytest.raises(ResultsError, match=r"uncommitted changes \(lazyfs/read/reader.py, scratch"):
        document(dirty)
    assert "git c6b90e8 + UNCOMMITTED CHANGES (2 files)" in summary(dirty)
    with pytest.raises(ResultsError, match="--quick"):
        document(results(quick=True))
    doc, saved = tmp_path / "performance.md", tmp_path / "performance.json"
    with pytest.raises(ResultsError):
        publish(dirty, doc, saved)
    assert not doc.exists() and not saved.exists()
    publish(results(), doc, saved)
    assert "on commit c6b90e8" in doc.read_text()
    assert Results.load(saved, all_metrics()) == results()


def test_render_command_refuses_bad_results_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc, saved = tmp_path / "performance.md", tmp_path / "performance.json"
    monkeypatch.setattr("scripts.benchmark.__main__.publish", lambda run: publish(run, doc, saved))
    dirty = tmp_path / "dirty.json"
    results(changes=[" M lazyfs/cli/main.py"]).save(dirty)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    for path in (dirty, garbage, tmp_path / "missing.json"):
        assert main(["--render", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"bench: {path}: ") and err.count("\n") == 1, err
    assert not doc.exists()
    clean = tmp_path / "clean.json"
    results().save(clean)
    assert main(["--render", str(clean)]) == 0
    assert "on commit c6b90e8" in doc.read_text()


# ---- goals ---------------------------------------------------------------------------------


def test_goals_judge_ratios_and_thresholds_and_say_when_not_measured() -> None:
    run = results()
    run.values = {
        SEQ_WARM.key(THROUGH_LAZYFS): [0.6],
        SEQ_WARM.key(THROUGH_PASSTHROUGH): [1.0],
        READERS.key(THROUGH_LAZYFS): [0.4],
        READERS.key(ONE_READER): [0.4],
        READERS_RSS.key(THROUGH_LAZYFS): [400.0],
        READERS_DUPLICATES.key(THROUGH_LAZYFS): [0.0],
    }
    warm = Goal("warm", SEQ_WARM, 0.7, THROUGH_PASSTHROUGH)
    assert warm.judge(run) == ("0.60x (0.60 GB/s against 1.00 GB/s)", False)
    assert Goal("warm", SEQ_WARM, 0.6, THROUGH_PASSTHROUGH).judge(run)[1] is True
    assert Goal("readers", READERS, 1.0, ONE_READER).judge(run)[1] is True  # equal is enough
    assert Goal("rss", READERS_RSS, 400, strict=True).judge(run) == ("400 MB", False)
    assert Goal("rss", READERS_RSS, 400).judge(run)[1] is True
    assert Goal("dup", READERS_DUPLICATES, 0).text == "dup = 0"
    assert Goal("dup", READERS_DUPLICATES, 0).judge(run) == ("0 requests", True)
    cold = Goal("cold", SEQ_COLD, 1.5, THROUGH_RCLONE)
    assert cold.judge(run) == ("not measured", None)
    run.values[SEQ_COLD.key(THROUGH_LAZYFS)] = [0.3]
    assert cold.judge(run) == ("0.30 GB/s; rclone mount: not measured", None)
    latency = LATENCY["cold", next(iter(FETCHED)), "p50"]
    run.values[latency.key(THROUGH_LAZYFS)] = [2.0]
    run.values[latency.key(THROUGH_RCLONE)] = [1.0]
    rclone_p50 = Goal("p50", latency, 1.0, THROUGH_RCLONE)
    assert rclone_p50.text == "p50 ≤ rclone mount's"
    assert rclone_p50.judge(run) == ("0.50x (2 ms against 1 ms)", False)  # lower is better


def test_every_goal_is_in_the_goals_table_once() -> None:
    lines = goals_table(results()).splitlines()
    assert lines[:2] == ["| issue | goal | measured | reached |", "|---|---|---|---|"]
    assert [line.split(" | ")[1] for line in lines[2:]] == [goal.text for goal in GOALS]
    assert all(line.endswith("| not measured | - |") for line in lines[2:])
    assert len({goal.text for goal in GOALS}) == len(GOALS)
    assert "| 11 | cold sequential read ≥ 0.8x curl \\| openssl dgst -sha256 |" in lines[2]
    issues = [int(line.split(" | ")[0].strip("| ")) for line in lines[2:]]
    assert issues == sorted(issues) and issues.count(12) == 6 and issues.count(13) == 3
    assert [line for line in lines if line.startswith("| 14 | ")] == [
        "| 14 | 1 mount at once through one cache: origin bytes / (nodes x file size) ≤ 1 "
        "| not measured | - |",
        "| 14 | 3 mounts at once through one cache: origin bytes / (nodes x file size) ≤ 1/3 "
        "| not measured | - |",
        "| 14 | 8 mounts at once through one cache: origin bytes / (nodes x file size) ≤ 1/8 "
        "| not measured | - |",
        "| 14 | cold sequential read through a cold cache tier ≥ 0.9x lazyfs, direct from the "
        "origin | not measured | - |",
    ]
    issue_13 = [line for line in lines if line.startswith("| 13 | ")]
    assert issue_13 == [
        "| 13 | Xet mode: cold sequential read ≥ 0.8x block manifest (4 MiB blocks) "
        "| not measured | - |",
        "| 13 | Xet mode: first tensor, data fetched, % of the file < 5 % | not measured | - |",
        "| 13 | Xet mode: first tensor ≤ 1/10 of whole-file mode's (--no-xet) | not measured | - |",
    ]


def test_a_section_run_alone_shows_its_own_rows_and_goals_and_never_becomes_the_doc() -> None:
    run = results(only="xet", parameters=XET_PARAMETERS)
    run.values = {
        XET_SEQ_COLD.key(XET): [0.4],
        XET_SEQ_COLD.key(MANIFEST): [0.5],
        XET_FIRST_TENSOR.key(XET): [30.0],
        XET_FIRST_TENSOR.key(WHOLE): [900.0],
        XET_FIRST_SHARE.key(XET): [5.0],
    }
    text = summary(run, SECTIONS["xet"])
    assert "| 1. " not in text and "| 12 |" not in text  # no other section's rows or goals
    assert row(text, "13. cold sequential read of the Xet file", MANIFEST.label)[4] == "0.80"
    assert (
        "| 13 | Xet mode: cold sequential read ≥ 0.8x block manifest (4 MiB blocks) "
        "| 0.80x (0.40 GB/s against 0.50 GB/s) | yes |" in text
    )
    assert "| 13 | Xet mode: first tensor ≤ 1/10 of whole-file mode's (--no-xet) | 30.00x " in text
    share = "| 13 | Xet mode: first tensor, data fetched, % of the file < 5 % | 5.00 % | no |"
    assert share in text  # strictly below
    assert (
        "13. Xet file (safetensors, 1.07 GB, 510 tensors): first tensor from the middle "
        "(4.0 MiB at 50%)" in text
    )
    with pytest.raises(ResultsError, match="--only xet"):
        document(run)


def test_the_fleet_run_alone_holds_origin_bytes_to_one_over_nodes_and_the_tier_to_direct() -> None:
    size = 256 << 20
    run = results(only="fleet", parameters=Parameters(big="2G", model="1G", fleet="256M"))
    run.values = {
        # The origin sent the file once to one and to three mounts, one block twice to eight.
        ORIGIN_SHARE[1].key(THROUGH_TIER): [size / (1 * size)],
        ORIGIN_SHARE[3].key(THROUGH_TIER): [size / (3 * size)],
        ORIGIN_SHARE[8].key(THROUGH_TIER): [(size + (4 << 20)) / (8 * size)],
        FLEET_READ[8].key(THROUGH_TIER): [0.4],
        FLEET_SEQ_COLD.key(THROUGH_TIER): [0.27],
        FLEET_SEQ_COLD.key(DIRECT): [0.3],
        FLEET_SEQ_COLD.key(LIMIT): [0.54],
    }
    run.errors = {FLEET_READ[3].key(THROUGH_TIER): ["wrong bytes: mount 2 of 3 ..."]}
    text = summary(run, SECTIONS["fleet"])
    assert "| 1. " not in text and "| 13 |" not in text  # no other section's rows or goals
    assert "Medians of 3 run(s). " in text  # no word of the model sections' single run
    share = "3 mounts at once through one cache: origin bytes / (nodes x file size)"
    assert f"| 14 | {share} ≤ 1/3 | 0.333 x | yes |" in text  # exactly 1/3 reaches it
    assert "(nodes x file size) ≤ 1/8 | 0.127 x | no |" in text
    assert "(nodes x file size) ≤ 1 | 1.000 x | yes |" in text
    assert (
        "| 14 | cold sequential read through a cold cache tier ≥ 0.9x lazyfs, direct from the "
        "origin | 0.90x (0.27 GB/s against 0.30 GB/s) | yes |" in text
    )
    assert row(text, "14. cold sequential read of the 256M file", LIMIT.label)[3:] == [
        "0.54",
        "0.50",
    ]
    eight = row(text, "14. 8 mounts reading the 256M file at once through one cold cache", "-")
    assert eight[1] == "0.127"
    assert (
        row(text, "14. 3 mounts at once: aggregate", "-")[1]
        == "failed: wrong bytes: mount 2 of 3 ..."
    )
    with pytest.raises(ResultsError, match="--only fleet"):
        document(run)


def test_the_doc_has_the_goals_table_then_the_bounds_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = results()
    run.values = {STARTUP_STATUS.key(THROUGH_LAZYFS): [0.15]}
    bounds = tmp_path / "performance-bounds.md"
    monkeypatch.setattr("scripts.benchmark.render.BOUNDS", bounds)
    without = document(run)
    assert "| `lazyfs status` ≤ 0.2 s | 0.15 s | yes |" in without
    assert without.index("## Goals") < without.index("## Machine")
    bounds.write_text("Cold reads are bound by the hashing thread.\n")
    text = document(run)
    goals, machine = text.index("| `lazyfs manifest build`"), text.index("## Machine")
    assert goals < text.index("Cold reads are bound by the hashing thread.") < machine
    assert "| 8. `lazyfs status MNT` (median of 5) (s) | 0.15 | - | - | - |" in text


# ---- many readers: what the origin's log says --------------------------------------------------


def test_repeated_requests_and_bytes_sent_come_from_the_origins_log(tmp_path: Path) -> None:
    shards = [Served(tmp_path / "shards" / f"shard-0{n}.bin", "http://o") for n in range(2)]

    def get(path: str, rng: str | None, sent: int, method: str = "GET") -> AccessRecord:
        return AccessRecord(method, path, 206 if rng else 200, sent, rng)

    log = [
        get("/shards/manifest.json", None, 100),  # not a shard
        get("/shards/shard-00.bin", "bytes=0-3", 4),
        get("/shards/shard-01.bin", "bytes=0-3", 4),  # the same range of another file
        get("/shards/shard-00.bin", "bytes=4-7", 4),
        get("/shards/shard-00.bin", "bytes=0-3", 2),  # again, cut short
        get("/shards/shard-00.bin", "bytes=0-3", 4),  # and again
        get("/shards/shard-00.bin", "bytes=0-3", 0, method="HEAD"),
        get("/other/shard-00.bin", "bytes=0-3", 4),  # another directory
    ]
    assert fetched(log, shards) == (2, 18)
    assert fetched(log[:4], shards) == (0, 12)


# ---- cold: the reader's side only -----------------------------------------------------------


def test_cold_drops_the_page_cache_then_reads_the_origins_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served_dir = tmp_path / "www" / "big"
    served_dir.mkdir(parents=True)
    files = [served_dir / "file.bin", served_dir / "manifest.json"]
    for path in files:
        path.write_bytes(os.urandom(1 << 20))
        os.sync()
        with open(path, "rb") as handle:  # out of the page cache, as a drop would leave it
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert [resident_bytes(path) for path in files] == [0, 0]
    stage = Stage(tmp_path / "work", quick=True)
    order: list[str] = []
    # Not the machine's page cache: other tests share it.
    monkeypatch.setattr(stage, "drop_caches", lambda: order.append("drop"))
    stage.cold(Served(files[0], "http://o"))
    assert order == ["drop"]
    assert [resident_bytes(path) for path in files] == [1 << 20, 1 << 20]
