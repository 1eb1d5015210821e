"""What a workload measures: metrics, their units, and the series (one per subject) of each.

A metric's series are its table row: the first is lazyfs, the others the alternatives. Result
keys (``METRIC.SERIES``) are made here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scripts.benchmark.subjects import Subject


@dataclass(frozen=True)
class Unit:
    symbol: str
    higher_is_better: bool
    digits: str  # format spec; "" for 3 significant digits below 100, none above

    def format(self, value: float) -> str:
        if self.digits:
            return format(value, self.digits)
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"


GB_PER_S = Unit("GB/s", higher_is_better=True, digits=".2f")  # 10^9 bytes/s
SECONDS = Unit("s", higher_is_better=False, digits=".2f")
MILLISECONDS = Unit("ms", higher_is_better=False, digits="")
MEBIBYTES = Unit("MiB", higher_is_better=False, digits=".0f")
CPU_PER_GB = Unit("CPU s per GB", higher_is_better=False, digits=".2f")
MEGABYTES = Unit("MB", higher_is_better=False, digits=".0f")  # 10^6 bytes: the goal's unit
REQUESTS = Unit("requests", higher_is_better=False, digits=".0f")
REQUESTS_PER_GIB = Unit("requests per GiB", higher_is_better=False, digits="")
TIMES = Unit("x", higher_is_better=False, digits=".2f")  # one size over another
SHARE = Unit("x", higher_is_better=False, digits=".3f")  # a size over another, 1/8 = 0.125
PERCENT = Unit("%", higher_is_better=False, digits=".2f")


@dataclass(frozen=True)
class Series:
    """One subject's figures for a metric; ``tag`` names series that share a subject."""

    subject: type[Subject]
    label: str = "lazyfs"  # how the table names the alternative
    tag: str = ""

    @property
    def name(self) -> str:
        return self.tag or self.subject.name


@dataclass(frozen=True)
class Metric:
    """One row group of the table. ``title`` may use the run's parameters ({big}, {model})."""

    name: str
    section: int  # the table's rows are grouped by section, in workload order within one
    title: str
    unit: Unit
    series: tuple[Series, ...]
    in_table: bool = True

    def key(self, series: Series) -> str:
        return f"{self.name}.{series.name}"

    @property
    def keys(self) -> list[str]:
        return [self.key(series) for series in self.series]

    def series_of(self, subject: type[Subject]) -> list[Series]:
        return [series for series in self.series if series.subject is subject]

    def heading(self, parameters: Mapping[str, object]) -> str:
        return f"{self.section}. {self.title.format(**parameters)} ({self.unit.symbol})"
