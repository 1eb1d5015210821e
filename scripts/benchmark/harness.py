"""Runs every workload on each of its subjects, --runs times, into one ``Results``.

A step is one workload on one subject: it starts from an empty scratch area, and its failure
(one line) goes into the cells of the figures it had not recorded while the others go on.
Mounts, nginx and every process started are stopped on every way out.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Sequence
from pathlib import Path

from scripts.benchmark.commands import one_line, progress
from scripts.benchmark.fleet import FLEET_SUBJECTS, FLEET_WORKLOADS, FleetOrigin, machine_line
from scripts.benchmark.machine import describe, tree_state
from scripts.benchmark.reads import size_label
from scripts.benchmark.results import Parameters, Results, StepRecorder
from scripts.benchmark.stage import Stage
from scripts.benchmark.subjects import SUBJECTS, Subject
from scripts.benchmark.workload import Workload
from scripts.benchmark.workloads import SECTIONS, WORKLOADS
from scripts.benchmark.xet import ORIGIN, XET_SUBJECTS, XET_WORKLOADS, XetOrigin

# Every subject a workload may name: what a run that died may have left behind is theirs.
ALL_SUBJECTS: tuple[type[Subject], ...] = (*SUBJECTS, *XET_SUBJECTS, *FLEET_SUBJECTS)


def benchmark(stage: Stage, runs: int, command: str, only: str = "") -> Results:
    """Every section, or only the one ``only`` names (a key of SECTIONS)."""
    started, load_start = time.monotonic(), os.getloadavg()[0]
    commit, changes = tree_state()
    if changes:
        progress(f"warning: measuring with {len(changes)} uncommitted change(s)")
    workloads = SECTIONS[only] if only else WORKLOADS
    try:
        clean_up(stage)  # what a run that died left behind
        stage.prepare(everything=not only)
        if set(workloads) & set(XET_WORKLOADS):
            stage.xet = XetOrigin.start(stage)
        if set(workloads) & set(FLEET_WORKLOADS):
            stage.fleet = FleetOrigin.start(stage)
        described = {} if only else stage.models.describe()
        results = Results(
            commit=commit,
            changes=changes,
            command=command,
            date=datetime.date.today().isoformat(),
            runs=runs,
            quick=stage.quick,
            parameters=Parameters(
                big=size_label(stage.big_size),
                model=stage.model_size,
                tensor=stage.tensor,
                first_mib_offset=stage.first_mib.offsets[0] if stage.first_mib else 0,
                shard=size_label(stage.shard_size),
                **described,
                **(stage.xet.describe() if stage.xet else {}),
                fleet=size_label(stage.fleet_size) if stage.fleet else "",
            ),
            only=only,
        )
        for number in range(1, runs + 1):
            progress(f"== run {number} of {runs}")
            run_workloads(workloads, stage, results, number)
    finally:
        clean_up(stage)
        stage.close()
        report_logs(stage.logs)
    for note in stage.notes:
        results.note(note)
    origins = [ORIGIN] if stage.xet else []
    origins += [machine_line()] if stage.fleet else []
    results.machine = [*describe(stage.work, load_start, nginx=not only), *origins]
    results.minutes = (time.monotonic() - started) / 60
    return results


def run_workloads(
    workloads: Sequence[Workload], stage: Stage, results: Results, number: int = 1
) -> None:
    """Run ``number`` (from 1): the workloads that take part in it."""
    for workload in workloads:
        if workload.runs(number) < number:
            continue
        for subject in workload.subjects():
            step(workload, subject(stage), stage, results)


def step(workload: Workload, subject: Subject, stage: Stage, results: Results) -> None:
    record = StepRecorder(results, workload.metrics, type(subject))
    progress(f"- {subject.name}: {workload.title}")
    started = time.monotonic()
    try:
        workload.run(subject, stage, record)
    except Exception as exc:  # one step's failure must not stop the others
        reason = one_line(exc)
        progress(f"  failed: {reason}")
        record.fail(reason)
    finally:
        stage.clear_scratch()
    shown = ", ".join(f"{key}={value:.3g}" for key, value in record.recorded.items())
    progress(f"  {shown or 'no figures'} ({time.monotonic() - started:.0f}s)")


def clean_up(stage: Stage) -> None:
    for subject in ALL_SUBJECTS:
        subject.clean_up(stage)


def report_logs(logs: Path) -> None:
    daemon_log = logs / "lazyfs-daemon.log"
    warnings = 0
    if daemon_log.exists():
        lines = daemon_log.read_text(errors="replace").splitlines()
        warnings = sum(1 for line in lines if " WARNING " in line or " ERROR " in line)
    progress(f"logs in {logs} (lazyfs daemon: {warnings} warning/error lines)")
