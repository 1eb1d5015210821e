"""What the page cache holds of a file, as fincore(1) counts it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache (util-linux fincore)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())
