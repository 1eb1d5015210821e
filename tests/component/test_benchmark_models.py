"""scripts/benchmark's model workloads (issue 12) without torch: the goals they are held to, the
runs they take part in, the checks that fail a load unlike the local one, the files they pick and
fetch, the page cache they drop, and the load process's protocol (with a stand-in process)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import xxhash
from safetensors.numpy import save_file

from lazyfs.core.manifest import MANIFEST_NAME
from scripts.benchmark import modeljob
from scripts.benchmark.commands import LAZYFS, StepError, run
from scripts.benchmark.goals import Goal
from scripts.benchmark.harness import run_workloads
from scripts.benchmark.metrics import Metric
from scripts.benchmark.modeljob import load_process
from scripts.benchmark.models import first_tensor, range_hash, safetensors_places
from scripts.benchmark.modelworkloads import (
    FIRST_TENSOR,
    LLAMA_COLD,
    SHARD_THEN_READ,
    SLOWER_OF,
    FirstTensor,
    LlamaLoad,
    SentenceLoad,
)
from scripts.benchmark.render import fewer_runs
from scripts.benchmark.results import Parameters, Results, StepRecorder
from scripts.benchmark.stage import Stage
from scripts.benchmark.subjects import RepoDownload, Subject
from scripts.benchmark.workload import THROUGH_LAZYFS, Workload
from tests.support.pagecache import resident_bytes
from tests.support.processes import start_nginx_origin

MIB = 2**20


def results() -> Results:
    return Results("0" * 40, [], "scripts/bench", "2026-11-30", 3, False, Parameters("2G", "1G"))


# ---- goals and runs ------------------------------------------------------------------------


def test_goals_against_a_multiple_or_a_fraction_of_the_reference() -> None:
    slower = Goal("cold", LLAMA_COLD, 1 / 1.4, SLOWER_OF, against="max(download, local load)")
    assert slower.text == "cold ≤ 1.4x max(download, local load)"
    sooner = Goal("first tensor", FIRST_TENSOR, 50, SHARD_THEN_READ)
    assert sooner.text == f"first tensor ≤ 1/50 of {SHARD_THEN_READ.label}'s"
    run = results()
    run.values = {LLAMA_COLD.key(THROUGH_LAZYFS): [13.9], LLAMA_COLD.key(SLOWER_OF): [10.0]}
    assert slower.judge(run) == ("0.72x (13.90 s against 10.00 s)", True)  # 13.9 ≤ 1.4 x 10
    run.values[LLAMA_COLD.key(THROUGH_LAZYFS)] = [14.1]
    assert slower.judge(run)[1] is False
    run.values = {
        FIRST_TENSOR.key(THROUGH_LAZYFS): [20.0],
        FIRST_TENSOR.key(SHARD_THEN_READ): [900],
    }
    assert sooner.judge(run) == ("45.00x (20 ms against 900 ms)", False)


class Counted(Workload):
    title = "counted"
    metrics: ClassVar[tuple[Metric, ...]] = (FIRST_TENSOR,)
    most_runs = 1

    def __init__(self) -> None:
        self.calls = 0

    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None:
        self.calls += 1


def test_a_workload_with_fewer_runs_takes_part_in_the_first_ones_only(tmp_path: Path) -> None:
    stage = Stage(tmp_path / "work", quick=True)
    stage.clear_scratch()
    counted = Counted()
    for number in (1, 2, 3):
        run_workloads([counted], stage, results(), number)
    assert counted.calls == len(counted.subjects())  # once each, in run 1
    assert fewer_runs(3) == " (9-12: 1 run)"
    assert fewer_runs(1) == ""


# ---- a load unlike the local one fails its step --------------------------------------------


def test_a_load_that_differs_from_the_local_load_fails_loudly(tmp_path: Path) -> None:
    stage = Stage(tmp_path / "work", quick=True)
    reference = stage.models.reference("llama")
    reference.parent.mkdir(parents=True)
    reference.write_text(json.dumps({"hashes": {"lm_head.weight": "1", "norm.weight": "2"}}))
    llama = LlamaLoad()
    llama.check({"hashes": {"lm_head.weight": "1", "norm.weight": "2"}}, stage, "lazyfs")
    wrong = {"lm_head.weight": "1", "norm.weight": "3"}
    with pytest.raises(
        StepError, match=r"^1 of 2 tensors loaded from lazyfs differ .*norm\.weight"
    ):
        llama.check({"hashes": wrong}, stage, "lazyfs")
    with pytest.raises(StepError, match=r"lm_head\.weight"):
        llama.check({"hashes": {"norm.weight": "2"}}, stage, "lazyfs")  # one missing
    with pytest.raises(StepError, match="embeddings from lazyfs differ"):
        SentenceLoad().check({"equal": False}, stage, "lazyfs")
    tensor = FirstTensor()
    tensor.expected = "ab"
    with pytest.raises(StepError, match="differs from the local file's bytes"):
        tensor.check({"hash": "cd"}, stage, "lazyfs")


# ---- which tensor, which files -------------------------------------------------------------


def test_the_first_tensor_is_the_closest_to_8_mib_and_the_nearest_to_the_middle(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(7)
    sizes = {"t0": 8 * MIB, "t1": 2 * MIB, "t2": 8 * MIB, "t3": 8 * MIB, "t4": MIB}
    tensors = {name: rng.integers(0, 256, size, dtype=np.uint8) for name, size in sizes.items()}
    shard = tmp_path / "model-00002-of-00002.safetensors"
    save_file(tensors, str(shard))
    places = safetensors_places(shard)
    assert [place.name for place in places] == sorted(sizes)  # file order
    assert [place.size for place in places] == [sizes[name] for name in sorted(sizes)]
    chosen = first_tensor(shard)
    assert chosen.name == "t2"  # 10-18 MiB of 27: its middle is the nearest to 13.5
    assert range_hash(shard, chosen.start, chosen.end) == xxhash.xxh3_128_hexdigest(
        tensors["t2"].tobytes()
    )


def test_a_repository_download_fetches_every_file_its_manifest_lists(tmp_path: Path) -> None:
    repo = tmp_path / "www" / "model-sentence"
    (repo / "1_Pooling").mkdir(parents=True)
    files = {"model.safetensors": os.urandom(MIB + 3), "1_Pooling/config.json": b"{}"}
    for name, data in files.items():
        (repo / name).write_bytes(data)
    run([*LAZYFS, "manifest", "build", str(repo), "--block-size", "1M"], 60)
    stage = Stage(tmp_path / "work", quick=True)
    stage.origin = start_nginx_origin(tmp_path / "www", tmp_path / "nginx")
    state = tmp_path / "download"
    state.mkdir()
    try:
        served = stage.served(repo / "model.safetensors")
        with RepoDownload(stage).open(served, state, drop_page_cache=False) as target:
            assert target.file == state / "model.safetensors"
            assert target.opened_in > 0  # the download's time
            got = {name: (state / name).read_bytes() for name in files}
            assert got == files
            assert not (state / MANIFEST_NAME).exists()
        assert list(state.iterdir()) == []
        fetched = {line.path for line in stage.running_origin.requests(at_least=2)}
        assert fetched == {
            "/model-sentence/model.safetensors",
            "/model-sentence/1_Pooling/config.json",
        }
    finally:
        stage.running_origin.stop()


# ---- the page cache of some files only -------------------------------------------------------


def test_evict_drops_the_files_named_and_those_under_a_directory_only(tmp_path: Path) -> None:
    kept, dropped, below = tmp_path / "kept.bin", tmp_path / "dropped.bin", tmp_path / "d" / "x"
    below.parent.mkdir()
    for path in (kept, dropped, below):
        path.write_bytes(os.urandom(MIB))
        path.read_bytes()
    assert [resident_bytes(path) for path in (kept, dropped, below)] == [MIB, MIB, MIB]
    Stage(tmp_path / "work", quick=True).evict(dropped, below.parent)
    assert [resident_bytes(path) for path in (kept, dropped, below)] == [MIB, 0, 0]


# ---- the load process ------------------------------------------------------------------------

STAND_IN = """
import json, os, sys, time
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
print("importing (this goes to stderr)")
if sys.argv[1] == "dies":
    sys.exit("no module named torch")
answers.write("ready\\n"); answers.flush()
request = json.loads(sys.stdin.readline())
if sys.argv[1] == "hangs":
    time.sleep(60)
answers.write(json.dumps({"seconds": 0.5, "asked": request}) + "\\n"); answers.flush()
"""


def test_a_load_process_is_ready_then_loads_what_it_is_asked_or_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "modelload.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(modeljob, "LOAD", script)
    logs = tmp_path / "logs"
    logs.mkdir()
    with load_process("causal", tmp_path, logs) as process:
        answer = process.load(10, path=tmp_path / "model")
    assert answer == {"seconds": 0.5, "asked": {"path": str(tmp_path / "model")}}
    assert process.proc.returncode == 0
    log = (logs / "model-load.log").read_text()
    assert "==> causal\nimporting (this goes to stderr)\n" in log
    with (
        pytest.raises(StepError, match=r"dies load exited while importing .*no module named torch"),
        load_process("dies", tmp_path, logs),
    ):
        pass
    hangs = load_process("hangs", tmp_path, logs)
    with pytest.raises(StepError, match="hangs load: loading took over 1s"), hangs as process:
        process.load(1, path="x")
    assert process.proc.poll() is not None  # killed on the way out
