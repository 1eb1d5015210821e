"""Origins for tests: the embedded ``lazyfs serve`` and nginx, run as real processes.

Both write the same access-log format (tests/support/processes.py describes it), so a test can ask
either one which requests reached it. The process handling is shared with scripts/benchmark.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.processes import (
    NGINX,
    AccessRecord,
    Origin,
    free_port,
    read_access_log,
    start_nginx_origin,
)

__all__ = [
    "NGINX",
    "AccessRecord",
    "Origin",
    "free_port",
    "read_access_log",
    "start_lazyfs_origin",
    "start_nginx_origin",
]


def start_lazyfs_origin(root: Path, workdir: Path) -> Origin:
    """``python -m lazyfs serve ROOT --port 0``, the real CLI; the port comes from its banner."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "lazyfs-access.log"

    def command(port: int) -> list[str]:
        serve = [sys.executable, "-m", "lazyfs", "serve", str(root), "--port", str(port)]
        return [*serve, "--access-log", str(log)]

    origin = Origin("lazyfs", root, workdir, log, command, banner=True)
    origin.start()
    return origin
