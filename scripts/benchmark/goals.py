"""Issues 11 to 14's goals, each declared once: a metric, what it is held against
(another series of the metric, as a ratio, or a fixed threshold in the metric's unit), and the
threshold. The goals table in the summary and in docs/performance.md is rendered from these and
nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scripts.benchmark.fleet import DIRECT, FLEET_SEQ_COLD, NODES, ORIGIN_SHARE, mounts
from scripts.benchmark.metrics import Metric, Series
from scripts.benchmark.modelworkloads import (
    ALLOWANCE,
    FIRST_TENSOR,
    FIRST_TENSOR_FETCHED,
    HOT_SHARE_GOAL,
    LLAMA_COLD,
    LLAMA_HOT_SHARE,
    LLAMA_WARM,
    LOCAL_LOAD,
    SHARD_THEN_READ,
    SLOWER_OF,
    THEN_LOAD,
)
from scripts.benchmark.results import Results
from scripts.benchmark.stage import RANDOM_4K, SHARDS
from scripts.benchmark.workload import THROUGH_PASSTHROUGH, THROUGH_RCLONE
from scripts.benchmark.workloads import (
    HASHING,
    HASHLIB,
    LATENCY,
    MANIFEST_BUILD,
    ONE_READER,
    READERS,
    READERS_DUPLICATES,
    READERS_RSS,
    SEQ_COLD,
    SEQ_HOT,
    SEQ_WARM,
    STARTUP_MOUNT,
    STARTUP_STATUS,
)
from scripts.benchmark.xet import MANIFEST, WHOLE, XET_FIRST_SHARE, XET_FIRST_TENSOR, XET_SEQ_COLD


@dataclass(frozen=True)
class Goal:
    """Reached when the ratio against ``reference`` (>1: lazyfs better, as in the table) is at
    least ``threshold``; without a reference, when the value itself is on the good side of
    ``threshold`` (``strict``: never equal to it)."""

    what: str
    metric: Metric
    threshold: float
    reference: Series | None = None
    strict: bool = False
    series: Series | None = None  # the side measured; the metric's first series if None
    against: str = ""  # how the text names the reference, if not "LABEL's"
    issue: int = 11
    shown: str = ""  # how the text says a threshold without a reference ("1/3"), if not "N UNIT"

    @property
    def measured(self) -> Series:
        return self.series or self.metric.series[0]

    @property
    def text(self) -> str:
        unit = self.metric.unit
        if self.reference is not None:
            if unit.higher_is_better:
                return f"{self.what} ≥ {self.threshold:g}x {self.reference.label}"
            label = self.reference.label
            if self.threshold < 1:  # at most N times the reference
                return f"{self.what} ≤ {1 / self.threshold:g}x {self.against or label}"
            against = self.against or f"{label}'s"
            if self.threshold > 1:
                return f"{self.what} ≤ 1/{self.threshold:g} of {against}"
            return f"{self.what} ≤ {against}"
        if self.threshold == 0 and not unit.higher_is_better:
            return f"{self.what} = 0"
        if unit.higher_is_better:
            sign = ">" if self.strict else "≥"
        else:
            sign = "<" if self.strict else "≤"
        return f"{self.what} {sign} {self.shown or f'{self.threshold:g} {unit.symbol}'}"

    def judge(self, results: Results) -> tuple[str, bool | None]:
        """What was measured, in words, and whether the goal is reached (None: not measured)."""
        unit = self.metric.unit
        value = results.median(self.metric.key(self.measured))
        if value is None:
            return "not measured", None
        shown = f"{unit.format(value)} {unit.symbol}"
        if self.reference is None:
            if unit.higher_is_better:
                reached = value > self.threshold if self.strict else value >= self.threshold
            else:
                reached = value < self.threshold if self.strict else value <= self.threshold
            return shown, reached
        other = results.median(self.metric.key(self.reference))
        if other is None or other <= 0 or value <= 0:
            return f"{shown}; {self.reference.label}: not measured", None
        ratio = value / other if unit.higher_is_better else other / value
        against = f"{unit.format(other)} {unit.symbol}"
        return f"{ratio:.2f}x ({shown} against {against})", ratio >= self.threshold


FIRST_SHARE_GOAL = 5.0  # %: a tensor from the middle of a Xet file fetches a small part of it
FIRST_TENSOR_SPEEDUP = 10.0  # and takes at most a tenth of whole-file mode's time
RANDOM_4K_WARM_P50 = LATENCY["warm", RANDOM_4K, "p50"]
RANDOM_4K_WARM_P99 = LATENCY["warm", RANDOM_4K, "p99"]
RANDOM_4K_COLD_P50 = LATENCY["cold", RANDOM_4K, "p50"]
CURL_OPENSSL = SEQ_COLD.series[1]
LOCAL_HOT = SEQ_HOT.series[1]

GOALS: tuple[Goal, ...] = (
    Goal("cold sequential read", SEQ_COLD, 0.8, CURL_OPENSSL),
    Goal("cold sequential read", SEQ_COLD, 1.5, THROUGH_RCLONE),
    Goal("warm sequential read", SEQ_WARM, 0.7, THROUGH_PASSTHROUGH),
    Goal("hot sequential read", SEQ_HOT, 0.7, LOCAL_HOT),
    Goal("warm random 4 KiB pread p50", RANDOM_4K_WARM_P50, 1.0),
    Goal("warm random 4 KiB pread p99", RANDOM_4K_WARM_P99, 5.0),
    Goal("cold random 4 KiB pread p50", RANDOM_4K_COLD_P50, 1.0, THROUGH_RCLONE),
    Goal(f"{SHARDS} readers at once, aggregate", READERS, 1.0, ONE_READER),
    Goal(f"{SHARDS} readers: requests for a range fetched before", READERS_DUPLICATES, 0),
    Goal(f"{SHARDS} readers: daemon peak RSS", READERS_RSS, 400, strict=True),
    Goal("`lazyfs mount` until live", STARTUP_MOUNT, 0.4),
    Goal("`lazyfs status`", STARTUP_STATUS, 0.2),
    Goal("`lazyfs manifest build`", HASHING, 0.9, HASHLIB[1], series=MANIFEST_BUILD),
    # issue 12: loading models
    Goal(
        "cold Llama load",
        LLAMA_COLD,
        1.0,
        THEN_LOAD,
        against="curl every file, then load",
        issue=12,
    ),
    Goal(
        "cold Llama load",
        LLAMA_COLD,
        1 / 1.4,
        SLOWER_OF,
        against="max(download, local load)",
        issue=12,
    ),
    Goal(
        "first tensor",
        FIRST_TENSOR,
        50,
        SHARD_THEN_READ,
        against="curl of the shard, then the read",
        issue=12,
    ),
    Goal(
        "first tensor: data fetched",
        FIRST_TENSOR_FETCHED,
        1.0,
        ALLOWANCE,
        against="the tensor + 2 blocks + 1 MiB",
        issue=12,
    ),
    Goal("warm Llama load", LLAMA_WARM, 1 / 1.2, LOCAL_LOAD, against="the local load", issue=12),
    Goal(
        "hot Llama load: FUSE reads, % of the cold load's",
        LLAMA_HOT_SHARE,
        HOT_SHARE_GOAL,
        issue=12,
    ),
    # issue 13: Xet files
    Goal("Xet mode: cold sequential read", XET_SEQ_COLD, 0.8, MANIFEST, issue=13),
    Goal(
        "Xet mode: first tensor, data fetched, % of the file",
        XET_FIRST_SHARE,
        FIRST_SHARE_GOAL,
        strict=True,
        issue=13,
    ),
    Goal(
        "Xet mode: first tensor",
        XET_FIRST_TENSOR,
        FIRST_TENSOR_SPEEDUP,
        WHOLE,
        against="whole-file mode's (--no-xet)",
        issue=13,
    ),
    # issue 14: a fleet on one origin
    *(
        Goal(
            f"{mounts(nodes)} at once through one cache: origin bytes / (nodes x file size)",
            ORIGIN_SHARE[nodes],
            1 / nodes,  # the origin sends the file once
            shown="1" if nodes == 1 else f"1/{nodes}",
            issue=14,
        )
        for nodes in NODES
    ),
    Goal("cold sequential read through a cold cache tier", FLEET_SEQ_COLD, 0.9, DIRECT, issue=14),
)


def goals_table(results: Results, metrics: Sequence[Metric] | None = None) -> str:
    """Labels are written for tables already (curl \\| openssl). ``metrics``: the goals on
    these only (a section run alone)."""
    lines = ["| issue | goal | measured | reached |", "|---|---|---|---|"]
    for goal in GOALS:
        if metrics is not None and goal.metric not in metrics:
            continue
        measured, reached = goal.judge(results)
        verdict = {True: "yes", False: "no", None: "-"}[reached]
        lines.append(f"| {goal.issue} | {goal.text} | {measured} | {verdict} |")
    return "\n".join(lines)
