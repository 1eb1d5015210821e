"""Mount options for fleets, through real mounts: the owner and modes the mount shows, and a
subfolder mount that shows one folder of the repository."""

from __future__ import annotations

import json
import os
import random
import stat

import pytest

from tests.mounts import Mounter, lazyfs, publish
from tests.origins import Origin
from tests.waiting import wait_until

BLOCK = 64 * 1024


# One origin is enough: what is tested happens in the daemon, not in how bytes are served.
@pytest.mark.parametrize("origin", ["lazyfs"], indirect=True)
def test_the_mount_shows_the_owner_and_modes_asked_for(origin: Origin, mounter: Mounter) -> None:
    (origin.root / "sub").mkdir()
    (origin.root / "sub" / "config.json").write_text("{}\n")
    (origin.root / "run.sh").write_text("#!/bin/sh\n")
    (origin.root / "run.sh").chmod(0o755)
    publish(origin.root)
    ownership = ["--uid", "1000", "--gid", "1001", "--file-mode", "0640", "--dir-mode", "0750"]
    mountpoint, _ = mounter.mount(origin.url, *ownership)
    shown = {name: os.stat(mountpoint / name) for name in (".", "sub", "sub/config.json", "run.sh")}
    assert {(info.st_uid, info.st_gid) for info in shown.values()} == {(1000, 1001)}
    assert stat.S_IMODE(shown["."].st_mode) == stat.S_IMODE(shown["sub"].st_mode) == 0o750
    assert stat.S_IMODE(shown["sub/config.json"].st_mode) == 0o640
    assert stat.S_IMODE(shown["run.sh"].st_mode) == 0o750  # x where 0640 gives r
    assert (mountpoint / "sub" / "config.json").read_text() == "{}\n"  # root reads anyway


@pytest.mark.parametrize("origin", ["lazyfs"], indirect=True)
def test_a_subfolder_mount_shows_only_that_folder(origin: Origin, mounter: Mounter) -> None:
    (origin.root / "onnx" / "sub").mkdir(parents=True)
    model = random.Random(14).randbytes(3 * BLOCK + 7)
    (origin.root / "onnx" / "model.onnx").write_bytes(model)
    (origin.root / "onnx" / "sub" / "extra.txt").write_text("inside\n")
    (origin.root / "onnxruntime.txt").write_text("a neighbour, not inside\n")
    (origin.root / "top.txt").write_text("outside\n")
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url, "--subdir", "onnx/")
    assert sorted(os.listdir(mountpoint)) == ["model.onnx", "sub"]
    assert (mountpoint / "model.onnx").read_bytes() == model
    prefetched = lazyfs("prefetch", mountpoint, "sub")
    assert prefetched.returncode == 0, prefetched.stderr

    def cached() -> dict[str, int]:
        reported = lazyfs("status", mountpoint, "--json")
        assert reported.returncode == 0, reported.stderr
        return {item["path"]: item["cached_bytes"] for item in json.loads(reported.stdout)["files"]}

    # A block read is written to the cache just after it is served.
    assert wait_until(lambda: cached() == {"model.onnx": len(model), "sub/extra.txt": 7}), cached()
    # A folder the repository lacks is refused by the daemon; a path out of the repository
    # before anything starts. Each with one line.
    for folder, why in (("models", "no such folder"), ("../etc", "inside the repository")):
        _, refused = mounter.mount(origin.url, "--subdir", folder, expect_ok=False)
        assert refused.returncode != 0
        assert why in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, (
            refused.stderr
        )
