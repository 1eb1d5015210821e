"""scripts/bench: measure (needs root), or render docs/performance.md from saved results."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from scripts.benchmark import __doc__ as package_doc
from scripts.benchmark.commands import StepError, one_line, progress
from scripts.benchmark.harness import benchmark
from scripts.benchmark.modelworkloads import MODEL_RUNS
from scripts.benchmark.render import DOC, DOC_RESULTS, publish, summary
from scripts.benchmark.results import Results, ResultsError
from scripts.benchmark.stage import Stage
from scripts.benchmark.workloads import SECTIONS, all_metrics


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=(package_doc or "").split("\n\n")[0],
        epilog=(
            f"A run saves its results in WORK/results/COMMIT.json and, if it was a full run on a "
            f"committed tree, writes {DOC.relative_to(DOC.parents[1])} and the results it is "
            f"rendered from ({DOC_RESULTS.name})."
        ),
    )
    parser.add_argument("--work", default="/tmp/lazyfs-bench", help="work directory")
    parser.add_argument(
        "--runs",
        type=int,
        help=f"runs per measurement (default 3; 1 --quick; model workloads: at most {MODEL_RUNS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one run, a 512 MiB file, a 256M model, 8 x 32 MiB shards, small models "
        "(a 0.2 GB Llama in 2 shards, a 0.1 GB GGUF) and a 64 MiB file for the fleet: a smoke run",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="regenerate the test files and the models even if the work dir has them",
    )
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the generated files in the work dir for the next run (the models in "
        "WORK/models are always kept)",
    )
    parser.add_argument(
        "--only",
        choices=sorted(SECTIONS),
        default="",
        help="measure one section alone (xet: issue 13's Xet file; fleet: issue 14's mounts "
        "through one cache tier); its results are saved, never rendered as the doc",
    )
    parser.add_argument(
        "--render",
        metavar="RESULTS.json",
        help="measure nothing: write docs/performance.md from saved results",
    )
    options = parser.parse_args(argv)
    if options.runs is not None and options.runs < 1:
        parser.error("--runs must be at least 1")
    return options


def render(source: Path) -> int:
    try:
        results = Results.load(source, all_metrics())
        publish(results)
    except ResultsError as exc:
        print(f"bench: {source}: {exc}", file=sys.stderr)
        return 1
    progress(f"wrote {DOC} and {DOC_RESULTS} from {source}")
    return 0


def measure(options: argparse.Namespace, command: str) -> int:
    runs = 1 if options.quick and options.runs is None else (options.runs or 3)
    stage = Stage(Path(options.work), options.quick, options.fresh, options.keep_data)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        results = benchmark(stage, runs, command, options.only)
    except KeyboardInterrupt:
        print("bench: interrupted; cleaned up", file=sys.stderr)
        return 130
    except (StepError, OSError) as exc:
        print(f"bench: {one_line(exc)}", file=sys.stderr)
        return 1
    suffix = ("-quick" if results.quick else "") + ("" if results.committed else "-dirty")
    suffix = (f"-{results.only}" if results.only else "") + suffix
    saved = stage.work / "results" / f"{results.commit[:12]}{suffix}.json"
    results.save(saved)
    print(summary(results, SECTIONS.get(results.only)))
    progress(f"results in {saved}")
    try:
        publish(results)
    except ResultsError as exc:
        progress(f"{DOC.name} not written: {exc}")
    else:
        progress(f"wrote {DOC} and {DOC_RESULTS}")
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    options = parse(arguments)
    if options.render:
        return render(Path(options.render))
    if os.geteuid() != 0:
        print("bench: needs root (FUSE mounts, drop_caches)", file=sys.stderr)
        return 2
    return measure(options, shlex.join(["scripts/bench", *arguments]))


if __name__ == "__main__":
    sys.exit(main())
