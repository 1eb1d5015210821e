"""Real mounts for tests: the `lazyfs` CLI in a subprocess, always unmounted afterwards."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lazyfs.core.manifest import MANIFEST_NAME, parse_manifest
from lazyfs.daemon.mountpoint import unmount as unmount_daemon
from lazyfs.errors import LazyfsError
from tests.support.processes import force_unmount, is_mounted

LAZYFS = [sys.executable, "-m", "lazyfs"]
# The installed console script, as users run it: unlike `python -m`, it does not import from
# the directory it is started in.
LAZYFS_SCRIPT = Path(sys.executable).with_name("lazyfs")


def lazyfs(
    *args: str | Path, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI; never raises on a non-zero exit (tests look at it). With ``cwd``, the
    console script runs in that directory."""
    command = LAZYFS if cwd is None else [str(LAZYFS_SCRIPT)]
    return subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        check=False,
    )


def publish(root: Path, block_size: str = "64K") -> bytes:
    """Build the manifest of ``root`` with the real CLI; returns the manifest's bytes."""
    result = lazyfs("manifest", "build", root, "--block-size", block_size)
    assert result.returncode == 0, result.stderr
    raw = (root / MANIFEST_NAME).read_bytes()
    parse_manifest(raw)
    return raw


def fully_cached(mountpoint: Path) -> bool:
    """Whether `lazyfs status` shows every file of the mount whole in its cache."""
    result = lazyfs("status", "--json", mountpoint)
    assert result.returncode == 0, result.stderr
    return all(item["cached_bytes"] == item["size"] for item in json.loads(result.stdout)["files"])


@dataclass
class Mounter:
    """Mounts with the real CLI into fresh directories; ``cleanup`` unmounts every one."""

    base: Path
    mounted: list[Path] = field(default_factory=list)
    counter: int = 0

    def new_mountpoint(self) -> Path:
        self.counter += 1
        path = self.base / f"mnt{self.counter}"
        path.mkdir()
        return path

    def cache_dir(self, name: str = "cache") -> Path:
        return self.base / name

    def mount(
        self,
        url: str,
        *extra: str,
        mountpoint: Path | None = None,
        cache_dir: Path | None = None,
        expect_ok: bool = True,
        cwd: Path | None = None,
    ) -> tuple[Path, subprocess.CompletedProcess[str]]:
        target = mountpoint or self.new_mountpoint()
        cache = cache_dir or self.cache_dir()
        result = lazyfs("mount", url, target, "--cache-dir", cache, *extra, cwd=cwd)
        if result.returncode == 0:
            self.mounted.append(target)
        if expect_ok:
            assert result.returncode == 0, f"mount failed: {result.stderr}"
            assert is_mounted(target)
        return target, result

    def unmount(self, mountpoint: Path) -> None:
        result = lazyfs("unmount", mountpoint, timeout=60)
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mountpoint)
        self.mounted.remove(mountpoint)

    def log_text(self, cache_dir: Path | None = None) -> str:
        logs = sorted((cache_dir or self.cache_dir()).glob("logs/*.log"))
        return "\n".join(path.read_text(errors="replace") for path in logs)

    def cleanup(self) -> None:
        for path in list(self.mounted):
            if is_mounted(path):
                # What `lazyfs unmount` runs, called here: a CLI process per mount would cost
                # half a second of CPU (its imports) on every test, to prove nothing.
                with contextlib.suppress(LazyfsError):
                    unmount_daemon(path, timeout=60)
            force_unmount(path)
        self.mounted.clear()


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    helper = Mounter(tmp_path / "mounts")
    helper.base.mkdir()
    try:
        yield helper
    finally:
        helper.cleanup()
        for path in helper.base.glob("mnt*"):
            force_unmount(path)
