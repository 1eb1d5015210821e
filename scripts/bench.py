"""The benchmark behind scripts/bench: lazyfs against curl, download-then-read, rclone mount
and the local disk, on one machine, with nginx on 127.0.0.1 as the origin for everyone.

Every figure is the median of --runs runs. One table goes to stdout and, with a description
of the machine and the exact command, to docs/performance.md. Progress and errors go to
stderr. A step that fails prints one line and leaves "failed: reason" in its cells; the other
measurements go on. Mounts, nginx and every process this script starts are stopped on every
way out (processes by their own pid only: other people run lazyfs on this machine too).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAZYFS = str(ROOT / ".venv" / "bin" / "lazyfs")
PYTHON = sys.executable
DOCS = ROOT / "docs" / "performance.md"
NGINX = "/usr/sbin/nginx"
KIB, MIB, GIB = 2**10, 2**20, 2**30

MOUNT_TIMEOUT = 240.0  # `lazyfs mount` waits up to 180 s for its daemon itself
UNMOUNT_TIMEOUT = 60.0
RCLONE_READY_TIMEOUT = 30.0
SMALL_TIMEOUT = 30.0
SEED = 20240601
RANDOM_4K_COUNT = 1000
RANDOM_1M_COUNT = 100

# Runs in a subprocess, so a read stuck on a mount can be timed out and killed.
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
else:
    from safetensors import safe_open
    with safe_open(args["path"], "numpy") as tensors:
        names = list(tensors.keys())
        tensor = tensors.get_tensor(args["name"])
    print(json.dumps({"tensors": len(names), "nbytes": int(tensor.nbytes)}))
"""


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


def timed(command: list[str], timeout: float, **kwargs: object) -> float:
    started = time.perf_counter()
    run(command, timeout, **kwargs)  # type: ignore[arg-type]
    return time.perf_counter() - started


