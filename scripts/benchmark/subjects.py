"""What the workloads read from: a lazyfs mount (tensor-aware, the default, or not), an rclone
mount, curl, a download (one file, or every file of a repository), the local disk, and a minimal
pyfuse3 passthrough of the local file (the Python-FUSE limit).

Each subject's ``open`` is a context manager that gives a ``Target`` (a path or a URL to read)
and stops whatever it started on every way out, killing only its own processes (found by its
own mount point: other people run lazyfs on this machine too). ``state`` is the directory a
subject keeps what it fetched in (a mount's cache, a download): open it again with the same
directory for a warm start, with a fresh one for a cold start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from scripts.benchmark.commands import LAZYFS, StepError, progress, run
from scripts.benchmark.models import served_files
from scripts.benchmark.reads import dir_bytes
from scripts.benchmark.stage import Served, Stage
from tests.support.processes import force_unmount, is_mounted, kill_pid, processes_with

MOUNT_TIMEOUT = 240.0  # `lazyfs mount` waits up to 180 s for its daemon itself
UNMOUNT_TIMEOUT = 60.0
RCLONE_READY_TIMEOUT = 30.0
RCLONE_EXIT_TIMEOUT = 15.0


@dataclass(frozen=True)
class Target:
    path: Path | None = None  # a file to read ...
    url: str | None = None  # ... or a URL
    pid: int | None = None  # the process that serves the reads (a mount's daemon)
    opened_in: float = 0.0  # seconds `open` took: `lazyfs mount`, or the whole download

    @property
    def file(self) -> Path:
        if self.path is None:
            raise StepError("this subject gives a URL to stream, not a file")
        return self.path

    @property
    def stream(self) -> str:
        if self.url is None:
            raise StepError("this subject gives a file, not a URL to stream")
        return self.url

    @property
    def daemon(self) -> int:
        if self.pid is None:
            raise StepError("this subject has no daemon process")
        return self.pid


@dataclass(frozen=True)
class Counters:
    read_requests: int  # FUSE read requests the mount served
    bytes_fetched: int  # from the origin

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.read_requests - other.read_requests, self.bytes_fetched - other.bytes_fetched
        )


class Subject(ABC):
    name: ClassVar[str]  # the key of its series in the results
    fetches_on_open: ClassVar[bool] = False  # a download does; a mount fetches when read
    from_origin: ClassVar[bool] = True  # reads come over HTTP (not the local file itself)

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    @contextlib.contextmanager
    def open(
        self, served: Served, state: Path, *, drop_page_cache: bool, warm: bool = False
    ) -> Iterator[Target]:
        """``drop_page_cache``: drop it right before the subject fetches the file's bytes (once
        a mount is up, before a download starts). For a subject that reads from the origin,
        the origin's files are then read once: only the subject's side is cold (``Stage.cold``);
        one that reads the local file reads it from the disk. ``warm``: the subject reads
        from its own disk cache, not the origin, so the origin's files are not read (on this
        VM, filling the page cache with them first makes the reader's own pages cost a fresh
        allocation each, which is not what a warm read measures)."""
        if drop_page_cache and self.fetches_on_open:
            self.make_cold(served, warm)
        started = time.perf_counter()
        with self.opened(served, state) as target:
            opened_in = target.opened_in or time.perf_counter() - started
            if drop_page_cache and not self.fetches_on_open:
                self.make_cold(served, warm)
            yield dataclasses.replace(target, opened_in=opened_in)

    def make_cold(self, served: Served, warm: bool = False) -> None:
        if self.from_origin and not warm:
            self.stage.cold(served)
        else:
            self.stage.drop_caches()

    @abstractmethod
    def opened(self, served: Served, state: Path) -> contextlib.AbstractContextManager[Target]:
        """Start reading ``served`` with what is kept in ``state``; stop on the way out."""

    @classmethod
    def clean_up(cls, stage: Stage) -> None:
        """Stop what a run that died left behind (our own mount points' processes only)."""
        return  # a subject that starts no process leaves nothing behind


class Mount(Subject):
    """A FUSE mount of the served file's directory."""

    data_dir: ClassVar[str]  # where in its cache directory a mount keeps file data

    def fetched_bytes(self, state: Path) -> int:
        """What the mount's disk cache in ``state`` holds."""
        return dir_bytes(state / self.data_dir)


class LazyfsMount(Mount):
    name = "lazyfs"
    data_dir = "blocks"
    # Said although it is the default: the figures are of this mode whatever the default becomes.
    options: ClassVar[tuple[str, ...]] = ("--tensor-aware",)

    def __init__(self, stage: Stage) -> None:
        super().__init__(stage)
        self.log_copied: dict[Path, int] = {}

    @property
    def mountpoint(self) -> Path:
        return self.stage.mountpoint(self.name)

    @contextlib.contextmanager
    def opened(self, served: Served, state: Path) -> Iterator[Target]:
        mountpoint = self.mountpoint
        mountpoint.mkdir(exist_ok=True)
        mount = [*LAZYFS, "mount", self.source(served), str(mountpoint), *self.options]
        try:
            started = time.perf_counter()
            run(
                [*mount, "--cache-dir", str(state), "--cache-size", "50G"],
                MOUNT_TIMEOUT,
                env=self.environment(),
                what="lazyfs mount",
            )
            mounted_in = time.perf_counter() - started
            if not is_mounted(mountpoint):
                raise StepError("`lazyfs mount` returned, but nothing is mounted")
            pids = lazyfs_daemons(mountpoint)
            if not pids:
                raise StepError("lazyfs mounted, but its daemon process was not found")
            yield Target(path=mountpoint / served.name, pid=pids[0], opened_in=mounted_in)
        finally:
            stop_lazyfs(mountpoint)
            self.keep_logs(state)

    def source(self, served: Served) -> str:
        """What `lazyfs mount` is given: the served file's directory on nginx."""
        return served.dir_url

    def environment(self) -> dict[str, str] | None:
        """The environment of `lazyfs mount` (and so of its daemon); None: this process's."""
        return None

    def counters(self) -> Counters:
        """What the live mount's `lazyfs status --json` counts so far."""
        status = [*LAZYFS, "status", str(self.mountpoint), "--json"]
        report = json.loads(run(status, 60, what="lazyfs status").stdout)
        return Counters(int(report["read_requests"]), int(report["bytes_fetched"]))

    @classmethod
    def clean_up(cls, stage: Stage) -> None:
        stop_lazyfs(stage.mountpoint(cls.name))

    def keep_logs(self, cache: Path) -> None:
        """Append what the daemon logged since the last copy to logs/lazyfs-daemon.log."""
        logs = cache / "logs"
        if not logs.is_dir():
            return
        with open(self.stage.logs / "lazyfs-daemon.log", "ab") as out:
            for log in sorted(logs.iterdir()):
                data = log.read_bytes()
                new = data[self.log_copied.get(log, 0) :]
                self.log_copied[log] = len(data)
                if new:
                    out.write(f"==> {cache.name}/{log.name}\n".encode())
                    out.write(new)


def lazyfs_daemons(mountpoint: Path) -> list[int]:
    return processes_with(str(mountpoint), "mount")


def stop_lazyfs(mountpoint: Path) -> None:
    """Unmount the lazyfs mount at ``mountpoint`` and stop its daemon, whatever their state."""
    pids = lazyfs_daemons(mountpoint)
    if is_mounted(mountpoint) or pids:
        try:
            run([*LAZYFS, "unmount", str(mountpoint)], UNMOUNT_TIMEOUT, what="lazyfs unmount")
        except StepError as exc:
            progress(f"  warning: {exc}")
    force_unmount(mountpoint)
    for pid in pids:
        kill_pid(pid, str(mountpoint))


class LazyfsPlain(LazyfsMount):
    """lazyfs with --no-tensor-aware: blocks and read-ahead only, what the tensor maps gain on."""

    name = "lazyfs_plain"
    options = ("--no-tensor-aware",)


class RcloneMount(Mount):
    name = "rclone"
    data_dir = "vfs"

    @contextlib.contextmanager
    def opened(self, served: Served, state: Path) -> Iterator[Target]:
        stage = self.stage
        mountpoint = stage.mountpoint(self.name)
        mountpoint.mkdir(exist_ok=True)
        config = stage.bin / "rclone.conf"
        config.touch()  # empty: no remotes, and no "config not found" notice
        log = stage.logs / "rclone.log"
        command = [
            *("rclone", "mount", ":http:", str(mountpoint), "--http-url", served.dir_url),
            *("--vfs-cache-mode", "full", "--read-only", "--cache-dir", str(state)),
            *("--log-file", str(log), "--log-level", "NOTICE", "--config", str(config)),
        ]
        env = dict(os.environ, PATH=f"{stage.bin}:{os.environ.get('PATH', '')}")
        proc = start_fuse_process(
            command, mountpoint, "rclone mount", log, RCLONE_READY_TIMEOUT, RCLONE_EXIT_TIMEOUT, env
        )
        try:
            yield Target(path=mountpoint / served.name, pid=proc.pid)
        finally:
            stop_fuse_process(proc, mountpoint, RCLONE_EXIT_TIMEOUT)

    @classmethod
    def clean_up(cls, stage: Stage) -> None:
        mountpoint = stage.mountpoint(cls.name)
        stop_fuse_process(None, mountpoint, RCLONE_EXIT_TIMEOUT)
        for pid in processes_with(str(mountpoint), ":http:"):
            kill_pid(pid, str(mountpoint))


class Curl(Subject):
    """curl streams the file: the target is its URL, read by piping curl into a consumer."""

    name = "curl"

    @contextlib.contextmanager
    def opened(self, served: Served, state: Path) -> Iterator[Target]:
        yield Target(url=served.url)


class Download(Subject):
    """``curl -o`` to the local disk, then the local file: opening it is the whole download."""

    name = "download"
    fetches_on_open = True

    @contextlib.contextmanager
    def opened(self, served: Served, state: Path) -> Iterator[Target]:
        local = state / served.name
        curl = ["curl", "-sS", "--fail", "-o", str(local), served.url]
        run(curl, self.stage.io_timeout, what="curl")
        try:
            yield Target(path=local)
        finally:
            local.unlink(missing_ok=True)


class RepoDownload(Subject):
    """Every file of the served file's directory (as its manifest lists them, not the manifest)
    with one `curl -o` each, in one curl process, to the local disk; then the local copy, the
    target being the served file's own."""

    name = "download_repo"
    fetches_on_open = True

    @contextlib.contextmanager
    def opened(self, served: Served, state: Path) -> Iterator[Target]:
        curl = ["curl", "-sS", "--fail", "--create-dirs"]
        for path in served_files(served.path.parent):
            curl += ["-o", str(state / path), served.dir_url + urllib.parse.quote(path)]
        run(curl, self.stage.io_timeout, what="curl")
        try:
            yield Target(path=state / served.name)
        finally:
            for child in state.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


class LocalDisk(Subject):
    """The file itself, on the local disk (nginx serves the same file)."""

    name = "local"
    from_origin = False

    @contextlib.contextmanager
    def opened(self, served: Served, state: Path) -> Iterator[Target]:
        yield Target(path=served.path)


PASSTHROUGH = Path(__file__).with_name("passthrough.py")
PASSTHROUGH_READY_TIMEOUT = 30.0
PASSTHROUGH_EXIT_TIMEOUT = 15.0
KERNEL_READAHEAD_KB = "1024"  # what lazyfs and the passthrough ask for


class Passthrough(Subject):
    """scripts/benchmark/passthrough.py: pyfuse3 with ``os.pread`` on the local file behind each
    read, in a process of its own; live once mounted with 1 MiB kernel read-ahead. Not a
    ``Mount``: it fetches nothing and keeps no cache."""

    name = "passthrough"
    from_origin = False

    @contextlib.contextmanager
    def opened(self, served: Served, state: Path) -> Iterator[Target]:
        mountpoint = self.stage.mountpoint(self.name)
        mountpoint.mkdir(exist_ok=True)
        log = self.stage.logs / "passthrough.log"
        command = [sys.executable, str(PASSTHROUGH), str(served.path), str(mountpoint)]
        proc = start_fuse_process(
            command,
            mountpoint,
            "passthrough",
            log,
            PASSTHROUGH_READY_TIMEOUT,
            PASSTHROUGH_EXIT_TIMEOUT,
            # Live once its read-ahead is raised too, as lazyfs raises its own.
            ready=lambda: readahead_kb(mountpoint) == KERNEL_READAHEAD_KB,
        )
        try:
            yield Target(path=mountpoint / served.name, pid=proc.pid)
        finally:
            stop_fuse_process(proc, mountpoint, PASSTHROUGH_EXIT_TIMEOUT)

    @classmethod
    def clean_up(cls, stage: Stage) -> None:
        mountpoint = stage.mountpoint(cls.name)
        stop_fuse_process(None, mountpoint, PASSTHROUGH_EXIT_TIMEOUT)
        for pid in processes_with(str(mountpoint), str(PASSTHROUGH)):
            kill_pid(pid, str(mountpoint))


def readahead_kb(mountpoint: Path) -> str:
    """The kernel's read-ahead for the filesystem mounted at ``mountpoint`` ("" if unknown)."""
    try:
        device = os.stat(mountpoint).st_dev
        setting = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
        return setting.read_text().strip()
    except OSError:
        return ""


SUBJECTS: tuple[type[Subject], ...] = (
    LazyfsMount,
    LazyfsPlain,
    RcloneMount,
    Curl,
    Download,
    RepoDownload,
    LocalDisk,
    Passthrough,
)


def start_fuse_process(
    command: list[str],
    mountpoint: Path,
    what: str,
    log: Path,
    ready_timeout: float,
    exit_timeout: float,
    env: dict[str, str] | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> subprocess.Popen[bytes]:
    """Start a process that serves a FUSE mount at ``mountpoint`` (its stderr appended to
    ``log``) and return once the mount is live and ``ready()``; stopped again if it is not."""
    with open(log, "ab") as err:
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise StepError(f"{what}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + ready_timeout
        while not (is_mounted(mountpoint) and ready()):
            if proc.poll() is not None:
                raise StepError(f"{what} exited {proc.returncode} (see {log})")
            if time.monotonic() > deadline:
                raise StepError(f"{what} not live after {ready_timeout:.0f}s (see {log})")
            time.sleep(0.02)
    except BaseException:
        stop_fuse_process(proc, mountpoint, exit_timeout)
        raise
    return proc


def stop_fuse_process(
    proc: subprocess.Popen[bytes] | None, mountpoint: Path, exit_timeout: float
) -> None:
    """Unmount (how such a process is asked to exit), wait for it, then insist."""
    if is_mounted(mountpoint):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            unmount = ["fusermount3", "-u", str(mountpoint)]
            subprocess.run(unmount, capture_output=True, timeout=30, check=False)
    if proc is not None and proc.poll() is None:
        try:
            proc.wait(exit_timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    force_unmount(mountpoint)
