"""The client side of a live mount's control socket: status, wait and prefetch progress."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from lazyfs.control import ask
from lazyfs.errors import IntegrityError, LazyfsError, MountError, UsageError
from lazyfs.mount import control_socket
from lazyfs.prefetch import select_paths
from lazyfs.sizes import format_size

POLL_SECONDS = 0.25


def request(mountpoint: Path, command: dict[str, Any]) -> dict[str, Any]:
    target = mountpoint.absolute()
    reply = ask(control_socket(target), target, command)
    if "error" in reply:
        raise MountError(f"the daemon of {mountpoint} could not answer: {reply['error']}")
    return reply


def status(mountpoint: Path) -> dict[str, Any]:
    return request(mountpoint, {"command": "status"})


def chosen_files(report: dict[str, Any], wanted: tuple[str, ...]) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = report["files"]
    chosen, unknown = select_paths([item["path"] for item in files], wanted)
    if unknown:
        raise UsageError(f"not in the mount: {', '.join(unknown)}")
    keep = set(chosen)
    return [item for item in files if item["path"] in keep]


def wait_cached(mountpoint: Path, wanted: tuple[str, ...], timeout: float) -> tuple[int, int]:
    """Block until the chosen files are cached; (files, bytes). Raises on timeout."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    while True:
        files = chosen_files(status(mountpoint), wanted)
        total = sum(item["size"] for item in files)
        cached = sum(item["cached_bytes"] for item in files)
        if cached >= total:
            return len(files), total
        if deadline is not None and time.monotonic() >= deadline:
            raise LazyfsError(f"timed out: {format_size(cached)} of {format_size(total)} cached")
        time.sleep(POLL_SECONDS)


def prefetch(mountpoint: Path, wanted: tuple[str, ...], tty: bool) -> tuple[int, int]:
    """Have the daemon fetch and verify the chosen files into its cache, showing progress
    until every byte is verified and cached; (files, bytes)."""
    reply = request(mountpoint, {"command": "prefetch", "paths": list(wanted)})
    if reply["unknown"]:
        raise UsageError(f"not in the mount: {', '.join(reply['unknown'])}")
    show = _RichProgress() if tty else _PlainProgress()
    started = time.monotonic()
    try:
        while True:
            report = status(mountpoint)
            files = chosen_files(report, wanted)
            show.update(files, time.monotonic() - started)
            total = sum(item["size"] for item in files)
            if sum(item["cached_bytes"] for item in files) >= total:
                return len(files), total
            errors = report["prefetch"]["errors"]
            if errors and not report["prefetch"]["active"]:
                for path, error in sorted(errors.items()):
                    print(f"{path}: {error}", file=sys.stderr)
                raise IntegrityError(f"{len(errors)} file(s) could not be fetched and verified")
            time.sleep(POLL_SECONDS)
    finally:
        show.close()


class _PlainProgress:
    """A line per second with a percentage: for logs and pipes."""

    def __init__(self) -> None:
        self._last = 0.0

    def update(self, files: list[dict[str, Any]], elapsed: float) -> None:
        total = sum(item["size"] for item in files) or 1
        done = sum(item["cached_bytes"] for item in files)
        if time.monotonic() - self._last < 1.0 and done < total:
            return
        self._last = time.monotonic()
        rate = done / max(elapsed, 1e-6)
        eta = (total - done) / rate if rate else float("inf")
        print(
            f"prefetch: {100 * done // total:3d}% {format_size(done)} of {format_size(total)}"
            f" verified, {format_size(int(rate))}/s, ETA {eta:.0f}s",
            flush=True,
        )

    def close(self) -> None:
        return None


class _RichProgress:
    """Bars for the whole set and for each file: bytes verified and cached, rate, ETA."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        self._tasks: dict[str, Any] = {}
        self._progress.start()

    def update(self, files: list[dict[str, Any]], elapsed: float) -> None:
        total = sum(item["size"] for item in files)
        done = sum(item["cached_bytes"] for item in files)
        self._set("all files", done, total)
        for item in files:
            self._set(item["path"], item["cached_bytes"], item["size"])

    def _set(self, name: str, done: int, total: int) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=total)
        self._progress.update(self._tasks[name], completed=done)

    def close(self) -> None:
        self._progress.stop()
