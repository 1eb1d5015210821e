"""Mount points: the checks before mounting, what /proc/self/mountinfo says, and unmounting."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from lazyfs.core.fuseconf import user_allow_other_set
from lazyfs.daemon.runtime import pid_file
from lazyfs.errors import MountError, UsageError

UNMOUNT_TIMEOUT = 20.0
FUSE_CONF = Path("/etc/fuse.conf")  # the path compiled into fusermount3


def _unescape_mountinfo(field: bytes) -> bytes:
    # The kernel writes space, tab, newline and backslash in mount points as octal escapes.
    return re.sub(rb"\\([0-7]{3})", lambda match: bytes([int(match[1], 8)]), field)


def mount_entry(resolved: Path) -> tuple[str, bytes] | None:
    """(device "major:minor", filesystem type) of the topmost mount at ``resolved``, an
    already resolved path: read from mountinfo, so nothing here stats the mount point."""
    target = os.fsencode(resolved)
    found = None
    with open("/proc/self/mountinfo", "rb") as mounts:
        for line in mounts:
            fields = line.split(b" ")
            if _unescape_mountinfo(fields[4]) == target:
                found = fields[2].decode(), fields[fields.index(b"-") + 1]
    return found


def _mount_type(path: Path) -> bytes | None:
    """The filesystem type mounted at ``path`` (b"fuse.lazyfs", ...), or None."""
    entry = mount_entry(path.resolve())
    return None if entry is None else entry[1]


def _is_mounted(path: Path) -> bool:
    return _mount_type(path) is not None


def check_mountpoint(mountpoint: Path) -> None:
    """Refuse, with one line, every mount point the kernel would refuse or we would regret."""
    try:
        mountpoint.stat()
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(
                f"mount point {mountpoint} is a dead mount (transport endpoint is not "
                f"connected); run: lazyfs unmount {mountpoint}"
            ) from None
        raise MountError(f"mount point {mountpoint}: {exc.strerror}") from None
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    mounted = _mount_type(mountpoint)
    if mounted == b"fuse.lazyfs" and _live_daemon(mountpoint) is None:
        raise MountError(
            f"mount point {mountpoint} is a dead lazyfs mount (its daemon is gone); "
            f"run: lazyfs unmount {mountpoint}"
        )
    if mounted is not None:
        raise MountError(f"mount point {mountpoint} is already mounted")
    if any(os.scandir(mountpoint)):
        raise MountError(f"mount point {mountpoint} is not empty")
    check_fuse_device()


def check_fuse_device() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError(
            "no /dev/fuse: load the fuse module (in a container: docker run --device /dev/fuse)"
        )
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("/dev/fuse is not readable and writable by this user")


def check_allow_other() -> None:
    """Refuse ``--allow-other`` when fusermount3 would: for a user other than root, unless
    /etc/fuse.conf has ``user_allow_other``. Asked before the daemon starts, so the user
    reads why in one line rather than "fuse_session_mount failed" and a log to look in."""
    if os.geteuid() == 0:
        return  # root mounts without fusermount3, and fuse.conf does not bind it
    try:
        conf = FUSE_CONF.read_bytes()
    except FileNotFoundError:
        conf = b""
    except OSError:
        return  # fusermount3 reads it as root: let it decide
    if not user_allow_other_set(conf):
        raise UsageError(
            f"--allow-other: a mount by a user other than root needs a line user_allow_other "
            f"in {FUSE_CONF} (ask an administrator to add it, or mount without --allow-other)"
        )


def unmount(mountpoint: Path, timeout: float = UNMOUNT_TIMEOUT) -> None:
    """Stop the daemon serving ``mountpoint`` (it unmounts on the way out) and wait for it;
    a mount whose daemon died is detached with fusermount."""
    daemon_pid = _live_daemon(mountpoint)
    if daemon_pid is not None:
        os.kill(daemon_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(daemon_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(daemon_pid):
            raise MountError(f"the daemon for {mountpoint} (pid {daemon_pid}) did not stop")
    if not _is_mounted(mountpoint):
        if daemon_pid is None:
            raise MountError(f"{mountpoint} is not mounted")
        return
    result = subprocess.run(
        ["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise MountError(f"cannot unmount {mountpoint}: {reason}")


def _live_daemon(mountpoint: Path) -> int | None:
    path = pid_file(mountpoint)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not _pid_alive(pid) or b"lazyfs" not in _cmdline(pid):
        path.unlink(missing_ok=True)
        return None
    return pid


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except FileNotFoundError:
        return b""


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            # A zombie has exited; only its parent has yet to collect it.
            return stat_file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