def is_mounted(path: Path) -> bool:
    target = os.fsencode(path)
    with open("/proc/self/mountinfo", "rb") as mounts:
        return any(line.split(b" ")[4].replace(b"\\040", b" ") == target for line in mounts)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def processes_with(argument: str, also: str) -> list[int]:
    """Pids whose command line has both exact arguments (our own mount point, say)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            args = cmdline(int(entry))
            if argument in args and also in args:
                found.append(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise StepError(f"no VmHWM in /proc/{pid}/status")


def kill_pid(pid: int, marker: str, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, one pid, and only while its command line still has ``marker``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive(pid) or marker not in cmdline(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def size_label(size: int) -> str:
    return f"{size // GIB}G" if size % GIB == 0 else f"{size // MIB}M"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


# --- what is measured, and how the table shows it -------------------------------------------

THROUGHPUT, LATENCY_S, LATENCY_MS, MEMORY = "GB/s", "s", "ms", "MiB"
CPU = "CPU s per GB"  # like the others but throughput: lower is better


@dataclass(frozen=True)
class Row:
    label: str
    unit: str
    lazyfs: str  # metric key
    alternatives: tuple[tuple[str, str], ...]  # (label, metric key)


def rows(big: str, model: str) -> list[Row]:
    random_rows = []
    for state in ("cold", "warm"):
        for kind, count in (("4k", RANDOM_4K_COUNT), ("1m", RANDOM_1M_COUNT)):
            for quantile in ("p50", "p99"):
                size = "4 KiB" if kind == "4k" else "1 MiB"
                random_rows.append(
                    Row(
                        f"4. random {count} x {size} preads, {state}, {quantile}",
                        LATENCY_MS,
                        f"rand_{kind}_{state}_{quantile}_lazyfs",
                        (("rclone mount", f"rand_{kind}_{state}_{quantile}_rclone"),),
                    )
                )
    for kind, count in (("4k", RANDOM_4K_COUNT), ("1m", RANDOM_1M_COUNT)):
        size = "4 KiB" if kind == "4k" else "1 MiB"
        random_rows.append(
            Row(
                f"4. data fetched for the cold {count} x {size} preads (cache size after)",
                MEMORY,
                f"rand_{kind}_fetched_lazyfs",
                (("rclone mount", f"rand_{kind}_fetched_rclone"),),
            )
        )
    return [
        Row(
            f"1. cold sequential read, {big} file",
            THROUGHPUT,
            "seq_cold_lazyfs",
            (
                ("curl \\| openssl dgst -sha256", "curl_hash"),
                ("curl -o, then openssl dgst", "download_hash"),
                ("rclone mount, dd", "seq_cold_rclone"),
            ),
        ),
        Row(
            f"2. time to first tensor ({model} safetensors, mount + header + 1 tensor)",
            LATENCY_S,
            "ttft_lazyfs",
            (("curl -o, then read the tensor", "ttft_download"),),
        ),
        Row(
            f"2. first MiB at 3/4 of the {big} file (pread only, cold)",
            LATENCY_MS,
            "first_mib_lazyfs",
            (
                ("rclone mount", "first_mib_rclone"),
                ("curl -o, then pread", "first_mib_download"),
            ),
        ),
        Row(
            f"3. warm sequential read (disk cache, new mount, no page cache), {big}",
            THROUGHPUT,
            "seq_warm_lazyfs",
            (
                ("local disk dd, cold page cache", "seq_local_cold"),
                ("rclone mount", "seq_warm_rclone"),
            ),
        ),
        Row(
            f"3. hot sequential read (second read, same mount: page cache), {big}",
            THROUGHPUT,
            "seq_hot_lazyfs",
            (
                ("local disk dd, hot page cache", "seq_local_hot"),
                ("rclone mount", "seq_hot_rclone"),
            ),
        ),
        *random_rows,
        Row(
            "5. daemon peak RSS (VmHWM) during the cold sequential read",
            MEMORY,
            "rss_lazyfs",
            (("rclone mount", "rss_rclone"),),
        ),
        Row(
            "5. daemon CPU time (user + system) per GB of the cold sequential read",
            CPU,
            "cpu_lazyfs",
            (("rclone mount", "cpu_rclone"),),
        ),
        Row(
            f"6. `lazyfs manifest build` of the {big} file (end to end, page cache hot)",
            THROUGHPUT,
            "manifest_build",
            (
                ("hashlib sha256, 2 threads (a half each)", "hash_2threads"),
                ("hashlib sha256, 1 thread", "hash_1thread"),
            ),
        ),
    ]


# --- the benchmark -------------------------------------------------------------------------


class Bench:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.quick = options.quick
        self.runs = 1 if options.quick and options.runs is None else (options.runs or 3)
        self.big_size = 512 * MIB if self.quick else 2 * GIB
        self.model_size = "256M" if self.quick else "1G"
        self.work = Path(options.work).absolute()
        self.www = self.work / "www"
        self.big_dir = self.www / f"big-{size_label(self.big_size)}"
        self.big_file = self.big_dir / "file.bin"
        self.model_dir = self.www / f"model-{self.model_size}"
        self.model_file = self.model_dir / "model.safetensors"
        self.hash_dir = self.work / "hash"  # a hard link of the big file, for manifest build
        self.mnt_lazyfs = self.work / "mnt-lazyfs"
        self.mnt_rclone = self.work / "mnt-rclone"
        self.scratch = self.work / "scratch"  # caches and downloads, emptied after each step
        self.logs = self.work / "logs"
        self.bin = self.work / "bin"  # a private PATH entry: `fusermount` for rclone
        self.nginx: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.rclone: subprocess.Popen[bytes] | None = None
        self.values: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.notes: list[str] = []
        self.step_counter = 0
        self.tensor_name = ""
        self.first_mib_offset = 0
        self.first_mib_sha = ""
        self.random_sets: dict[str, tuple[list[int], int, str]] = {}
        self.drop_warned = False
        self.log_copied: dict[Path, int] = {}
        self.load_start = os.getloadavg()[0]

    # -- urls --
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def big_url(self) -> str:  # the directory lazyfs and rclone mount
        return f"{self.base_url}/{self.big_dir.name}/"

    @property
    def big_file_url(self) -> str:
        return f"{self.big_url}{self.big_file.name}"

    @property
    def model_url(self) -> str:
        return f"{self.base_url}/{self.model_dir.name}/"

    # -- page cache --
    def drop_caches(self) -> None:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as handle:
                handle.write("3\n")
        except OSError as exc:
            if not self.drop_warned:
                self.drop_warned = True
                note = f"could not drop the page cache ({exc.strerror}): 'cold' figures are not"
                self.notes.append(note)
                progress(f"warning: {note}")

    # -- setup --
    def prepare(self) -> None:
        for path in (self.work, self.www, self.logs, self.bin, self.scratch, self.hash_dir):
            path.mkdir(parents=True, exist_ok=True)
        for old in ("lazyfs-daemon.log", "rclone.log"):
            (self.logs / old).unlink(missing_ok=True)
        # Leftovers of an earlier run that died: our own mount points and nginx only.
        self.cleanup_mounts()
        self.stop_stale_nginx()
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir()
        for mountpoint in (self.mnt_lazyfs, self.mnt_rclone):
            mountpoint.mkdir(exist_ok=True)
        fusermount3 = shutil.which("fusermount3")
        link = self.bin / "fusermount"
        if fusermount3 and not link.exists():
            link.symlink_to(fusermount3)
        (self.bin / "rclone.conf").touch()

        self.big_dir.mkdir(exist_ok=True)
        if self.options.fresh or not (
            self.big_file.exists() and self.big_file.stat().st_size == self.big_size
        ):
            progress(f"writing {size_label(self.big_size)} of random bytes to {self.big_file}")
            with open(self.big_file, "wb") as handle:
                for _ in range(self.big_size // (16 * MIB)):
                    handle.write(os.urandom(16 * MIB))
        if self.options.fresh or not self.model_file.exists():
            progress(f"writing a {self.model_size} sample model to {self.model_dir}")
            shutil.rmtree(self.model_dir, ignore_errors=True)
            run([LAZYFS, "sample", str(self.model_dir), "--size", self.model_size], 600)
        for directory in (self.big_dir, self.model_dir):
            progress(f"lazyfs manifest build {directory}")
            run([LAZYFS, "manifest", "build", str(directory), "--block-size", "4M"], 600)
        link = self.hash_dir / self.big_file.name
        link.unlink(missing_ok=True)
        os.link(self.big_file, link)

        # The tensor the time-to-first-tensor step loads: the middle one, by header order.
        result = run(
            [
                PYTHON,
                "-c",
                "import json,sys\nfrom safetensors import safe_open\n"
                "with safe_open(sys.argv[1], 'numpy') as t: names = list(t.keys())\n"
                "print(json.dumps(names))",
                str(self.model_file),
            ],
            120,
            what="safe_open",
        )
        names = json.loads(result.stdout)
        self.tensor_name = names[len(names) // 2]

        # Offsets (fixed seed) and the digests of what they must read, from the local file.
        rng = random.Random(SEED)
        pages = self.big_size // (4 * KIB)
        self.first_mib_offset = self.big_size * 3 // 4 + MIB  # 1 MiB into a 4 MiB block
        sets = {
            "4k": ([rng.randrange(pages - 1) * 4 * KIB for _ in range(RANDOM_4K_COUNT)], 4 * KIB),
            "1m": ([rng.randrange(pages - 256) * 4 * KIB for _ in range(RANDOM_1M_COUNT)], MIB),
            "first": ([self.first_mib_offset], MIB),
        }
        with open(self.big_file, "rb") as handle:
            for name, (offsets, size) in sets.items():
                digest = hashlib.sha256()
                for offset in offsets:
                    digest.update(os.pread(handle.fileno(), size, offset))
                self.random_sets[name] = (offsets, size, digest.hexdigest())
        self.start_nginx()

    def nginx_conf(self) -> Path:
        nginx_dir = self.work / "nginx"
        nginx_dir.mkdir(exist_ok=True)
        temp = "\n".join(
            f"    {kind}_temp_path {nginx_dir / (kind + '_temp')};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = f"""\
