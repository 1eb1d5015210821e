"""The benchmark's Python-FUSE limit (scripts/benchmark/passthrough.py) through its subject:
the local file's exact bytes, 1 MiB kernel read-ahead once live, nothing left after."""

from __future__ import annotations

import os
from pathlib import Path

from scripts.benchmark.stage import Served, Stage
from scripts.benchmark.subjects import PASSTHROUGH, Passthrough, readahead_kb
from tests.support.processes import force_unmount, is_mounted, processes_with


def test_passthrough_serves_the_local_file_with_1_mib_readahead_and_stops(tmp_path: Path) -> None:
    source = tmp_path / "www" / "big" / "file.bin"
    source.parent.mkdir(parents=True)
    data = os.urandom(3 * 2**20 + 5)
    source.write_bytes(data)
    stage = Stage(tmp_path / "work", quick=True)
    stage.logs.mkdir(parents=True)
    subject = Passthrough(stage)
    mountpoint = stage.mountpoint(subject.name)
    try:
        with subject.open(Served(source, "http://unused"), tmp_path, drop_page_cache=False) as t:
            assert t.file == mountpoint / "file.bin"
            assert os.listdir(mountpoint) == ["file.bin"]
            assert t.file.read_bytes() == data
            with open(t.file, "rb") as handle:
                assert os.pread(handle.fileno(), 7, 2**20 - 3) == data[2**20 - 3 : 2**20 + 4]
            assert readahead_kb(mountpoint) == "1024"
            assert processes_with(str(mountpoint), str(PASSTHROUGH)) == [t.daemon]
        assert not is_mounted(mountpoint)
        assert processes_with(str(mountpoint), str(PASSTHROUGH)) == []
    finally:
        force_unmount(mountpoint)
        Passthrough.clean_up(stage)
