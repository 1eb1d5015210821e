"""Running commands for the benchmark: a failure is one line (``StepError``), never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

LAZYFS = [sys.executable, "-m", "lazyfs"]


class StepError(Exception):
    """A step failed; the message is one line saying why."""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[-1].strip() if text else ""
    if not isinstance(exc, StepError):
        line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line[:160]


def run(
    command: list[str],
    timeout: float,
    *,
    env: dict[str, str] | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; raise StepError with one line on a non-zero exit or a timeout."""
    name = what or Path(command[0]).name
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StepError(f"{name} timed out after {timeout:.0f}s") from None
    except OSError as exc:
        raise StepError(f"{name}: {exc.strerror}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1].strip() if lines else "no output"
        raise StepError(f"{name} exited {result.returncode}: {reason}"[:200])
    return result


def timed(command: list[str], timeout: float, *, what: str | None = None) -> float:
    """Seconds ``run`` took."""
    started = time.perf_counter()
    run(command, timeout, what=what)
    return time.perf_counter() - started


def first_line(command: list[str], timeout: float = 30.0) -> str:
    """The first line a command prints (a version, say), or "unknown"."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"
