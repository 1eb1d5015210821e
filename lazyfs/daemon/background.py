"""Starting a background mount: a forked daemon, and waiting on a pipe until it says the mount
is live or why it failed. Light: the parent ``lazyfs mount`` imports neither FUSE nor HTTP nor
the event loop, and the daemon, a fork of it, loads them once it is on its own.

Forked, not a new interpreter: the daemon starts with everything the parent already loaded
(the interpreter, click, the CLI, the parsed ``MountConfig``), which is about a third of the
time a mount takes to become live. Safe because the parent has no threads and no event loop
when it forks; the daemon detaches as a new interpreter would have been: its own session,
cwd ``/``, no inherited descriptors, and no working directory on ``sys.path``."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from lazyfs.cache.directory import prepare_cache_dir
from lazyfs.daemon.config import MountConfig
from lazyfs.daemon.mountpoint import check_mountpoint
from lazyfs.errors import LazyfsError, MountError

READY_TIMEOUT = 180.0
EXIT_TIMEOUT = 30.0

# What the daemon runs: serve the mount, reporting "ready" or "error CODE TEXT" on the fd.
Serve = Callable[[int], None]


def start_background(config: MountConfig, log_file: Path, serve: Serve) -> None:
    """Fork the mount daemon, which runs ``serve(ready_fd)`` with its output in ``log_file``,
    and return once the mount is live; raise if it failed."""
    check_mountpoint(config.mountpoint)
    prepare_cache_dir(config.cache_dir)
    # A thread would not survive the fork, and whatever lock it held would stay held.
    assert threading.active_count() == 1, "fork with threads running"
    read_end, write_end = os.pipe()
    # What the parent has buffered is its own output, not the daemon's to write again.
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _run_daemon(serve, write_end, log_file)
    os.close(write_end)
    try:
        message = _read_status(read_end, pid)
    finally:
        os.close(read_end)
    if message == "ready":
        return
    if message.startswith("error "):
        _, code, text = message.split(" ", 2)
        _wait_for_exit(pid, EXIT_TIMEOUT)
        error = MountError(text)
        error.exit_code = int(code)
        raise error
    # It may have exited, and been waited for, already (that is often the message): then
    # there is nothing left to kill or wait for.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        _wait_for_exit(pid, EXIT_TIMEOUT)
    raise MountError(f"{message}; see {log_file}")


def _run_daemon(serve: Serve, ready_fd: int, log_file: Path) -> None:
    """The forked child: detach, serve, and leave with the exit code a ``lazyfs mount
    --foreground`` would have had. Never returns into the parent's call stack."""
    code = 1
    try:
        _detach(ready_fd, log_file)
        serve(ready_fd)
        code = 0
    except LazyfsError as exc:
        print(f"lazyfs: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _detach(ready_fd: int, log_file: Path) -> None:
    """What ``python -P`` with ``cwd="/"``, ``start_new_session`` and ``close_fds`` gave a
    daemon started as a new interpreter: its own session, so the terminal's signals are not
    its; cwd "/", so it holds no directory busy; nothing on ``sys.path`` from where the
    command ran (a lazyfs.py or a directory named lazyfs there, such as the default cache dir
    in ~/.cache, must not be imported); stdin from /dev/null, stdout and stderr to the log,
    and no descriptor of the caller's kept open (a caller reading our output to its end
    would wait for the daemon's)."""
    os.setsid()
    os.chdir("/")
    if not sys.flags.safe_path and sys.path:
        del sys.path[0]  # the script's directory, or the working directory with -m or -c
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, ready_fd)
    os.closerange(ready_fd + 1, os.sysconf("SC_OPEN_MAX"))


def _read_status(read_end: int, pid: int) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    received = b""
    while b"\n" not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"the mount daemon did not become ready in {READY_TIMEOUT:.0f}s"
        readable, _, _ = select.select([read_end], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(read_end, 4096)
        if not chunk:
            code = _wait_for_exit(pid, EXIT_TIMEOUT)
            return f"the mount daemon exited with status {code} before the mount was ready"
        received += chunk
    return received.split(b"\n", 1)[0].decode(errors="replace")


def _wait_for_exit(pid: int, timeout: float) -> int | None:
    """The daemon's exit code once it has exited, or None if it is still running after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)
