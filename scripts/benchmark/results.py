"""Results of one benchmark run: every figure of every run by key, every failure, and what the
figures need to be read (parameters, machine, commit). Saved and loaded as JSON.

Keys come from the declared metrics only: a workload records through a ``StepRecorder`` that
refuses a metric or subject it did not declare, and loading refuses keys no metric declares.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scripts.benchmark.metrics import Metric, Series

if TYPE_CHECKING:
    from scripts.benchmark.subjects import Subject

FORMAT = 1


class ResultsError(Exception):
    """Results that cannot be used; the message is one line saying why."""


@dataclass(frozen=True)
class Parameters:
    """What the titles and the description of the methods refer to."""

    big: str  # size label of the big file, "2G"
    model: str  # size of the sample model, "1G"
    tensor: str = ""  # the tensor time-to-first-tensor loads
    first_mib_offset: int = 0
    shard: str = ""  # size label of each shard the many readers read, "128M"
    # The model workloads' models (empty in results from before them)
    llama: str = ""  # "1.67 GB, 4 shards"
    first_tensor: str = ""  # the tensor of the last shard the first-tensor workload reads
    first_tensor_size: str = ""  # "8.0 MiB"
    gguf: str = ""  # "403 MB, 25 tensors"
    sentence: str = ""  # "43 MB"
    # Issue 13's Xet file (empty in results from before it)
    xet: str = ""  # "1.07 GB, 510 tensors"
    xet_tensor: str = ""  # "4.0 MiB at 50%"
    # Issue 14's fleet (empty in results from before it)
    fleet: str = ""  # size label of the file the fleet's mounts read, "256M"


@dataclass
class Results:
    commit: str  # the full hash of HEAD
    changes: list[str]  # `git status --porcelain` lines: uncommitted changes measured with
    command: str
    date: str
    runs: int
    quick: bool
    parameters: Parameters
    machine: list[str] = field(default_factory=list)  # lines describing it
    minutes: float = 0.0
    values: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    only: str = ""  # the section measured alone (scripts/bench --only); "": every section

    @property
    def committed(self) -> bool:
        return not self.changes

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def fail(self, key: str, reason: str) -> None:
        self.errors.setdefault(key, []).append(reason)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def median(self, key: str) -> float | None:
        values = self.values.get(key)
        return statistics.median(values) if values else None

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, metrics: Iterable[Metric]) -> Results:
        try:
            raw: dict[str, Any] = json.loads(text)
            if raw.pop("format", None) != FORMAT:
                raise ResultsError(f"not results of this benchmark (format {FORMAT})")
            raw["parameters"] = Parameters(**raw["parameters"])
            results = cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ResultsError(f"not results of this benchmark: {exc}") from None
        known = {key for metric in metrics for key in metric.keys}
        unknown = sorted((set(results.values) | set(results.errors)) - known)
        if unknown:
            raise ResultsError(
                f"keys no metric declares (results of another version?): {', '.join(unknown)}"
            )
        return results

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: Path, metrics: Iterable[Metric]) -> Results:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ResultsError(f"{path}: {exc.strerror}") from None
        return cls.from_json(text, metrics)


class UndeclaredMetric(Exception):
    """A workload recorded a figure it does not declare: a bug in the workload."""


class StepRecorder:
    """Records one step's figures (one workload on one subject) under their declared keys."""

    def __init__(self, results: Results, metrics: Sequence[Metric], subject: type[Subject]):
        self.results = results
        self.metrics = metrics
        self.subject = subject
        self.expected = [
            metric.key(series)
            for metric in metrics
            for series in metric.series
            if series.subject is subject
        ]
        self.recorded: dict[str, float] = {}

    def __call__(self, metric: Metric, value: float, series: Series | None = None) -> None:
        """Record ``value`` for this step's subject; ``series`` picks one where the subject has
        several (hashing: lazyfs and hashlib on the local disk)."""
        declared = metric.series_of(self.subject) if metric in self.metrics else []
        if series is None and len(declared) == 1:
            series = declared[0]
        if series is None or series not in declared:
            raise UndeclaredMetric(f"{metric.name} is not declared for {self.subject.name} here")
        key = metric.key(series)
        self.recorded[key] = value
        self.results.add(key, value)

    def fail(self, reason: str) -> None:
        """The step failed: every figure it had not recorded yet failed for ``reason``."""
        for key in self.expected:
            if key not in self.recorded:
                self.results.fail(key, reason)
