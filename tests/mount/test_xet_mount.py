"""Hugging Face files stored in Xet, mounted lazily and proven window by window against the
Hub's xetHash: a fake Hub and a fake Xet CAS on 127.0.0.1 (tests/fakehubs.py,
tests/fakexet.py), filled by the real hf_xet client's upload, read with ordinary tools."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.fakehubs import FakeHub, fake_hub
from tests.fakexet import FakeXetCas, fake_xet_cas
from tests.mounts import Mounter, lazyfs
from tests.waiting import wait_until

CONFIG = b'{"model_type": "llama", "hidden_size": 64}\n'


def safetensors_bytes(tmp: Path, tensors: int, values: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    # Rounded to bfloat16-like precision so LZ4 and byte grouping have something to do.
    arrays = {
        f"model.layers.{n}.weight": (rng.standard_normal(values, dtype=np.float32) * 8).round()
        for n in range(tensors)
    }
    path = tmp / f"weights-{seed}.safetensors"
    save_file(arrays, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("xetmodel")
    # About 256 MiB: 64 tensors of 4 MiB, 64 of the mount's blocks.
    return {"config.json": CONFIG, "model.safetensors": safetensors_bytes(tmp, 64, 1 << 20, 3)}


@pytest.fixture(scope="module")
def xet_hub(model: dict[str, bytes]) -> Iterator[tuple[FakeHub, FakeXetCas]]:
    with fake_xet_cas() as cas, fake_hub("hf", cas=cas) as hub:
        hub.add_repo("org/model", model)
        yield hub, cas


@pytest.fixture
def hub(
    xet_hub: tuple[FakeHub, FakeXetCas], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeHub, FakeXetCas]]:
    hub, cas = xet_hub
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield hub, cas
    finally:
        cas.heal()
        cas.file_chunk_hashes = True
        cas.v2_reconstructions = True
        cas.forge_gap = None


def tensor_span(data: bytes, name: str) -> tuple[int, int]:
    header = 8 + int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8:header])[name]["data_offsets"]
    return header + begin, header + end


def pread(path: Path, offset: int, length: int) -> bytes:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
        return os.pread(descriptor, length, offset)
    finally:
        os.close(descriptor)


def test_a_tensor_from_the_middle_fetches_a_small_part_and_the_whole_file_reads_equal(
    hub: tuple[FakeHub, FakeXetCas], model: dict[str, bytes], mounter: Mounter
) -> None:
    fake, cas = hub
    data = model["model.safetensors"]
    mountpoint, _ = mounter.mount("hf://org/model", "--no-tensor-aware")
    start, end = tensor_span(data, "model.layers.33.weight")
    sent = cas.xorb_bytes_sent
    assert pread(mountpoint / "model.safetensors", start + 4096, 8192) == data[
        start + 4096 : start + 4096 + 8192
    ]
    fetched = cas.xorb_bytes_sent - sent
    assert 0 < fetched < len(data) // 4, fetched
    status = json.loads(lazyfs("status", "--json", str(mountpoint)).stdout)
    item = next(f for f in status["files"] if f["path"] == "model.safetensors")
    assert item["verified_by"] == "xet" and 0 < item["verified_bytes"] < len(data)
    assert status["cas_requests"] > 0 and status["xet_blocks_proven"] >= 1
    result = subprocess.run(
        ["sha256sum", str(mountpoint / "model.safetensors")], capture_output=True, text=True
    )
    assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert cas.data_authorizations == []
    # Every block proven: the whole file is checked against the listing's LFS sha256 too.
    assert wait_until(lambda: "the whole file matches the Hub's sha256" in mounter.log_text())
    print(mounter.log_text())
