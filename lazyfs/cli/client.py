"""The client side of a live mount's control socket: status, wait, prefetch progress and
cancelling a prefetch."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lazyfs.core.selection import select_paths
from lazyfs.core.sizes import format_size
from lazyfs.daemon.runtime import CLIENT_TIMEOUT, control_socket
from lazyfs.errors import CacheError, IntegrityError, LazyfsError, MountError, UsageError

POLL_SECONDS = 0.25


def request(mountpoint: Path, command: dict[str, Any]) -> dict[str, Any]:
    target = mountpoint.absolute()
    reply = ask(control_socket(target), target, command)
    if "error" in reply:
        raise MountError(f"the daemon of {mountpoint} could not answer: {reply['error']}")
    return reply


def status(mountpoint: Path) -> dict[str, Any]:
    return request(mountpoint, {"command": "status"})


def describe_status(report: dict[str, Any]) -> list[str]:
    """``lazyfs status`` for a person: a line per file, then the cache, reads, failures and
    prefetch runs."""
    lines = []
    for item in report["files"]:
        size = item["size"]
        share = 100 * item["cached_bytes"] // size if size else 100
        note = ""
        if "streamed_bytes" in item:
            note = f"  (verifying whole: {format_size(item['streamed_bytes'])} streamed)"
        elif "verify_whole" in item:
            note = f"  (verified whole on first read, by {item['verify_whole']})"
        elif item.get("verified_by") == "xet":
            note = f"  (xet: {format_size(item['verified_bytes'])} proven)"
        lines.append(f"{share:3d}% {format_size(size):>10}  {printable(item['path'])}{note}")

    def count(key: str) -> Any:
        return report.get(key, 0)

    lines.append(
        f"cache: {count('cache_blocks')} blocks, {format_size(count('cache_bytes'))} "
        f"of {format_size(count('cache_limit'))}"
    )
    lines.append(
        f"reads: {count('read_requests')} requests, {count('blocks_fetched')} blocks fetched "
        f"({format_size(count('bytes_fetched'))}), {count('cache_hits')} from the disk "
        f"cache, {count('memory_hits')} from memory, {count('blocks_read_ahead')} read "
        f"ahead, {count('fetches_in_flight')} fetches in flight"
    )
    lines.append(
        f"read-ahead: {format_size(count('read_ahead_bytes'))} of "
        f"{format_size(count('read_ahead_budget'))} in use "
        f"(at most {format_size(count('read_ahead_peak_bytes'))}), "
        f"{count('read_ahead_dropped')} blocks dropped unread, "
        f"{count('read_ahead_refused')} times out of budget"
    )
    lines.append(
        f"failures: {count('verification_failures')} fetched blocks did not verify, "
        f"{count('cache_verification_failures')} cached blocks were corrupt, "
        f"{count('cache_write_failures')} cache writes failed, "
        f"{count('cache_writes_skipped')} skipped (slow disk), "
        f"{count('whole_file_failures')} whole-file checks failed; "
        f"{count('fetch_retries')} fetch retries, {count('fetch_errors')} fetch errors"
    )
    if count("cas_requests"):
        lines.append(
            f"xet: {count('xet_proofs')} windows proven, {count('cas_requests')} CAS "
            f"requests, {format_size(count('cas_bytes'))} of xorbs received"
        )
    lines.extend(_describe_prefetch(report.get("prefetch", {}).get("runs", [])))
    # Counters added later than this summary still show, one per line.
    for key, value in report.items():
        if key not in _DESCRIBED and isinstance(value, int | float | str):
            lines.append(f"{key.replace('_', ' ')}: {value}")
    return lines


_DESCRIBED = {
    "files",
    "xet_proofs",
    "cas_requests",
    "cas_bytes",
    "cache_blocks",
    "cache_bytes",
    "cache_limit",
    "read_requests",
    "blocks_fetched",
    "bytes_fetched",
    "cache_hits",
    "memory_hits",
    "blocks_read_ahead",
    "fetches_in_flight",
    "read_ahead_budget",
    "read_ahead_bytes",
    "read_ahead_peak_bytes",
    "read_ahead_dropped",
    "read_ahead_refused",
    "verification_failures",
    "cache_verification_failures",
    "cache_write_failures",
    "cache_writes_skipped",
    "whole_file_failures",
    "fetch_retries",
    "fetch_errors",
    "prefetch",
}


def _describe_prefetch(runs: list[dict[str, Any]]) -> list[str]:
    if not runs:
        return ["prefetch: none"]
    lines = []
    for run in runs:
        done, total = run["done_bytes"], run["bytes"]
        share = 100 * done // total if total else 100
        extent = f"{run['files']} files, {format_size(total)}"
        if not run["finished"]:
            state = f"running, {share}% of {extent}"
        elif run["cancelled"]:
            state = f"cancelled at {share}% of {extent}"
        elif run["errors"] or run["not_kept"] or run["cache_error"]:
            state = (
                f"finished with problems: {len(run['errors'])} file(s) failed, "
                f"{len(run['not_kept'])} not kept in the cache, of {extent}"
            )
        else:
            state = f"done, {extent} cached"
        lines.append(f"prefetch run {run['id']}: {state}")
    return lines


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


# Signals that end a client; an interrupted prefetch is cancelled in the daemon too.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def prefetch(mountpoint: Path, wanted: tuple[str, ...], tty: bool) -> tuple[int, int]:
    """Have the daemon fetch and verify the chosen files into its cache, showing progress
    until its run has finished; (files, bytes). Raises, naming the files, if some failed or
    the cache did not keep them; an interrupted client cancels the run."""
    with _signals_deferred() as deliver:
        reply = request(mountpoint, {"command": "prefetch", "paths": list(wanted)})
        if reply["unknown"]:
            raise UsageError(f"not in the mount: {', '.join(reply['unknown'])}")
        run_id = reply["run"]
        try:
            # A signal that came while the run was being started arrives here, once the
            # run's number is known.
            deliver()
            run, report = _follow(mountpoint, run_id, wanted, tty)
        except KeyboardInterrupt:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            with contextlib.suppress(LazyfsError):
                request(mountpoint, {"command": "cancel_prefetch", "run": run_id})
            raise
    return _outcome(run, report)


def cancel_prefetch(mountpoint: Path) -> list[int]:
    """Cancel every prefetch run of the mount; the numbers of the runs cancelled."""
    cancelled: list[int] = request(mountpoint, {"command": "cancel_prefetch"})["cancelled"]
    return cancelled


@contextlib.contextmanager
def _signals_deferred() -> Iterator[Callable[[], None]]:
    """Hold SIGINT, SIGTERM and SIGHUP until the function given is called; from then on
    each raises KeyboardInterrupt (SIGTERM and SIGHUP would otherwise end the process
    without a word to the daemon)."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS[1:]}
    for signum in previous:
        signal.signal(signum, signal.default_int_handler)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def deliver() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)

    try:
        yield deliver
    finally:
        deliver()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _follow(
    mountpoint: Path, run_id: int, wanted: tuple[str, ...], tty: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Show the run's progress until the daemon says it has finished; its record and the
    last status."""
    show = _RichProgress() if tty else _PlainProgress()
    started = time.monotonic()
    try:
        while True:
            report = status(mountpoint)
            runs = [run for run in report["prefetch"]["runs"] if run["id"] == run_id]
            if not runs:
                raise MountError(f"the daemon of {mountpoint} lost track of the prefetch")
            run = runs[0]
            show.update(run, chosen_files(report, wanted), time.monotonic() - started)
            if run["finished"]:
                return run, report
            time.sleep(POLL_SECONDS)
    finally:
        show.close()


def _outcome(run: dict[str, Any], report: dict[str, Any]) -> tuple[int, int]:
    if run["cancelled"]:
        raise LazyfsError("the prefetch was cancelled (lazyfs prefetch --cancel)")
    errors: dict[str, str] = run["errors"]
    not_kept: dict[str, int] = run["not_kept"]
    for path, error in sorted(errors.items()):
        print(f"{printable(path)}: {error}", file=sys.stderr)
    for path, missing in sorted(not_kept.items()):
        print(f"{printable(path)}: {format_size(missing)} not kept in the cache", file=sys.stderr)
    if run["cache_error"]:
        print(f"cache: {run['cache_error']}", file=sys.stderr)
    if errors:
        also = f"; {len(not_kept)} not kept in the cache" if not_kept else ""
        raise IntegrityError(f"{len(errors)} file(s) could not be fetched and verified{also}")
    if not_kept:
        raise CacheError(
            f"{len(not_kept)} file(s) not kept in the cache: {_why_not_kept(run, report)}"
        )
    if run["cache_error"]:
        raise CacheError("the cache could not say what it holds")
    return run["files"], run["bytes"]


def _why_not_kept(run: dict[str, Any], report: dict[str, Any]) -> str:
    limit = format_size(report["cache_limit"])
    if run["cache_write_failures"]:
        return f"{run['cache_write_failures']} cache writes failed (see the mount's log)"
    if run["bytes"] >= report["cache_limit"]:
        return (
            f"the selection ({format_size(run['bytes'])}) does not fit in the cache "
            f"(--cache-size {limit})"
        )
    return (
        f"their blocks were evicted meanwhile (by other reads, another mount sharing the "
        f"cache, or lazyfs cache prune; --cache-size {limit})"
    )


def progress_line(done: int, total: int, elapsed: float) -> str:
    """One line of plain progress: share, bytes, rate, and the time left once it is known."""
    share = 100 * done // total if total else 100
    # Under a millisecond, a rate means nothing (and may overflow).
    rate = done / elapsed if elapsed >= 0.001 else 0.0
    line = f"prefetch: {share:3d}% {format_size(done)} of {format_size(total)}"
    line += f", {format_size(int(rate))}/s"
    if done < total:
        line += f", ETA {(total - done) / rate:.0f}s" if rate > 0 else ", ETA unknown"
    return line


def printable(name: str) -> str:
    """``name`` with control and other unprintable characters escaped (``\\x1b``), so a
    file name cannot move the cursor, recolour the terminal or forge a line."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in name
    )


