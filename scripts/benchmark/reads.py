"""How the workloads read and what they measure about it: dd, preads and tensor loads in a
subprocess (a read stuck on a mount can be timed out and killed), hashing, /proc figures."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.benchmark.commands import StepError, run, timed

KIB, MIB, GIB = 2**10, 2**20, 2**30

HELPER = r"""
import hashlib, json, os, sys, time
args = json.loads(sys.argv[1])
if args["mode"] == "pread":
    fd = os.open(args["path"], os.O_RDONLY)
    try:
        if args["fadvise_random"]:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        digest, latencies = hashlib.sha256(), []
        for offset in args["offsets"]:
            started = time.perf_counter()
            data = os.pread(fd, args["size"], offset)
            latencies.append(time.perf_counter() - started)
            if len(data) != args["size"]:
                sys.exit(f"short read at offset {offset}: {len(data)} of {args['size']} bytes")
            digest.update(data)
    finally:
        os.close(fd)
    print(json.dumps({"latencies": latencies, "sha256": digest.hexdigest()}))
elif args["mode"] == "sha256":
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    with open(args["path"], "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(memoryview(buffer)[:count])
    print(json.dumps({"sha256": digest.hexdigest()}))
elif args["mode"] == "names":
    from safetensors import safe_open
    with safe_open(args["path"], "numpy") as tensors:
        print(json.dumps(list(tensors.keys())))
else:
    from safetensors import safe_open
    with safe_open(args["path"], "numpy") as tensors:
        names = list(tensors.keys())
        tensor = tensors.get_tensor(args["name"])
    print(json.dumps({"tensors": len(names), "nbytes": int(tensor.nbytes)}))
"""


@dataclass(frozen=True)
class Probe:
    """Preads at fixed offsets and the sha256 of all they must return."""

    offsets: list[int]
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path, offsets: list[int], size: int) -> Probe:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for offset in offsets:
                digest.update(os.pread(handle.fileno(), size, offset))
        return cls(offsets, size, digest.hexdigest())


def helper(args: dict[str, Any], timeout: float) -> Any:
    result = run([sys.executable, "-c", HELPER, json.dumps(args)], timeout, what=str(args["mode"]))
    return json.loads(result.stdout)


def preads(path: Path, probe: Probe, timeout: float, *, fadvise_random: bool) -> list[float]:
    """Latencies (s) of the probe's preads of ``path``; the bytes read are checked."""
    arguments = {"offsets": probe.offsets, "size": probe.size, "fadvise_random": fadvise_random}
    out = helper({"mode": "pread", "path": str(path), **arguments}, timeout)
    if out["sha256"] != probe.sha256:
        raise StepError(f"preads of {path} returned wrong bytes")
    return list(out["latencies"])


def tensor_names(path: Path, timeout: float) -> list[str]:
    return list(helper({"mode": "names", "path": str(path)}, timeout))


def load_tensor(path: Path, name: str, timeout: float) -> None:
    """Open a safetensors file (its header) and load one tensor, as a model loader would."""
    helper({"mode": "tensor", "path": str(path), "name": name}, timeout)


def dd(path: Path, timeout: float) -> float:
    """GB/s of dd reading ``path`` to /dev/null in 1 MiB requests."""
    size = path.stat().st_size
    return size / timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"], timeout) / 1e9


def dd_at_once(paths: list[Path], timeout: float) -> float:
    """Seconds from starting one dd per path (1 MiB requests, to /dev/null) all at once to the
    last one's exit; every dd must succeed."""
    commands = [["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"] for path in paths]
    return at_once(commands, timeout, "dd")[0]


def sha256_at_once(paths: list[Path], timeout: float) -> tuple[float, list[str]]:
    """Seconds from starting one reader per path (a helper process reading 1 MiB at a time and
    hashing it) all at once to the last one's exit, and the sha256 each read."""
    commands = [
        [sys.executable, "-c", HELPER, json.dumps({"mode": "sha256", "path": str(path)})]
        for path in paths
    ]
    seconds, outputs = at_once(commands, timeout, "sha256 reader")
    return seconds, [json.loads(output)["sha256"] for output in outputs]


def at_once(commands: list[list[str]], timeout: float, what: str) -> tuple[float, list[str]]:
    """Seconds from starting every command at once to the last one's exit, and what each printed
    on stdout; every command must succeed."""
    started = time.perf_counter()
    procs: list[subprocess.Popen[bytes]] = []
    outputs = []
    try:
        for command in commands:
            procs.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        deadline = started + timeout
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(0.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                raise StepError(
                    f"{len(commands)} {what} at once: not done after {timeout:.0f}s"
                ) from None
            if proc.returncode != 0:
                lines = err.decode(errors="replace").strip().splitlines()
                reason = lines[-1] if lines else "no output"
                raise StepError(f"{what} exited {proc.returncode}: {reason}"[:200])
            outputs.append(out.decode(errors="replace"))
        return time.perf_counter() - started, outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def hash_with_threads(path: Path, threads: int) -> float:
    """Seconds to sha256 ``path`` split in ``threads`` contiguous parts hashed concurrently."""
    size = path.stat().st_size
    part = -(-size // threads)

    def work(start: int) -> None:
        digest = hashlib.sha256()
        buffer = bytearray(4 * MIB)
        view = memoryview(buffer)
        end = min(size, start + part)
        with open(path, "rb", buffering=0) as handle:
            handle.seek(start)
            position = start
            while position < end:
                count = handle.readinto(view[: min(len(buffer), end - position)])
                if not count:
                    break
                digest.update(view[:count])
                position += count

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i * part,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def dir_bytes(path: Path) -> int:
    """Bytes on disk under ``path`` (allocated blocks: a sparse file counts what it holds)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the most resident memory the process has had."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise StepError(f"no VmHWM in /proc/{pid}/status")


def size_label(size: int) -> str:
    return f"{size // GIB}G" if size % GIB == 0 else f"{size // MIB}M"
