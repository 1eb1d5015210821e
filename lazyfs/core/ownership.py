"""What the mount shows as owner and permissions (``--uid``, ``--gid``, ``--file-mode``,
``--dir-mode``), sans-I/O.

A file's permissions are ``file_mode``; an executable file also gets an x bit for each r bit
``file_mode`` gives (0640 -> 0750), as rclone does: whoever may read an executable may run it,
and nobody else. The mount is read-only whatever the modes say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_FILE_MODE = 0o444
DEFAULT_DIR_MODE = 0o555
MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel: never an owner
_OCTAL_MODE = re.compile(r"(?:0o?)?([0-7]{1,4})")


def parse_mode(text: str) -> int:
    """Permission bits written in octal, as chmod takes them: 0644, 644 or 0o644; at most
    0777 (no setuid, setgid or sticky bits on a read-only mount)."""
    match = _OCTAL_MODE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an octal mode such as 0644: {text!r}")
    mode = int(match[1], 8)
    if mode > 0o777:
        raise ValueError(f"a mode is at most 0777, not {text!r}")
    return mode


@dataclass(frozen=True)
class Ownership:
    uid: int
    gid: int
    file_mode: int = DEFAULT_FILE_MODE
    dir_mode: int = DEFAULT_DIR_MODE

    def file_permissions(self, executable: bool) -> int:
        if not executable:
            return self.file_mode
        return self.file_mode | (self.file_mode & 0o444) >> 2
