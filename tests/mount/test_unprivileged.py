"""A mount by a normal user, as on a workstation: through the setuid fusermount3, with the
defaults a user gets (cache in ~/.cache/lazyfs), the CLI run by that user from mount to
unmount."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from tests.mounts import publish
from tests.origins import Origin
from tests.support.processes import is_mounted
from tests.users import check_fusermount_is_setuid, unprivileged_user
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
