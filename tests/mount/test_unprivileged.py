"""A mount by a normal user, as on a workstation: through the setuid fusermount3, with the
defaults a user gets (cache in ~/.cache/lazyfs), the CLI run by that user from mount to
unmount; and ``--allow-other``, which a user may ask for only if /etc/fuse.conf lets users."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from lazyfs.core.fuseconf import user_allow_other_set
from lazyfs.daemon.mountpoint import FUSE_CONF
from tests.mounts import publish
from tests.origins import Origin
from tests.support.processes import is_mounted
from tests.users import User, check_fusermount_is_setuid, unprivileged_user
from tests.waiting import wait_until

BLOCK = 64 * 1024


def mount_fields(mountpoint: Path) -> tuple[str, str]:
    """(mount options, file system options) of the mount at ``mountpoint``, from mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == str(mountpoint):
            return fields[5], line.split(" - ")[1].split(" ")[2]
    raise AssertionError(f"{mountpoint} is not mounted")


# One origin is enough: what is tested is who mounts, not how bytes are served.
@pytest.mark.parametrize("origin", ["lazyfs"], indirect=True)
def test_a_normal_user_mounts_reads_prefetches_and_unmounts(origin: Origin) -> None:
    check_fusermount_is_setuid()
    weights = random.Random(14).randbytes(5 * BLOCK + 123)
    (origin.root / "weights.bin").write_bytes(weights)
    (origin.root / "config.json").write_text('{"layers": 2}\n')
    publish(origin.root)
    with unprivileged_user() as user:
        mountpoint = user.make_dir("model")
        mounted = user.lazyfs("mount", origin.url, mountpoint)
        assert mounted.returncode == 0, mounted.stderr
        # Mounted by fusermount3 for the user, not by root: the kernel records whose it is.
        assert f"user_id={user.uid}" in mount_fields(mountpoint)[1].split(",")

        read = user.run("sha256sum", mountpoint / "weights.bin")
        assert read.returncode == 0, read.stderr
        assert read.stdout.split()[0] == hashlib.sha256(weights).hexdigest()

        prefetched = user.lazyfs("prefetch", mountpoint)
        assert prefetched.returncode == 0, prefetched.stderr
        reported = user.lazyfs("status", mountpoint, "--json")
        assert reported.returncode == 0, reported.stderr
        files = json.loads(reported.stdout)["files"]
        cached = {item["path"]: item["cached_bytes"] for item in files}
        assert cached == {"weights.bin": len(weights), "config.json": len('{"layers": 2}\n')}
        # The cache is the user's own, where a user's cache goes by default.
        assert any((user.home / ".cache" / "lazyfs" / "blocks").iterdir())

        unmounted = user.lazyfs("unmount", mountpoint)
        assert unmounted.returncode == 0, unmounted.stderr
        assert not is_mounted(mountpoint)
        assert wait_until(lambda: not user.processes()), "the user's daemon outlived its mount"

        check_allow_other_as(user, origin)


def check_allow_other_as(user: User, origin: Origin) -> None:
    """What ``--allow-other`` does for this user follows this machine's /etc/fuse.conf
    (Debian's leaves user_allow_other commented out): refused before anything starts, in one
    line saying what to change; or, where users may, a mount that others can read."""
    conf = FUSE_CONF.read_bytes() if FUSE_CONF.exists() else b""
    mountpoint = user.make_dir("shared")
    asked = user.lazyfs("mount", origin.url, mountpoint, "--allow-other")
    if not user_allow_other_set(conf):
        assert asked.returncode == 2, asked.stderr
        line = asked.stderr.strip()
        assert len(line.splitlines()) == 1, line
        assert str(FUSE_CONF) in line and "user_allow_other" in line, line
        assert not is_mounted(mountpoint)
        assert not user.processes()
        return
    assert asked.returncode == 0, asked.stderr
    assert "allow_other" in mount_fields(mountpoint)[1].split(",")
    assert (mountpoint / "config.json").read_text() == '{"layers": 2}\n'  # read by root
    unmounted = user.lazyfs("unmount", mountpoint)
    assert unmounted.returncode == 0, unmounted.stderr
