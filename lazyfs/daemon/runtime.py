"""Where a live mount's pid file and control socket live; light enough for client commands to
import."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from lazyfs.errors import MountError


def runtime_dir() -> Path:
    """Where live mounts leave their pid files, so ``lazyfs unmount`` can find the daemon."""
    base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.getuid() == 0 else "/tmp")
    path = Path(base) / f"lazyfs-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Under /tmp anyone may have made it first: a pid file or socket planted there would have
    # `lazyfs unmount` signal, or `lazyfs status` believe, whatever it names.
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise MountError(
            f"{path} is not a folder private to this user (it must be yours, mode 0700); "
            "remove it or set XDG_RUNTIME_DIR"
        )
    return path


def pid_file(mountpoint: Path) -> Path:
    return runtime_dir() / f"{_mount_key(mountpoint)}.pid"


def control_socket(mountpoint: Path) -> Path:
    return runtime_dir() / f"{_mount_key(mountpoint)}.sock"


def _mount_key(mountpoint: Path) -> str:
    return hashlib.sha256(str(mountpoint.resolve()).encode()).hexdigest()[:24]


CLIENT_TIMEOUT = 30.0