daemon off;
master_process on;
worker_processes 2;
{"user root;" if os.geteuid() == 0 else ""}
pid {nginx_dir / "nginx.pid"};
error_log {nginx_dir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
{temp}
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    types {{ }}
    server {{
        listen 127.0.0.1:{self.port};
        root {self.www};
        autoindex on;
        autoindex_exact_size on;
    }}
}}
"""
        path = nginx_dir / "nginx.conf"
        path.write_text(conf)
        return path

    def start_nginx(self) -> None:
        for attempt in range(3):
            self.port = free_port()
            conf = self.nginx_conf()
            error_log = conf.parent / "error.log"
            with open(conf.parent / "nginx.stderr", "ab") as stderr:
                self.nginx = subprocess.Popen(
                    [NGINX, "-c", str(conf), "-p", str(conf.parent), "-e", str(error_log)],
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    start_new_session=True,  # its own group: a last-resort kill gets the workers
                )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.nginx.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                except OSError:
                    time.sleep(0.02)
                    continue
                progress(f"nginx (pid {self.nginx.pid}) serving {self.www} at {self.base_url}")
                return
            self.stop_nginx()
            progress(f"nginx did not start on port {self.port} (attempt {attempt + 1})")
        tail = (self.work / "nginx" / "error.log").read_text(errors="replace").strip()
        raise StepError(f"nginx did not start: {tail.splitlines()[-1] if tail else 'no log'}")

    def stop_nginx(self) -> None:
        proc, self.nginx = self.nginx, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the leader is unreaped: the group is ours
            proc.wait(10)

    def stop_stale_nginx(self) -> None:
        pid_path = self.work / "nginx" / "nginx.pid"
        conf = str(self.work / "nginx" / "nginx.conf")
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_path.read_text().strip())
            if conf in cmdline(pid):
                progress(f"stopping nginx left by an earlier run (pid {pid})")
                kill_pid(pid, conf)

    # -- lazyfs mounts --
    def new_dir(self, name: str) -> Path:
        self.step_counter += 1
        path = self.scratch / f"{self.step_counter:03d}-{name}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def daemon_pid(self) -> int:
        pids = processes_with(str(self.mnt_lazyfs), "--foreground")
        if not pids:
            raise StepError("lazyfs mounted, but its daemon process was not found")
        return pids[0]

    @contextlib.contextmanager
    def lazyfs_mount(self, url: str, cache: Path) -> Iterator[int]:
        """Mount (not timed); yield the daemon's pid; always unmount, keeping its log."""
        try:
            run(
                [
                    LAZYFS,
                    "mount",
                    url,
                    str(self.mnt_lazyfs),
                    "--cache-dir",
                    str(cache),
                    "--cache-size",
                    "50G",
                ],
                MOUNT_TIMEOUT,
                what="lazyfs mount",
            )
            yield self.daemon_pid()
        finally:
            self.unmount_lazyfs()
            self.keep_logs(cache)

    def unmount_lazyfs(self) -> None:
        pids = processes_with(str(self.mnt_lazyfs), "--foreground")
        if is_mounted(self.mnt_lazyfs) or pids:
            try:
                run(
                    [LAZYFS, "unmount", str(self.mnt_lazyfs)],
                    UNMOUNT_TIMEOUT,
                    what="lazyfs unmount",
                )
            except StepError as exc:
                progress(f"  warning: {exc}")
        self.force_unmount(self.mnt_lazyfs)
        for pid in pids:
            kill_pid(pid, str(self.mnt_lazyfs))

    def force_unmount(self, mountpoint: Path) -> None:
        for flags in (["-u"], ["-u", "-z"]):
            if not is_mounted(mountpoint):
                return
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    ["fusermount3", *flags, str(mountpoint)],
                    capture_output=True,
                    timeout=SMALL_TIMEOUT,
                    check=False,
                )
            time.sleep(0.2)

    def keep_logs(self, cache: Path) -> None:
        """Append what the daemon logged since the last copy to logs/lazyfs-daemon.log."""
        logs = cache / "logs"
        if logs.is_dir():
            with open(self.logs / "lazyfs-daemon.log", "ab") as out:
                for log in sorted(logs.iterdir()):
                    data = log.read_bytes()
                    new = data[self.log_copied.get(log, 0) :]
                    self.log_copied[log] = len(data)
                    if new:
                        out.write(f"==> {cache.name}/{log.name}\n".encode())
                        out.write(new)

    # -- rclone mounts --
    @contextlib.contextmanager
    def rclone_mount(self, cache: Path) -> Iterator[int]:
        env = dict(os.environ, PATH=f"{self.bin}:{os.environ.get('PATH', '')}")
        command = [
            "rclone",
            "mount",
            ":http:",
            str(self.mnt_rclone),
            "--http-url",
            self.big_url,
            "--vfs-cache-mode",
            "full",
            "--read-only",
            "--cache-dir",
            str(cache),
            "--log-file",
            str(self.logs / "rclone.log"),
            "--log-level",
            "NOTICE",
            "--config",
            str(self.bin / "rclone.conf"),  # empty: no remotes, no "config not found" notice
        ]
        try:
            self.rclone = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
            deadline = time.monotonic() + RCLONE_READY_TIMEOUT
            while not is_mounted(self.mnt_rclone):
                if self.rclone.poll() is not None:
                    raise StepError(
                        f"rclone mount exited {self.rclone.returncode} "
                        f"(see {self.logs / 'rclone.log'})"
                    )
                if time.monotonic() > deadline:
                    raise StepError(f"rclone mount not live after {RCLONE_READY_TIMEOUT:.0f}s")
                time.sleep(0.05)
            yield self.rclone.pid
        finally:
            self.unmount_rclone()

    def unmount_rclone(self) -> None:
        self.force_unmount(self.mnt_rclone)
        proc, self.rclone = self.rclone, None
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.force_unmount(self.mnt_rclone)

    def cleanup_mounts(self) -> None:
        self.unmount_lazyfs()
        self.unmount_rclone()
        for pid in processes_with(str(self.mnt_rclone), ":http:"):
            kill_pid(pid, str(self.mnt_rclone))

    # -- reading --
    def dd(self, path: Path) -> float:
        """GB/s of dd reading ``path`` to /dev/null in 1 MiB requests."""
        size = path.stat().st_size
        seconds = timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"], self.io_timeout())
        return size / seconds / 1e9

    def io_timeout(self) -> float:
        return 120 + self.big_size / (20 * 1e6)  # room for 20 MB/s

    def helper(self, args: dict[str, object], timeout: float) -> dict[str, object]:
        result = run([PYTHON, "-c", HELPER, json.dumps(args)], timeout, what=str(args["mode"]))
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def preads(self, path: Path, which: str, fadvise_random: bool = True) -> list[float]:
        """Latencies (s) of the preads of one offset set; checks the bytes read."""
        offsets, size, expected = self.random_sets[which]
        out = self.helper(
            {
                "mode": "pread",
                "path": str(path),
                "offsets": offsets,
                "size": size,
                "fadvise_random": fadvise_random,
            },
            self.io_timeout(),
        )
        if out["sha256"] != expected:
            raise StepError(f"{which} preads of {path} returned wrong bytes")
        return out["latencies"]  # type: ignore[return-value]

    def record_quantiles(
        self, rec: Callable[[str, float], None], key: str, latencies: list[float]
    ) -> None:
        rec(key.format(q="p50"), percentile(latencies, 0.5) * 1000)
        rec(key.format(q="p99"), percentile(latencies, 0.99) * 1000)

    # -- steps --
    def step(
        self, title: str, keys: list[str], body: Callable[[Callable[[str, float], None]], None]
    ) -> None:
        got: dict[str, float] = {}

        def rec(key: str, value: float) -> None:
            got[key] = value
            self.values[key].append(value)

        progress(f"- {title}")
        started = time.monotonic()
        try:
            body(rec)
        except Exception as exc:  # one step's failure must not stop the others
            reason = one_line(exc)
            progress(f"  failed: {reason}")
            for key in keys:
                if key not in got:
                    self.errors[key].append(reason)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch.mkdir(exist_ok=True)
        shown = ", ".join(f"{key}={value:.3g}" for key, value in got.items())
        progress(f"  {shown or 'no figures'} ({time.monotonic() - started:.0f}s)")

    def lazyfs_sequential(self, rec: Callable[[str, float], None]) -> None:
        """Cold read on a fresh cache, then hot (same mount), then warm (new mount)."""
        cache = self.new_dir("lazyfs-cache")
        path = self.mnt_lazyfs / self.big_file.name
        with self.lazyfs_mount(self.big_url, cache) as pid:
            self.drop_caches()
            cpu = cpu_seconds(pid)
            rec("seq_cold_lazyfs", self.dd(path))
            rec("cpu_lazyfs", (cpu_seconds(pid) - cpu) / (self.big_size / 1e9))
            rec("rss_lazyfs", vm_hwm_mib(pid))
            rec("seq_hot_lazyfs", self.dd(path))
        cached = dir_bytes(cache / "blocks") if (cache / "blocks").exists() else 0
        if cached < self.big_size:
            self.notes.append(
                f"after a full read the lazyfs disk cache held only "
                f"{cached / MIB:.0f} MiB of the {self.big_size / MIB:.0f} MiB file"
            )
        with self.lazyfs_mount(self.big_url, cache):
            self.drop_caches()
            rec("seq_warm_lazyfs", self.dd(path))
        for which in ("4k", "1m"):
            with self.lazyfs_mount(self.big_url, cache):
                self.drop_caches()
                self.record_quantiles(
                    rec, f"rand_{which}_warm_{{q}}_lazyfs", self.preads(path, which)
                )

    def rclone_sequential(self, rec: Callable[[str, float], None]) -> None:
        cache = self.new_dir("rclone-cache")
        path = self.mnt_rclone / self.big_file.name
        with self.rclone_mount(cache) as pid:
            self.drop_caches()
            cpu = cpu_seconds(pid)
            rec("seq_cold_rclone", self.dd(path))
            rec("cpu_rclone", (cpu_seconds(pid) - cpu) / (self.big_size / 1e9))
            rec("rss_rclone", vm_hwm_mib(pid))
            rec("seq_hot_rclone", self.dd(path))
        with self.rclone_mount(cache):
            self.drop_caches()
            rec("seq_warm_rclone", self.dd(path))
        for which in ("4k", "1m"):
            with self.rclone_mount(cache):
                self.drop_caches()
                self.record_quantiles(
                    rec, f"rand_{which}_warm_{{q}}_rclone", self.preads(path, which)
                )

    def lazyfs_cold_random(self, which: str) -> Callable[[Callable[[str, float], None]], None]:
        def body(rec: Callable[[str, float], None]) -> None:
            cache = self.new_dir("lazyfs-cache")
            with self.lazyfs_mount(self.big_url, cache):
                self.drop_caches()
                latencies = self.preads(self.mnt_lazyfs / self.big_file.name, which)
                self.record_quantiles(rec, f"rand_{which}_cold_{{q}}_lazyfs", latencies)
            rec(f"rand_{which}_fetched_lazyfs", dir_bytes(cache / "blocks") / MIB)

        return body

    def rclone_cold_random(self, which: str) -> Callable[[Callable[[str, float], None]], None]:
        def body(rec: Callable[[str, float], None]) -> None:
            cache = self.new_dir("rclone-cache")
            with self.rclone_mount(cache):
                self.drop_caches()
                latencies = self.preads(self.mnt_rclone / self.big_file.name, which)
                self.record_quantiles(rec, f"rand_{which}_cold_{{q}}_rclone", latencies)
            rec(f"rand_{which}_fetched_rclone", dir_bytes(cache / "vfs") / MIB)

        return body

    def first_mib_lazyfs(self, rec: Callable[[str, float], None]) -> None:
        with self.lazyfs_mount(self.big_url, self.new_dir("lazyfs-cache")):
            self.drop_caches()
            path = self.mnt_lazyfs / self.big_file.name
            rec("first_mib_lazyfs", self.preads(path, "first", fadvise_random=False)[0] * 1000)

    def first_mib_rclone(self, rec: Callable[[str, float], None]) -> None:
        with self.rclone_mount(self.new_dir("rclone-cache")):
            self.drop_caches()
            path = self.mnt_rclone / self.big_file.name
            rec("first_mib_rclone", self.preads(path, "first", fadvise_random=False)[0] * 1000)

    def first_mib_download(self, rec: Callable[[str, float], None]) -> None:
        local = self.new_dir("download") / self.big_file.name
        self.drop_caches()
        seconds = timed(
            ["curl", "-sS", "--fail", "-o", str(local), self.big_file_url],
            self.io_timeout(),
            what="curl",
        )
        read = self.preads(local, "first", fadvise_random=False)[0]
        rec("first_mib_download", (seconds + read) * 1000)

    def ttft_lazyfs(self, rec: Callable[[str, float], None]) -> None:
        cache = self.new_dir("lazyfs-cache")
        self.drop_caches()
        started = time.perf_counter()
        with self.lazyfs_mount(self.model_url, cache):
            rec("ttft_mount_lazyfs", time.perf_counter() - started)
            self.helper(
                {
                    "mode": "tensor",
                    "name": self.tensor_name,
                    "path": str(self.mnt_lazyfs / self.model_file.name),
                },
                self.io_timeout(),
            )
            rec("ttft_lazyfs", time.perf_counter() - started)

    def ttft_download(self, rec: Callable[[str, float], None]) -> None:
        local = self.new_dir("download") / self.model_file.name
        self.drop_caches()
        started = time.perf_counter()
        run(
            ["curl", "-sS", "--fail", "-o", str(local), f"{self.model_url}{local.name}"],
            self.io_timeout(),
            what="curl",
        )
        self.helper(
            {"mode": "tensor", "name": self.tensor_name, "path": str(local)}, self.io_timeout()
        )
        rec("ttft_download", time.perf_counter() - started)

    def curl_hash(self, rec: Callable[[str, float], None]) -> None:
        self.drop_caches()
        command = f"curl -sS --fail {shlex.quote(self.big_file_url)} | openssl dgst -sha256"
        seconds = timed(
            ["bash", "-o", "pipefail", "-c", command], self.io_timeout(), what="curl | openssl"
        )
        rec("curl_hash", self.big_size / seconds / 1e9)

    def download_hash(self, rec: Callable[[str, float], None]) -> None:
        local = self.new_dir("download") / self.big_file.name
        self.drop_caches()
        started = time.perf_counter()
        run(
            ["curl", "-sS", "--fail", "-o", str(local), self.big_file_url],
            self.io_timeout(),
            what="curl",
        )
        run(["openssl", "dgst", "-sha256", str(local)], self.io_timeout(), what="openssl")
        rec("download_hash", self.big_size / (time.perf_counter() - started) / 1e9)

    def local_disk(self, rec: Callable[[str, float], None]) -> None:
        self.drop_caches()
        rec("seq_local_cold", self.dd(self.big_file))
        rec("seq_local_hot", self.dd(self.big_file))

    def hashing(self, rec: Callable[[str, float], None]) -> None:
        link = self.hash_dir / self.big_file.name
        self.dd(link)  # page cache hot for all three
        seconds = timed(
            [LAZYFS, "manifest", "build", str(self.hash_dir), "--block-size", "4M"],
            self.io_timeout(),
            what="lazyfs manifest build",
        )
        rec("manifest_build", self.big_size / seconds / 1e9)
        for threads, key in ((2, "hash_2threads"), (1, "hash_1thread")):
            rec(key, self.big_size / hash_with_threads(link, threads) / 1e9)

    def measure(self) -> None:
        for number in range(1, self.runs + 1):
            progress(f"== run {number} of {self.runs}")
            self.step(
                "lazyfs: cold, hot, warm sequential; warm random",
                [
                    "seq_cold_lazyfs",
                    "cpu_lazyfs",
                    "rss_lazyfs",
                    "seq_hot_lazyfs",
                    "seq_warm_lazyfs",
                    *random_keys("warm", "lazyfs"),
                ],
                self.lazyfs_sequential,
            )
            self.step(
                "rclone: cold, hot, warm sequential; warm random",
                [
                    "seq_cold_rclone",
                    "cpu_rclone",
                    "rss_rclone",
                    "seq_hot_rclone",
                    "seq_warm_rclone",
                    *random_keys("warm", "rclone"),
                ],
                self.rclone_sequential,
            )
            self.step("curl | openssl dgst", ["curl_hash"], self.curl_hash)
            self.step("curl -o, then openssl dgst", ["download_hash"], self.download_hash)
            self.step(
                "local disk dd, cold and hot", ["seq_local_cold", "seq_local_hot"], self.local_disk
            )
            for which in ("4k", "1m"):
                keys = [f"rand_{which}_cold_{q}" for q in ("p50", "p99")]
                keys.append(f"rand_{which}_fetched")
                self.step(
                    f"lazyfs: cold random {which}",
                    [f"{k}_lazyfs" for k in keys],
                    self.lazyfs_cold_random(which),
                )
                self.step(
                    f"rclone: cold random {which}",
                    [f"{k}_rclone" for k in keys],
                    self.rclone_cold_random(which),
                )
            self.step("lazyfs: first MiB", ["first_mib_lazyfs"], self.first_mib_lazyfs)
            self.step("rclone: first MiB", ["first_mib_rclone"], self.first_mib_rclone)
            self.step("curl -o, then first MiB", ["first_mib_download"], self.first_mib_download)
            self.step(
                "lazyfs: time to first tensor",
                ["ttft_lazyfs", "ttft_mount_lazyfs"],
                self.ttft_lazyfs,
            )
            self.step("curl -o, then first tensor", ["ttft_download"], self.ttft_download)
            self.step("hashing", ["manifest_build", "hash_2threads", "hash_1thread"], self.hashing)

    # -- report --
    def median(self, key: str) -> float | None:
        values = self.values.get(key)
        return statistics.median(values) if values else None

    def cell(self, key: str, unit: str) -> str:
        value = self.median(key)
        if value is None:
            reasons = self.errors.get(key) or ["not measured"]
            return f"failed: {reasons[0]}".replace("|", "\\|")
        text = format_value(value, unit)
        failed = len(self.errors.get(key, []))
        if failed:
            text += f" ({failed} of {failed + len(self.values[key])} runs failed)"
        return text

    def breakdown(self) -> list[str]:
        mount, total = self.median("ttft_mount_lazyfs"), self.median("ttft_lazyfs")
        if mount is None or total is None:
            return []
        return [
            f"time to first tensor through lazyfs: `lazyfs mount` returned after {mount:.2f}s "
            f"of the {total:.2f}s (medians)"
        ]

    def ratio(self, lazyfs_key: str, other_key: str, unit: str) -> str:
        mine, other = self.median(lazyfs_key), self.median(other_key)
        if mine is None or other is None or mine <= 0 or other <= 0:
            return "-"
        value = mine / other if unit == THROUGHPUT else other / mine
        return f"{value:.2f}"

    def table(self) -> str:
        lines = [
            "| measurement | lazyfs | alternative | alternative's figure "
            "| ratio (>1: lazyfs better) |",
            "|---|---|---|---|---|",
        ]
        big, model = size_label(self.big_size), self.model_size
        for row in rows(big, model):
            mine = self.cell(row.lazyfs, row.unit)
            for label, key in row.alternatives:
                lines.append(
                    f"| {row.label} ({row.unit}) | {mine} | {label} | {self.cell(key, row.unit)} "
                    f"| {self.ratio(row.lazyfs, key, row.unit)} |"
                )
        return "\n".join(lines)


