"""`mount -t lazyfs` and an fstab line, through the mount.lazyfs helper and mount(8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lazyfs.errors import UsageError
from lazyfs.mounthelper import translate
from tests.mounts import LAZYFS, publish
from tests.origins import Origin

pytestmark = pytest.mark.mount


def test_options_translate_to_lazyfs_mount_flags() -> None:
    assert translate(
        ["http://h/r", "/mnt/x", "-o", "rw,cache_dir=/c,cache_size=2G,allow_other,_netdev"]
    ) == ["mount", "http://h/r", "/mnt/x", "--cache-dir", "/c", "--cache-size", "2G",
          "--allow-other"]  # fmt: skip
    assert translate(["-s", "http://h/r", "/m", "-oprefetch,x-systemd.automount"]) == [
        "mount", "http://h/r", "/m", "--prefetch"
    ]  # fmt: skip
    for bad in (["http://h/r"], ["http://h/r", "/m", "-o", "colour=blue"], ["a", "b", "-z"]):
        with pytest.raises(UsageError):
            translate(bad)


def test_mount_t_lazyfs_and_an_fstab_line(origin: Origin, tmp_path: Path) -> None:
    """Run in a private mount namespace whose /usr/sbin holds only our helper, so the
    system is not touched; everything, unmounting included, happens inside it."""
    (origin.root / "a.txt").write_text("through mount(8)\n")
    publish(origin.root)
    helpers = tmp_path / "sbin"
    helpers.mkdir()
    (helpers / "mount.lazyfs").symlink_to(Path(sys.executable).parent / "mount.lazyfs")
    target = tmp_path / "mnt"
    target.mkdir()
    cache = tmp_path / "cache"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"{origin.url} {target} lazyfs cache_dir={cache},cache_size=100M,_netdev,nofail 0 0\n"
    )
    lazyfs = " ".join(LAZYFS)
    script = f"""
set -e
# On any failure, stop the daemon too: its mount lives only in this namespace.
trap '{lazyfs} unmount {target} >/dev/null 2>&1 || true' EXIT
mount --bind {helpers} /usr/sbin
mount -t lazyfs {origin.url} {target} -o cache_dir={cache},cache_size=100M
grep -q ' {target} fuse.lazyfs ' /proc/self/mounts
cmp {target}/a.txt {origin.root}/a.txt
{lazyfs} unmount {target}
mount -T {fstab} {target}
cmp {target}/a.txt {origin.root}/a.txt
{lazyfs} unmount {target}
echo helper-ok
"""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "helper-ok" in result.stdout
