"""``--allow-other`` from a user other than root (lazyfs.daemon.mountpoint.check_allow_other):
refused without ``user_allow_other`` in fuse.conf, as fusermount3 would, both ways of the file
(the mount test as a real user sees only this machine's fuse.conf)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyfs.daemon import mountpoint
from lazyfs.errors import UsageError


@pytest.fixture
def fuse_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fuse.conf"
    monkeypatch.setattr(mountpoint, "FUSE_CONF", path)
    monkeypatch.setattr(mountpoint.os, "geteuid", lambda: 1000)
    return path


def test_a_user_needs_user_allow_other(fuse_conf: Path) -> None:
    for conf in (None, b"# user_allow_other\n", b"mount_max = 1000\n"):
        if conf is not None:
            fuse_conf.write_bytes(conf)
        with pytest.raises(UsageError, match=f"user_allow_other in {fuse_conf}"):
            mountpoint.check_allow_other()
    fuse_conf.write_bytes(b"mount_max = 1000\nuser_allow_other\n")
    mountpoint.check_allow_other()


def test_root_is_not_bound_by_fuse_conf(fuse_conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mountpoint.os, "geteuid", lambda: 0)
    mountpoint.check_allow_other()  # no fuse.conf at all