def random_keys(state: str, tool: str) -> list[str]:
    return [f"rand_{w}_{state}_{q}_{tool}" for w in ("4k", "1m") for q in ("p50", "p99")]


def format_value(value: float, unit: str) -> str:
    if unit == THROUGHPUT:
        return f"{value:.2f}"
    if unit == LATENCY_S:
        return f"{value:.2f}"
    if unit == MEMORY:
        return f"{value:.0f}"
    if unit == CPU:
        return f"{value:.2f}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


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


def machine(bench: Bench) -> list[str]:
    def first_line(command: list[str]) -> str:
        try:
            out = subprocess.run(
                command, capture_output=True, text=True, timeout=SMALL_TIMEOUT, check=False
            )
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "unknown"

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
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "lazyfs"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if dirty:
        commit += " + uncommitted changes in lazyfs/"
    device = first_line(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--target", str(bench.work)])
    return [
        f"- CPU: {os.cpu_count()} x {model} (nproc {first_line(['nproc'])})",
        f"- memory: {memory}",
        f"- kernel: {platform.release()}; {platform.python_implementation()} "
        f"{platform.python_version()}",
        f"- lazyfs: {first_line([LAZYFS, '--version'])}, git {commit}",
        f"- work dir {bench.work} on {device}",
        f"- load average (1 min) at the start and the end: {bench.load_start:.2f}, "
        f"{os.getloadavg()[0]:.2f} (anything else running shares the CPUs)",
        f"- origin: {first_line([NGINX, '-v'])} (2 workers, sendfile) on 127.0.0.1; "
        f"{first_line(['rclone', 'version'])}; {first_line(['curl', '--version'])[:40]}; "
        f"{first_line(['openssl', 'version'])}",
    ]


def report(bench: Bench, command: str, started: float) -> None:
    big, model = size_label(bench.big_size), bench.model_size
    table = bench.table()
    description = machine(bench)
    header = (
        f"Medians of {bench.runs} run(s). Ratio: lazyfs/alternative for throughput (GB/s, "
        "10^9 bytes/s), alternative/lazyfs for latency, memory, CPU and data fetched: >1 means "
        "lazyfs is better."
    )
    print()
    print(header)
    print(table)
    print()
    print("\n".join(description))
    bench.notes = list(dict.fromkeys(bench.breakdown() + bench.notes))
    for note in bench.notes:
        print(f"note: {note}")
    methods = f"""\
- Everything runs on this one machine: nginx serves the files on 127.0.0.1, so the network
  is loopback and the origin is never the bottleneck the way a real one can be.
- "cold": a fresh cache directory (lazyfs or rclone), a new mount and
  `echo 3 > /proc/sys/vm/drop_caches` first (nginx then reads from disk too). "warm": the
  blocks are on the mount's disk cache from a full read, new mount, page cache dropped.
  "hot": the second read on the same mount (kernel page cache).
- 1: `dd if=MNT/file of=/dev/null bs=1M` on a {big} random file; `curl -s URL | openssl dgst
  -sha256`; `curl -o` to local disk then `openssl dgst -sha256`; `rclone mount :http:
  --vfs-cache-mode full --read-only` then the same dd.
- 2: time to first tensor is wall time from nothing mounted, cold cache, to a subprocess
  having opened the {model} `model.safetensors` with `safe_open` (header) and loaded
  `{bench.tensor_name}` from the middle; the alternative downloads the whole file first.
  "First MiB": one 1 MiB pread at offset {bench.first_mib_offset} (3/4 into the file), only
  the pread timed (the alternative: download + the pread).
- 4: {RANDOM_4K_COUNT} x 4 KiB and {RANDOM_1M_COUNT} x 1 MiB preads at 4 KiB-aligned offsets
  from a fixed seed, `posix_fadvise(RANDOM)` on the fd, each on its own new mount; with
  4 MiB blocks, later random reads often land in blocks earlier ones fetched.
- 4: "data fetched" is the size of the fresh cache directory (blocks for lazyfs, rclone's
  vfs dir) after the cold random reads and the unmount.
- 5: VmHWM from /proc/PID/status of the mount daemon right after the cold sequential read;
  CPU is the daemon's utime + stime over that read, per 10^9 bytes read.
- 6: the file in the page cache; `lazyfs manifest build` computes block digests and the
  whole-file digest (end to end, including the CLI's start); hashlib reads 4 MiB at a time.
- The bytes of every pread (first MiB, random reads) are checked against the original file."""
    doc = "\n".join(
        [
            "# Performance",
            "",
            "What lazyfs costs and gains against the obvious alternatives, measured on one "
            "machine with nginx on loopback as the origin. Reproduce with `scripts/bench` "
            "(about 10 minutes; `scripts/bench --quick` for a smoke run); it prints the same "
            "table.",
            "",
            f"Command: `{command}` ({datetime.date.today().isoformat()}, "
            f"{(time.monotonic() - started) / 60:.0f} min)",
            "",
            "## Machine",
            "",
            *description,
            "",
            "## Results",
            "",
            header,
            "",
            table,
            "",
            "## How",
            "",
            methods,
            *([""] + [f"Note: {note}" for note in bench.notes] if bench.notes else []),
            "",
        ]
    )
    DOCS.parent.mkdir(exist_ok=True)
    DOCS.write_text(doc)
    progress(f"wrote {DOCS}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/lazyfs-bench", help="work directory")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 3; 1 --quick)")
    parser.add_argument(
        "--quick", action="store_true", help="one run, a 512 MiB file and a 256M model: a smoke run"
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="regenerate the test files even if the work dir has them",
    )
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the generated files in the work dir for the next run",
    )
    options = parser.parse_args()
    if options.runs is not None and options.runs < 1:
        parser.error("--runs must be at least 1")
    if os.geteuid() != 0:
        print("bench: needs root (FUSE mounts, drop_caches)", file=sys.stderr)
        return 2
    command = shlex.join(["scripts/bench", *sys.argv[1:]])

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    started = time.monotonic()
    bench = Bench(options)
    try:
        bench.prepare()
        bench.measure()
        report(bench, command, started)
    except KeyboardInterrupt:
        print("bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    except StepError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.cleanup_mounts()
        bench.stop_nginx()
        shutil.rmtree(bench.scratch, ignore_errors=True)
        if not options.keep_data:
            shutil.rmtree(bench.www, ignore_errors=True)
            shutil.rmtree(bench.hash_dir, ignore_errors=True)
        warnings = 0
        daemon_log = bench.logs / "lazyfs-daemon.log"
        if daemon_log.exists():
            warnings = sum(
                1
                for line in daemon_log.read_text(errors="replace").splitlines()
                if " WARNING " in line or " ERROR " in line
            )
        print(
            f"logs in {bench.logs} (lazyfs daemon: {warnings} warning/error lines)", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
