"""What a run measured on: the commit and its uncommitted changes, and this machine."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

from scripts.benchmark.commands import LAZYFS, first_line
from tests.support.processes import NGINX

ROOT = Path(__file__).resolve().parents[2]


def tree_state() -> tuple[str, list[str]]:
    """HEAD and every uncommitted change (untracked files too) outside docs/, which the
    benchmark writes itself and which changes nothing it measures."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        return result.stdout if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD").strip() or "unknown"
    status = git("status", "--porcelain", "--untracked-files=all", "--", ".", ":!docs")
    changes = status.splitlines() if commit != "unknown" else ["not a git checkout"]
    return commit, changes


def describe(work: Path, load_start: float, nginx: bool = True) -> list[str]:
    """Lines for the doc's Machine section (the commit is the renderer's: it knows the changes);
    ``nginx``: it was the origin (not in a run of the Xet section alone)."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    device = first_line(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--target", str(work)])
    lines = [
        f"CPU: {os.cpu_count()} x {model} (nproc {first_line(['nproc'])})",
        f"memory: {memory}",
        f"kernel: {platform.release()}; {platform.python_implementation()} "
        f"{platform.python_version()}",
        f"lazyfs: {first_line([*LAZYFS, '--version'])}",
        f"work dir {work} on {device}",
        f"load average (1 min) at the start and the end: {load_start:.2f}, "
        f"{os.getloadavg()[0]:.2f} (anything else running shares the CPUs)",
    ]
    if nginx:
        lines.append(
            f"origin: {first_line([str(NGINX), '-v'])} (2 workers, sendfile) on 127.0.0.1; "
            f"{first_line(['rclone', 'version'])}; {first_line(['curl', '--version'])[:40]}; "
            f"{first_line(['openssl', 'version'])}"
        )
    return lines
