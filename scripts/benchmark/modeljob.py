"""The benchmark's side of scripts/benchmark/modelload.py: a load in a process of its own, started
ahead of time so its imports (seconds of torch and transformers) are done before anything is
mounted or dropped from the page cache, then told what to load and waited for.

Such a process never loads from a hub: HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE are set, and its
Hugging Face home is in the work directory, so it writes nothing under ~.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scripts.benchmark.commands import StepError, run

LOAD = Path(__file__).with_name("modelload.py")
MAKE = Path(__file__).with_name("modelmake.py")
READY_TIMEOUT = 180.0  # importing torch with a cold page cache on a busy machine
EXIT_TIMEOUT = 10.0


def model_env(work: Path) -> dict[str, str]:
    """The environment of every process that imports transformers: offline, quiet, and with
    its caches under ``work``."""
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HOME=str(work / "hf-home"),
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
    )


class LoadProcess:
    """One modelload.py process that said ``ready``; ``load`` may be called once."""

    def __init__(self, proc: subprocess.Popen[bytes], kind: str, log: Path) -> None:
        self.proc = proc
        self.kind = kind
        self.log = log
        self.answered = False

    def load(self, timeout: float, **request: object) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request, default=str).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self.failed("exited before it was asked to load") from None
        answer: dict[str, Any] = json.loads(self.line(timeout, "loading"))
        self.answered = True
        return answer

    def line(self, timeout: float, doing: str) -> str:
        """The next line the process writes on stdout, within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepError(f"{self.kind} load: {doing} took over {timeout:.0f}s")
            readable, _, _ = select.select([out], [], [], left)
            if readable:
                chunk = os.read(out, 65536)
                if not chunk:
                    raise self.failed(f"exited while {doing}")
                data += chunk
        return data.decode()

    def failed(self, what: str) -> StepError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(EXIT_TIMEOUT)
        lines = self.log.read_text(errors="replace").strip().splitlines()
        reason = lines[-1].strip() if lines else "no output"
        return StepError(f"{self.kind} load {what} (exit {self.proc.returncode}): {reason}"[:200])


@contextlib.contextmanager
def load_process(kind: str, work: Path, logs: Path) -> Iterator[LoadProcess]:
    """A modelload.py process of ``kind`` that has done its imports; killed on the way out if
    it is still running. Its stderr goes to logs/model-load.log (the last lines: this load's)."""
    log = logs / "model-load.log"
    with open(log, "ab") as err:
        err.write(f"==> {kind}\n".encode())
        err.flush()
        try:
            proc = subprocess.Popen(
                [sys.executable, str(LOAD), kind],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=model_env(work),
            )
        except OSError as exc:
            raise StepError(f"{kind} load: {exc.strerror}") from None
    process = LoadProcess(proc, kind, log)
    try:
        if process.line(READY_TIMEOUT, "importing").strip() != "ready":
            raise process.failed("did not say it was ready")
        yield process
    finally:
        if process.answered:  # it exits by itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(EXIT_TIMEOUT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def load_once(kind: str, work: Path, logs: Path, timeout: float, **request: object) -> Any:
    """Start a load process and load at once (for references: nothing to set up in between)."""
    with load_process(kind, work, logs) as process:
        return process.load(timeout, **request)


def make(job: dict[str, Any], work: Path, logs: Path, timeout: float) -> None:
    """Run modelmake.py on ``job`` (written to a file beside the logs)."""
    job_file = logs / f"make-{job['kind']}.json"
    job_file.write_text(json.dumps(job))
    command = [sys.executable, str(MAKE), str(job_file)]
    run(command, timeout, env=model_env(work), what=f"writing the {job['kind']} model")
