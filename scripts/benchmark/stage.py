"""The stage every measurement runs on: the work directory, the files nginx serves on
127.0.0.1 (a big random file, a sample model, a sharded model, the models the model workloads
load, each with its manifest), the offsets read and the bytes they must return, the origin's
access log, and the page cache."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from scripts.benchmark.commands import LAZYFS, StepError, one_line, progress, run
from scripts.benchmark.models import Models
from scripts.benchmark.reads import GIB, KIB, MIB, Probe, size_label, tensor_names
from tests.support.processes import Origin, cmdline, kill_pid, start_nginx_origin

if TYPE_CHECKING:
    from scripts.benchmark.fleet import FleetOrigin
    from scripts.benchmark.xet import XetOrigin

SEED = 20240601
BLOCK_SIZE = "4M"
NGINX_ATTEMPTS = 3  # a port picked free can be taken before nginx binds it


@dataclass(frozen=True)
class Pattern:
    """Reads at random 4 KiB-aligned offsets of the big file, from a fixed seed."""

    name: str
    label: str
    count: int
    size: int


RANDOM_4K = Pattern("4k", "4 KiB", 1000, 4 * KIB)
RANDOM_1M = Pattern("1m", "1 MiB", 100, MIB)
RANDOM_PATTERNS = (RANDOM_4K, RANDOM_1M)
SHARDS = 8  # files of random bytes, each read by its own reader at once


@dataclass(frozen=True)
class Served:
    """A file nginx serves, in a directory of its own (with the manifest lazyfs mounts)."""

    path: Path
    base_url: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def dir_url(self) -> str:  # what lazyfs and rclone mount
        return f"{self.base_url}/{self.path.parent.name}/"

    @property
    def url(self) -> str:
        return f"{self.dir_url}{self.name}"

    @property
    def neighbours(self) -> list[Path]:
        """Every file of its directory (itself, its manifest, the other shards)."""
        return sorted(path for path in self.path.parent.iterdir() if path.is_file())


@dataclass
class Stage:
    work: Path
    quick: bool
    fresh: bool = False  # regenerate the served files even if the work dir has them
    keep_data: bool = False  # keep them for the next run
    notes: list[str] = field(default_factory=list)
    tensor: str = ""  # the tensor time-to-first-tensor loads: the middle one, by header order
    probes: dict[Pattern, Probe] = field(default_factory=dict)
    first_mib: Probe | None = None
    origin: Origin | None = None
    xet: XetOrigin | None = None  # the fake Hub and Xet CAS issue 13's workloads read from
    fleet: FleetOrigin | None = None  # the origin nginx issue 14's fleet reads through a cache
    _drop_warned: bool = False
    _scratch_count: int = 0

    def __post_init__(self) -> None:
        self.work = self.work.absolute()
        self.big_size = 512 * MIB if self.quick else 2 * GIB
        self.model_size = "256M" if self.quick else "1G"
        self.www = self.work / "www"
        self.big_file = self.www / f"big-{size_label(self.big_size)}" / "file.bin"
        self.model_file = self.www / f"model-{self.model_size}" / "model.safetensors"
        self.shard_size = 32 * MIB if self.quick else 128 * MIB
        shards_dir = self.www / f"shards-{SHARDS}x{size_label(self.shard_size)}"
        self.shard_files = [shards_dir / f"shard-{n:02d}.bin" for n in range(SHARDS)]
        self.hash_dir = self.work / "hash"  # a hard link of the big file, for manifest build
        self.scratch = self.work / "scratch"  # caches and downloads, emptied after each step
        self.logs = self.work / "logs"
        self.bin = self.work / "bin"  # a private PATH entry: `fusermount` for rclone
        self.nginx_dir = self.work / "nginx"
        self.models = Models(self.work, self.www, self.quick)
        self.xet_size = 256 * MIB if self.quick else GIB
        self.fleet_size = 64 * MIB if self.quick else 256 * MIB  # up to 8 mounts read it at once

    # -- what is served --
    @property
    def base_url(self) -> str:
        return self.running_origin.url

    @property
    def running_origin(self) -> Origin:
        if self.origin is None:
            raise StepError("nginx is not running")
        return self.origin

    @property
    def big(self) -> Served:
        return Served(self.big_file, self.base_url)

    @property
    def model(self) -> Served:
        return Served(self.model_file, self.base_url)

    @property
    def shards(self) -> list[Served]:
        return [Served(path, self.base_url) for path in self.shard_files]

    def served(self, path: Path) -> Served:
        return Served(path, self.base_url)

    @property
    def io_timeout(self) -> float:
        return 120 + self.big_size / (20 * 1e6)  # room for 20 MB/s

    def mountpoint(self, name: str) -> Path:
        return self.work / f"mnt-{name}"

    # -- setup and teardown --
    def prepare(self, everything: bool = True) -> None:
        """The work directory; and, unless one section runs alone (``everything`` False), the
        files nginx serves and nginx. The Xet and fleet origins are their sections' own
        (``XetOrigin.start``, ``FleetOrigin.start``)."""
        for path in (self.work, self.www, self.logs, self.bin, self.hash_dir):
            path.mkdir(parents=True, exist_ok=True)
        for old in self.logs.iterdir():  # the logs of the last run
            if old.is_file():
                old.unlink()
        self.stop_stale_nginx()
        self.clear_scratch()
        if not everything:
            return
        fusermount3 = shutil.which("fusermount3")
        link = self.bin / "fusermount"
        if fusermount3 and not link.exists():
            link.symlink_to(fusermount3)
        self.write_served_files()
        self.pick_probes()
        self.start_nginx()

    def write_served_files(self) -> None:
        big = self.big_file
        write_random(big, self.big_size, self.fresh)
        for shard in self.shard_files:
            write_random(shard, self.shard_size, self.fresh)
        model_dir = self.model_file.parent
        if self.fresh or not self.model_file.exists():
            progress(f"writing a {self.model_size} sample model to {model_dir}")
            shutil.rmtree(model_dir, ignore_errors=True)
            run([*LAZYFS, "sample", str(model_dir), "--size", self.model_size], 600, what="sample")
        self.models.prepare(self.fresh)
        model_dirs = [self.models.llama, self.models.gguf.parent, self.models.sentence]
        for directory in (big.parent, model_dir, self.shard_files[0].parent, *model_dirs):
            progress(f"lazyfs manifest build {directory}")
            build = [*LAZYFS, "manifest", "build", str(directory), "--block-size", BLOCK_SIZE]
            run(build, 600, what="lazyfs manifest build")
        link = self.hash_dir / big.name
        link.unlink(missing_ok=True)
        os.link(big, link)

    def pick_probes(self) -> None:
        names = tensor_names(self.model_file, 120)
        self.tensor = names[len(names) // 2]
        rng = random.Random(SEED)
        pages = self.big_size // (4 * KIB)
        for pattern in RANDOM_PATTERNS:
            last = pages - pattern.size // (4 * KIB)  # the whole read stays inside the file
            offsets = [rng.randrange(last) * 4 * KIB for _ in range(pattern.count)]
            self.probes[pattern] = Probe.of(self.big_file, offsets, pattern.size)
        # 1 MiB into the 4 MiB block at 3/4 of the file
        self.first_mib = Probe.of(self.big_file, [self.big_size * 3 // 4 + MIB], MIB)

    def start_nginx(self) -> None:
        for attempt in range(1, NGINX_ATTEMPTS + 1):
            try:
                # The access log (a line per request, each lazyfs request a whole block) is how the
                # many-readers workload counts what was fetched twice.
                self.origin = start_nginx_origin(self.www, self.nginx_dir, workers=2, listing=True)
            except (RuntimeError, OSError) as exc:
                progress(f"nginx did not start (attempt {attempt}): {one_line(exc)}")
                continue
            progress(f"nginx serving {self.www} at {self.origin.url}")
            return
        raise StepError(f"nginx did not start (see {self.nginx_dir / 'error.log'})")

    def stop_stale_nginx(self) -> None:
        stop_stale_nginx(self.nginx_dir)

    def close(self) -> None:
        if self.xet is not None:
            self.xet.close()
        if self.fleet is not None:
            self.fleet.close()
        if self.origin is not None:
            self.origin.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)
        if not self.keep_data:
            shutil.rmtree(self.www, ignore_errors=True)
            shutil.rmtree(self.hash_dir, ignore_errors=True)

    # -- during a run --
    def fresh_dir(self, name: str) -> Path:
        """A new empty directory in the scratch area: a cache or a download that starts cold."""
        self._scratch_count += 1
        path = self.scratch / f"{self._scratch_count:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def clear_scratch(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)

    def cold(self, served: Served) -> None:
        """The reader's side cold, the origin's warm: drop the page cache, then read the served
        file's directory once, so nginx serves it from memory as a real origin (another
        machine) would, and this machine's disk does not bound a cold figure."""
        self.drop_caches()
        self.warm_origin(served)

    def warm_origin(self, served: Served) -> None:
        """Read the files of the served file's directory once (nginx serves them from memory)."""
        buffer = bytearray(16 * MIB)
        for path in served.neighbours:
            with open(path, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass

    def evict(self, *paths: Path) -> None:
        """Drop these files (directories: every file under them) from the page cache, and
        nothing else: the processes about to load have their own pages (torch's) in it."""
        os.sync()
        for path in paths:
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                with contextlib.suppress(OSError):
                    fd = os.open(file, os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)

    def drop_caches(self) -> None:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as handle:
                handle.write("3\n")
        except OSError as exc:
            if not self._drop_warned:
                self._drop_warned = True
                note = f"could not drop the page cache ({exc.strerror}): 'cold' figures are not"
                self.note(note)
                progress(f"warning: {note}")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def write_random(path: Path, size: int, fresh: bool) -> None:
    """``size`` random bytes at ``path``, unless it holds that many already (and not ``fresh``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not fresh and path.exists() and path.stat().st_size == size:
        return
    progress(f"writing {size_label(size)} of random bytes to {path}")
    with open(path, "wb") as handle:
        for _ in range(size // (16 * MIB)):
            handle.write(os.urandom(16 * MIB))


def stop_stale_nginx(nginx_dir: Path) -> None:
    """The nginx of an earlier run that died, found by its pid file and our config path."""
    conf = str(nginx_dir / "nginx.conf")
    with contextlib.suppress(OSError, ValueError):
        pid = int((nginx_dir / "nginx.pid").read_text().strip())
        if conf in cmdline(pid):
            progress(f"stopping nginx left by an earlier run (pid {pid})")
            kill_pid(pid, conf)
