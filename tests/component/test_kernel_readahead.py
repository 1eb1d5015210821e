"""The mount's kernel read-ahead: raised where it may be, and said plainly where it may not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lazyfs.daemon.lifecycle import KERNEL_READAHEAD_KB, raise_kernel_readahead


def test_a_writable_setting_is_raised(tmp_path: Path) -> None:
    setting = tmp_path / "read_ahead_kb"
    setting.write_text("128\n")
    raise_kernel_readahead(setting)
    assert setting.read_text() == f"{KERNEL_READAHEAD_KB}\n"


def test_a_setting_it_cannot_write_is_named_with_the_size_the_kernel_keeps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As a user mount meets it: a sysfs attribute this process may read but not write (even
    root cannot write a read-only one)."""
    setting = Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
    if not setting.exists():
        pytest.skip("no read-only sysfs attribute to stand in for read_ahead_kb")
    kept = int(setting.read_text())
    with caplog.at_level(logging.INFO, logger="lazyfs.daemon.lifecycle"):
        raise_kernel_readahead(setting)
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.INFO
    assert f"requests of {kept} KiB, not {KERNEL_READAHEAD_KB} KiB" in message
    assert f"({setting}: Permission denied: only root can raise it)" in message
