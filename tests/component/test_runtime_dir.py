"""The folder of live mounts' pid files and control sockets (lazyfs.daemon.runtime): made
private, and refused when someone else made it first (under /tmp anyone can)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazyfs.daemon.runtime import control_socket, runtime_dir
from lazyfs.errors import MountError


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_the_folder_is_made_private_and_used(base: Path) -> None:
    path = runtime_dir()
    assert path == base / f"lazyfs-{os.getuid()}"
    assert path.stat().st_mode & 0o777 == 0o700
    assert control_socket(Path("/mnt/models/x")).parent == path


def test_a_folder_someone_else_could_fill_is_refused(base: Path, tmp_path: Path) -> None:
    path = base / f"lazyfs-{os.getuid()}"
    elsewhere = tmp_path / "planted"
    elsewhere.mkdir(mode=0o700)
    cases = {
        "open to others": lambda: path.mkdir(mode=0o777) or path.chmod(0o777),
        "a symlink": lambda: path.symlink_to(elsewhere),
        "another user's": lambda: path.mkdir(mode=0o700) or os.chown(path, 12345, 12345),
    }
    for why, plant in cases.items():
        plant()
        with pytest.raises(MountError, match="not a folder private to this user"):
            runtime_dir()
        (path.unlink if path.is_symlink() else path.rmdir)()
        assert not path.exists(), why