class _PlainProgress:
    """A line per second with a percentage: for logs and pipes."""

    def __init__(self) -> None:
        self._last = -float("inf")
        self._last_line = ""

    def update(self, run: dict[str, Any], files: list[dict[str, Any]], elapsed: float) -> None:
        if time.monotonic() - self._last < 1.0 and not run["finished"]:
            return
        self._last = time.monotonic()
        line = progress_line(run["done_bytes"], run["bytes"], elapsed)
        # A log gains nothing from the same line twice (a run that ends as it is first shown).
        if line != self._last_line:
            self._last_line = line
            print(line, flush=True)

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

    def update(self, run: dict[str, Any], files: list[dict[str, Any]], elapsed: float) -> None:
        self._set("all files", run["done_bytes"], run["bytes"])
        for item in files:
            self._set(printable(item["path"]), item["cached_bytes"], item["size"])

    def _set(self, name: str, done: int, total: int) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=total)
        self._progress.update(self._tasks[name], completed=done)

    def close(self) -> None:
        self._progress.stop()


def ask(path: Path, mountpoint: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the daemon of ``mountpoint`` (blocking); raise MountError if there
    is no live lazyfs daemon there."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(CLIENT_TIMEOUT)
    try:
        _connect(client, path)
        client.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while chunk := client.recv(1 << 16):
            data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise MountError(f"{mountpoint} is not a live lazyfs mount") from None
    except OSError as exc:
        raise MountError(f"cannot ask the daemon of {mountpoint}: {exc}") from None
    finally:
        client.close()
    try:
        reply: dict[str, Any] = json.loads(data)
        if not isinstance(reply, dict):
            raise ValueError("not an object")
    except ValueError:
        raise MountError(f"the daemon of {mountpoint} gave no answer") from None
    return reply


def _connect(client: socket.socket, path: Path) -> None:
    """Connect, waiting while the daemon's backlog is full (many clients at once)."""
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while True:
        try:
            client.connect(str(path))
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
