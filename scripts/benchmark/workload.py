"""What every workload is: a title, the metrics it declares, and how it runs on one subject;
and the series most metrics share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from scripts.benchmark.commands import StepError
from scripts.benchmark.metrics import Metric, Series
from scripts.benchmark.results import StepRecorder
from scripts.benchmark.stage import Stage
from scripts.benchmark.subjects import LazyfsMount, Passthrough, RcloneMount, Subject


class Workload(ABC):
    title: ClassVar[str]
    metrics: ClassVar[tuple[Metric, ...]]
    # Runs it takes part in: the first ones, at most this many (None: every run).
    most_runs: ClassVar[int | None] = None

    @classmethod
    def subjects(cls) -> list[type[Subject]]:
        """Every subject a metric of this workload has a series for, in order."""
        named = (series.subject for metric in cls.metrics for series in metric.series)
        return list(dict.fromkeys(named))

    @classmethod
    def runs(cls, runs: int) -> int:
        """How many of ``runs`` runs this workload takes part in."""
        return runs if cls.most_runs is None else min(runs, cls.most_runs)

    @abstractmethod
    def run(self, subject: Subject, stage: Stage, record: StepRecorder) -> None: ...


def unexpected(workload: Workload, subject: Subject) -> StepError:
    return StepError(f"{workload.title}: no way to read through {subject.name}")


THROUGH_LAZYFS = Series(LazyfsMount)
THROUGH_RCLONE = Series(RcloneMount, "rclone mount")
THROUGH_PASSTHROUGH = Series(Passthrough, "pyfuse3 passthrough (Python-FUSE limit)")
