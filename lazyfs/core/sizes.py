"""Byte sizes as people write them (``30M``, ``10G``, ``4MiB``), sans-I/O."""

from __future__ import annotations

import re
from decimal import Decimal

from lazyfs.errors import UsageError

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"10G"`` -> 10737418240. Units are binary (K = 1024); a bare number is bytes."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise UsageError(f"not a size: {text!r} (examples: 4096, 512K, 30M, 10G)")
    number, unit = match.groups()
    # Decimal, not float: exact to 28 digits, and no OverflowError on a long digit string.
    return int(Decimal(number) * _UNITS[unit.lower()])


def format_size(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
