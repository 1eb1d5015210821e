"""Starting a background mount: the daemon process, its settings handed over whole on stdin,
and waiting on a pipe until it says the mount is live or why it failed. Light: the parent
``lazyfs mount`` imports neither FUSE nor HTTP nor the event loop."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from lazyfs.cache.directory import prepare_cache_dir
from lazyfs.daemon.config import DaemonStart, MountConfig
from lazyfs.daemon.mountpoint import check_mountpoint
from lazyfs.errors import MountError

READY_TIMEOUT = 180.0


def start_background(config: MountConfig, log_file: Path, log_level: str) -> None:
    """Start the mount daemon and return once the mount is live; raise if it failed.

    The daemon gets ``config`` whole on its stdin (see ``DaemonStart``), not as re-spelled
    command-line flags: what the parent parsed is exactly what the daemon mounts."""
    check_mountpoint(config.mountpoint)
    prepare_cache_dir(config.cache_dir)
    read_end, write_end = os.pipe()
    # Isolated from the caller's working directory: `python -m` would otherwise import
    # lazyfs from there first (a directory named lazyfs, such as the default cache dir in
    # ~/.cache, breaks the mount; a lazyfs.py would run as the mounting user). -P keeps it
    # off sys.path; cwd "/" keeps the daemon from holding the directory busy. Every path in
    # the command is absolute.
    command = [
        sys.executable,
        "-P",
        "-m",
        "lazyfs",
        "mount",
        config.url,
        str(config.mountpoint),
        "--daemon",
        "--ready-fd",
        str(write_end),
    ]
    start = DaemonStart(config, log_file, log_level)
    with open(log_file, "ab") as log_handle:
        daemon = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=log_handle,
            stderr=log_handle,
            pass_fds=(write_end,),
            start_new_session=True,
            cwd="/",
        )
    os.close(write_end)
    assert daemon.stdin is not None
    try:
        with daemon.stdin:
            daemon.stdin.write(start.encode())
    except BrokenPipeError:
        pass  # the daemon is already gone; _read_status says how it ended
    try:
        message = _read_status(read_end, daemon)
    finally:
        os.close(read_end)
    if message == "ready":
        return
    if message.startswith("error "):
        _, code, text = message.split(" ", 2)
        daemon.wait(timeout=30)
        error = MountError(text)
        error.exit_code = int(code)
        raise error
    daemon.kill()
    daemon.wait()
    raise MountError(f"{message}; see {log_file}")


def _read_status(read_end: int, daemon: subprocess.Popen[bytes]) -> str:
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
            code = daemon.wait(timeout=30)
            return f"the mount daemon exited with status {code} before the mount was ready"
        received += chunk
    return received.split(b"\n", 1)[0].decode(errors="replace")
