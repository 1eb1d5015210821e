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
from tests.xetuploads import SessionUploads

CONFIG = b'{"model_type": "llama", "hidden_size": 64}\n'
BLOCK = 4 * 1024 * 1024


def write_safetensors(path: Path, tensors: int, values: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Whole numbers as float32: LZ4 and byte grouping have something to do, as on real weights.
    arrays = {
        f"model.layers.{n}.weight": (rng.standard_normal(values, dtype=np.float32) * 8).round()
        for n in range(tensors)
    }
    save_file(arrays, path)


def safetensors_bytes(tmp: Path, tensors: int, values: int, seed: int) -> bytes:
    path = tmp / f"weights-{seed}.safetensors"
    write_safetensors(path, tensors, values, seed)
    return path.read_bytes()


def shared_safetensors(uploads: SessionUploads, tensors: int, values: int, seed: int) -> bytes:
    """``safetensors_bytes``, generated once per run for all test processes."""
    return uploads.generated(
        f"weights-{tensors}x{values}-{seed}.safetensors",
        lambda path: write_safetensors(path, tensors, values, seed),
    )


@pytest.fixture(scope="module")
def model(xet_uploads: SessionUploads) -> dict[str, bytes]:
    return {
        "config.json": CONFIG,
        # 256 MiB: 64 tensors of 4 MiB, 64 of the mount's blocks.
        "model.safetensors": shared_safetensors(xet_uploads, 64, 1 << 20, 3),
        # 12 MiB, for the tests that read a file whole.
        "small.safetensors": shared_safetensors(xet_uploads, 6, 1 << 19, 4),
    }


@pytest.fixture(scope="module")
def xet_hub(
    model: dict[str, bytes], xet_uploads: SessionUploads
) -> Iterator[tuple[FakeHub, FakeXetCas]]:
    # The real hf_xet client uploads the model once per run; other test processes replay
    # what it sent into a CAS of their own (tests/xetuploads.py).
    with fake_xet_cas() as cas, fake_hub("hf", cas=cas, upload=xet_uploads.upload) as hub:
        hub.add_repo("org/model", model)
        yield hub, cas


@pytest.fixture
def cas(
    xet_hub: tuple[FakeHub, FakeXetCas], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeXetCas]:
    hub, cas = xet_hub
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield cas
    finally:
        cas.heal()
        cas.file_chunk_hashes = True
        cas.v2_reconstructions = True
        cas.forge_gap = None
        cas.gzip_json = False
        cas.failures.clear()


def xet_hash_of(cas: FakeXetCas, data: bytes) -> str:
    (found,) = [name for name, file in cas.files.items() if file.size == len(data)]
    return found


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


def read_fails(path: Path, offset: int, length: int) -> bool:
    try:
        pread(path, offset, length)
    except OSError as exc:
        return exc.errno == 5
    return False


def sha256sum(path: Path) -> str:
    result = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[0]


def file_status(mountpoint: Path, path: str) -> tuple[dict[str, object], dict[str, object]]:
    status = json.loads(lazyfs("status", "--json", str(mountpoint)).stdout)
    return next(f for f in status["files"] if f["path"] == path), status


def test_a_tensor_from_the_middle_fetches_a_small_part_and_the_whole_file_reads_equal(
    cas: FakeXetCas, model: dict[str, bytes], mounter: Mounter
) -> None:
    data = model["model.safetensors"]
    mountpoint, _ = mounter.mount("hf://org/model", "--no-tensor-aware")
    start, _ = tensor_span(data, "model.layers.33.weight")
    sent = cas.xorb_bytes_sent
    part = pread(mountpoint / "model.safetensors", start + 4096, 8192)
    assert part == data[start + 4096 : start + 4096 + 8192]
    fetched = cas.xorb_bytes_sent - sent
    assert 0 < fetched < len(data) // 16, fetched
    item, status = file_status(mountpoint, "model.safetensors")
    assert item["verified_by"] == "xet" and 0 < int(item["verified_bytes"]) < len(data)  # type: ignore[call-overload]
    assert status["cas_requests"] and status["xet_proofs"]
    assert sha256sum(mountpoint / "model.safetensors") == hashlib.sha256(data).hexdigest()
    item, _ = file_status(mountpoint, "model.safetensors")
    assert item["verified_bytes"] == len(data)
    # A block is written to the cache just after it is served.
    assert wait_until(
        lambda: file_status(mountpoint, "model.safetensors")[0]["cached_bytes"] == len(data)
    )
    # Every block proven: the whole file is checked against the listing's LFS sha256 too.
    assert wait_until(lambda: "the whole file matches the Hub's sha256" in mounter.log_text())
    # The CAS token went to the CAS only; pre-signed data URLs got no credentials.
    assert cas.data_authorizations == []


def test_a_flipped_byte_in_a_stored_chunk_is_never_served_and_clean_windows_read(
    cas: FakeXetCas, model: dict[str, bytes], mounter: Mounter
) -> None:
    data = model["model.safetensors"]
    target = 40 * BLOCK + 123_457
    xorb = cas.corrupt(xet_hash_of(cas, data), target)
    mountpoint, _ = mounter.mount("hf://org/model", "--retries", "2", "--no-tensor-aware")
    path = mountpoint / "model.safetensors"
    assert read_fails(path, target - 10, 20)
    log = mounter.log_text()
    assert "model.safetensors bytes" in log and xorb in log and "do not prove against" in log
    assert "the Hub's xetHash is" in log
    # Other windows of the same file are proven and read.
    assert pread(path, 10 * BLOCK, 4096) == data[10 * BLOCK : 10 * BLOCK + 4096]
    assert pread(path, 60 * BLOCK, 4096) == data[60 * BLOCK : 60 * BLOCK + 4096]
    _, status = file_status(mountpoint, "model.safetensors")
    assert status["verification_failures"] >= 2
    # Healed at the CAS, the same read is proven and served.
    cas.heal()
    assert pread(path, target - 10, 20) == data[target - 10 : target + 10]


def test_a_forged_gap_subtree_fails_the_read(
    cas: FakeXetCas, model: dict[str, bytes], mounter: Mounter
) -> None:
    data = model["model.safetensors"]
    mountpoint, _ = mounter.mount("hf://org/model", "--retries", "2", "--no-tensor-aware")
    for how in ("hash", "size"):
        cas.forge_gap = how
        offset = (20 if how == "hash" else 30) * BLOCK + 5
        assert read_fails(mountpoint / "model.safetensors", offset, 100), how
    assert "do not prove against" in mounter.log_text()
    cas.forge_gap = None
    assert (
        pread(mountpoint / "model.safetensors", 20 * BLOCK, 100)
        == data[20 * BLOCK : 20 * BLOCK + 100]
    )


def test_an_old_cas_without_chunk_hashes_falls_back_to_whole_file_verification(
    cas: FakeXetCas, model: dict[str, bytes], mounter: Mounter
) -> None:
    cas.file_chunk_hashes = False
    data = model["small.safetensors"]
    mountpoint, _ = mounter.mount("hf://org/model")
    assert (
        pread(mountpoint / "small.safetensors", 5 * 1024 * 1024, 1000)
        == data[5 << 20 : (5 << 20) + 1000]
    )
    item, _ = file_status(mountpoint, "small.safetensors")
    assert item["verified_by"] == "whole" and item["verified_bytes"] == len(data)
    log = mounter.log_text()
    assert "has no file-chunk-hashes" in log and "verifying small.safetensors whole instead" in log
    assert sha256sum(mountpoint / "small.safetensors") == hashlib.sha256(data).hexdigest()


def test_a_file_proven_whole_is_checked_against_the_listed_sha256(
    xet_hub: tuple[FakeHub, FakeXetCas], cas: FakeXetCas, model: dict[str, bytes], mounter: Mounter
) -> None:
    hub, _ = xet_hub
    data = model["small.safetensors"]
    hub.listed_sha256["small.safetensors"] = "0" * 64
    try:
        mountpoint, _ = mounter.mount("hf://org/model")
    finally:
        del hub.listed_sha256["small.safetensors"]
    # Every window proves against the xetHash (the read may see the check's verdict at its
    # very end); the whole file then fails the listed sha256.
    subprocess.run(["cat", str(mountpoint / "small.safetensors")], capture_output=True)
    item, _ = file_status(mountpoint, "small.safetensors")
    assert item["verified_bytes"] == len(data)
    assert wait_until(lambda: "does not match the hub's sha256" in mounter.log_text())
    _, status = file_status(mountpoint, "small.safetensors")
    assert status["whole_file_failures"] == 1
    # What the kernel still caches of it is dropped here; the mount serves none of it again.
    descriptor = os.open(mountpoint / "small.safetensors", os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)
    assert read_fails(mountpoint / "small.safetensors", 0, 100)
    assert pread(mountpoint / "config.json", 0, 100) == CONFIG


def test_a_window_that_runs_away_sends_the_file_to_whole_file_verification(
    mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Constant data makes maximal chunks, and a window only closes between two chunks of
    # ordinary size: a read near the start would prove the whole run at once.
    zeros = bytes(40 * 1024 * 1024)
    with fake_xet_cas() as cas, fake_hub("hf", cas=cas) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        hub.add_repo("org/zeros", {"config.json": CONFIG, "zeros.bin": zeros})
        mountpoint, _ = mounter.mount("hf://org/zeros")
        assert pread(mountpoint / "zeros.bin", 1000, 100) == bytes(100)
        item, _ = file_status(mountpoint, "zeros.bin")
        assert item["verified_by"] == "whole" and item["verified_bytes"] == len(zeros)
        assert "verifying zeros.bin whole instead" in mounter.log_text()
        assert cas.counts["xorb-data"] == 0


def test_expired_tokens_and_data_urls_mid_read_are_renewed_and_cas_errors_retried(
    cas: FakeXetCas, model: dict[str, bytes], mounter: Mounter
) -> None:
    data = model["model.safetensors"]
    mountpoint, _ = mounter.mount("hf://org/model", "--no-tensor-aware")
    path = mountpoint / "model.safetensors"
    assert pread(path, 2 * BLOCK, 4096) == data[2 * BLOCK : 2 * BLOCK + 4096]
    cas.expire_tokens()
    cas.expire_urls()
    assert pread(path, 12 * BLOCK, 4096) == data[12 * BLOCK : 12 * BLOCK + 4096]
    assert cas.statuses[("file-chunk-hashes", 401)] >= 1
    # A reconstruction handed out just before its URLs expire: the data URL answers 403.
    cas.fail(403, kinds=["xorb-data"])
    assert pread(path, 22 * BLOCK, 4096) == data[22 * BLOCK : 22 * BLOCK + 4096]
    assert "a Xet data URL expired" in mounter.log_text()
    cas.fail(503, times=2, retry_after="0", kinds=["reconstructions-v2"])
    cas.fail(429, times=1, retry_after="0", kinds=["file-chunk-hashes"])
    assert pread(path, 32 * BLOCK, 4096) == data[32 * BLOCK : 32 * BLOCK + 4096]
    assert cas.statuses[("reconstructions-v2", 503)] == 2
    assert cas.statuses[("file-chunk-hashes", 429)] == 1
    cas.v2_reconstructions = False
    assert pread(path, 42 * BLOCK, 4096) == data[42 * BLOCK : 42 * BLOCK + 4096]
    assert cas.counts["reconstructions-v1"] >= 1
    cas.gzip_json = True
    assert pread(path, 52 * BLOCK, 4096) == data[52 * BLOCK : 52 * BLOCK + 4096]
    assert "whole instead" not in mounter.log_text()
    log = mounter.log_text()
    assert "ERROR" not in log
    for token in cas.tokens:
        assert token not in log


SAFE_OPEN = """
import mmap, sys
import numpy as np
from safetensors import safe_open
path, name, expected = sys.argv[1], sys.argv[2], sys.argv[3]
with safe_open(path, "np") as opened:
    tensor = opened.get_tensor(name)
import hashlib
assert hashlib.sha256(tensor.tobytes()).hexdigest() == expected, "tensor differs"
with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as mapped:
    print(hashlib.sha256(mapped).hexdigest())
"""


def test_mmap_safe_open_and_prefetch_of_xet_files(
    cas: FakeXetCas, model: dict[str, bytes], mounter: Mounter
) -> None:
    data = model["small.safetensors"]
    mountpoint, _ = mounter.mount("hf://org/model")
    start, end = tensor_span(data, "model.layers.3.weight")
    # In a process of its own: page faults hold the GIL, and this process serves the fakes.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            SAFE_OPEN,
            str(mountpoint / "small.safetensors"),
            "model.layers.3.weight",
            hashlib.sha256(data[start:end]).hexdigest(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == hashlib.sha256(data).hexdigest()
    item, _ = file_status(mountpoint, "small.safetensors")
    assert item["verified_by"] == "xet"
    # Prefetch proves and keeps every block of a Xet file.
    assert lazyfs("prefetch", str(mountpoint), "small.safetensors").returncode == 0
    item, _ = file_status(mountpoint, "small.safetensors")
    assert item["verified_bytes"] == item["cached_bytes"] == len(data)


def test_a_remount_reads_proven_blocks_with_the_hub_and_cas_stopped(
    mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = safetensors_bytes(tmp_path, 5, 1 << 19, 9)  # 10 MiB: three blocks
    files = {"config.json": CONFIG, "model.safetensors": data}
    with fake_xet_cas() as cas, fake_hub("hf", cas=cas) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        hub.add_repo("org/model", files)
        mountpoint, _ = mounter.mount("hf://org/model")
        # Its first block: proven and kept; the others are not known yet.
        assert pread(mountpoint / "model.safetensors", 0, 100) == data[:100]
        assert (mountpoint / "config.json").read_bytes() == CONFIG
        mounter.unmount(mountpoint)
        assert cas.xorb_bytes_sent > 0
    again, _ = mounter.mount("hf://org/model", "--retries", "1")
    assert pread(again / "model.safetensors", 0, 100) == data[:100]
    assert (again / "config.json").read_bytes() == CONFIG
    item, status = file_status(again, "model.safetensors")
    assert item["verified_by"] == "xet" and item["verified_bytes"] == BLOCK
    assert status["cas_requests"] == 0 and status["blocks_fetched"] == 0
    # A block never proven cannot be read with the hub away: EIO, and the mount stays up.
    assert read_fails(again / "model.safetensors", len(data) - 100, 100)
    assert pread(again / "model.safetensors", 100, 100) == data[100:200]
    mounter.unmount(again)
    # HF_HUB_OFFLINE: nothing is asked at all, the CAS included.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline, _ = mounter.mount("hf://org/model")
    assert pread(offline / "model.safetensors", 0, 100) == data[:100]
    assert read_fails(offline / "model.safetensors", len(data) - 100, 100)
    assert "the Xet CAS is not asked" in mounter.log_text()
