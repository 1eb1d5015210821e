"""hf:// and modelscope:// mounts against fake hubs on 127.0.0.1 (tests/fakehubs.py), read
with ordinary tools; and the proof that the fake Hugging Face hub is faithful: the real
``huggingface_hub`` client downloads the same bytes from it."""

from __future__ import annotations

import errno
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

from lazyfs.core.loaderorder import ENTERED_BYTES
from lazyfs.core.manifest import MANIFEST_NAME
from tests.fakehubs import TOKEN, FakeHub, FakeRepo, fake_hub
from tests.mount.test_metrics import scrape
from tests.mounts import Mounter, lazyfs, publish
from tests.origins import free_port, start_lazyfs_origin
from tests.waiting import wait_until

BLOCK = 64 * 1024
WEIGHTS = os.urandom(40 * BLOCK + 123)  # 41 blocks of 64 KiB
FILES = {
    "config.json": b'{"model_type": "llama", "hidden_size": 64}\n',
    "tokenizer.json": os.urandom(3000),
    "model.safetensors": WEIGHTS,
    "nested/dir/extra.bin": os.urandom(70_000),
    "README.md": b"# fake model\n",
}


@pytest.fixture
def hf(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with fake_hub("hf") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield hub


@pytest.fixture
def modelscope(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with fake_hub("modelscope") as hub:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("MODELSCOPE_API_TOKEN", raising=False)
        yield hub


def assert_same_files(root: Path, files: dict[str, bytes]) -> None:
    listed = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert listed == sorted(files)
    for path, data in files.items():
        result = subprocess.run(
            ["sha256sum", str(root / path)], capture_output=True, text=True, check=True
        )
        assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest(), path


def one_line_error(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert words in result.stderr, result.stderr


def cdn_ranges(hub: FakeHub, data: bytes) -> list[str]:
    sha256 = hashlib.sha256(data).hexdigest()
    return [r.headers.get("range", "-") for r in hub.seen("cdn") if sha256 in r.path]


def test_the_real_huggingface_hub_client_downloads_the_same_bytes(
    hf: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import snapshot_download

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    hf.add_repo("org/private-model", FILES, private=True)
    hf.add_repo("org/data", {"train/part-0.parquet": os.urandom(5000)}, dataset=True)
    folder = snapshot_download(
        "org/private-model", cache_dir=tmp_path / "hf", token=TOKEN, endpoint=hf.endpoint
    )
    assert_same_files(Path(folder), FILES)
    data = snapshot_download(
        "org/data", repo_type="dataset", cache_dir=tmp_path / "hf", endpoint=hf.endpoint
    )
    assert (Path(data) / "train/part-0.parquet").stat().st_size == 5000
    # It took the paths our client takes: revision, paged tree, resolve, and the CDN.
    paths = [r.path for r in hf.seen("api")]
    assert any("/api/models/org/private-model/revision/main" in p for p in paths)
    assert sum("/tree/" in p for p in paths) >= 2
    assert any("/resolve/" in p for p in paths)
    assert hf.seen("cdn")


@pytest.mark.parametrize("dataset", [False, True])
def test_hf_mount_serves_every_file_verified_whole(
    hf: FakeHub, mounter: Mounter, dataset: bool
) -> None:
    hf.add_repo("org/model", FILES, dataset=dataset)
    source = "hf://datasets/org/model" if dataset else "hf://org/model"
    mountpoint, result = mounter.mount(source)
    assert f"mounted {source}@main" in result.stdout
    assert_same_files(mountpoint, FILES)
    log = mounter.log_text()
    assert "verified model.safetensors" in log
    assert "against the hub's git-sha1" in log  # config.json is a Git file, not LFS
    # Whole-file mode streams each file once (here one range: the mount's blocks are 4 MiB).
    assert cdn_ranges(hf, WEIGHTS) == [f"bytes=0-{len(WEIGHTS) - 1}"]


def test_private_repo_needs_a_token_which_never_leaves_the_hub(
    hf: FakeHub, mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf.add_repo("org/secret", FILES, private=True)
    _, refused = mounter.mount("hf://org/secret", expect_ok=False)
    one_line_error(refused, 3, "repository not found, or private")
    monkeypatch.setenv("HF_TOKEN", "wrong")
    _, wrong = mounter.mount("hf://org/secret", expect_ok=False)
    one_line_error(wrong, 3, "set HF_TOKEN or use --token-file")
    monkeypatch.delenv("HF_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    mountpoint, _ = mounter.mount("hf://org/secret", "--token-file", str(token_file))
    assert_same_files(mountpoint, FILES)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hf.seen("api")[-3:])
    assert hf.seen("cdn")
    assert not [r for r in hf.seen("cdn") if "authorization" in r.headers]
    assert TOKEN not in mounter.log_text()
    assert TOKEN not in Path("/proc/self/mountinfo").read_text()


def rotate_projected_secret(volume: Path, token: str, version: int) -> None:
    """Rotate a token the way Kubernetes updates a projected secret volume: the new file in a
    fresh ``..TIMESTAMP`` folder, then a ``..data`` symlink renamed over the old one
    (``token -> ..data/token`` stays)."""
    fresh = volume / f"..2024_01_01_00_00_0{version}.{version}"
    fresh.mkdir()
    (fresh / "token").write_text(token + "\n")
    (volume / "..data_tmp").symlink_to(fresh.name)
    os.rename(volume / "..data_tmp", volume / "..data")
    if not (volume / "token").is_symlink():
        (volume / "token").symlink_to("..data/token")


def test_a_rotated_token_file_is_used_without_a_remount(
    hf: FakeHub, mounter: Mounter, tmp_path: Path
) -> None:
    hf.add_repo("org/secret", FILES, private=True)
    volume = tmp_path / "secret"
    volume.mkdir()
    rotate_projected_secret(volume, TOKEN, 1)
    mountpoint, _ = mounter.mount("hf://org/secret", "--token-file", str(volume / "token"))
    assert (mountpoint / "config.json").read_bytes() == FILES["config.json"]
    # Rotated at the hub and in the secret: the old token's 401 has the file read again.
    hf.accepted_token = "hf_fake_token_rotated_0001"
    rotate_projected_secret(volume, hf.accepted_token, 2)
    assert (mountpoint / "tokenizer.json").read_bytes() == FILES["tokenizer.json"]
    # Rotated at the hub only: the read fails, and never with other bytes.
    hf.accepted_token = "hf_fake_token_rotated_0002"
    with pytest.raises(OSError) as failed:
        (mountpoint / "nested/dir/extra.bin").read_bytes()
    assert failed.value.errno == errno.EIO
    log = mounter.log_text()
    assert "read a new hub token from --token-file" in log
    assert "nested/dir/extra.bin" in log and "HTTP 401" in log
    assert "hf_fake_token" not in log
    asked = [(r.path.rsplit("/", 1)[-1], r.headers.get("authorization")) for r in hf.seen("api")]
    rotated = "Bearer hf_fake_token_rotated_0001"
    tokenizer = [sent for name, sent in asked if name == "tokenizer.json"]
    assert tokenizer == [f"Bearer {TOKEN}", rotated]
    # Each failed read (the kernel tries once more, one page) asked once: no loop.
    extra = [sent for name, sent in asked if name == "extra.bin"]
    assert extra and extra == [rotated] * log.count("extra.bin: HTTP 401")


def test_gated_repo_and_bad_revision_and_unreachable_hub_are_one_line(
    hf: FakeHub, mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf.add_repo("org/gated", FILES, gated=True)
    hf.add_repo("org/model", FILES)
    one_line_error(mounter.mount("hf://org/gated", expect_ok=False)[1], 3, "gated")
    one_line_error(
        mounter.mount("hf://org/model@nope", expect_ok=False)[1], 3, "revision 'nope' not found"
    )
    one_line_error(mounter.mount("hf://org/missing", expect_ok=False)[1], 3, "repository not found")
    one_line_error(mounter.mount("hf://org", expect_ok=False)[1], 2, "not a repository name")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    unreachable = mounter.mount("hf://org/model", "--retries", "1", expect_ok=False)[1]
    one_line_error(unreachable, 3, "unreachable")


def test_hostile_listing_pages_end_and_never_take_the_token_elsewhere(
    hf: FakeHub, mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = hf.add_repo("org/model", FILES)
    commit = repo.branches["main"]
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hf.next_page_override = f"{hf.endpoint}/api/models/org/model/tree/{commit}?recursive=true"
    one_line_error(mounter.mount("hf://org/model", expect_ok=False)[1], 3, "pages do not end")
    hf.next_page_override = f"{hf.cdn_base}/api/models/org/model/tree/{commit}?cursor=3"
    one_line_error(mounter.mount("hf://org/model", expect_ok=False)[1], 3, "on another host")
    assert not [r for r in hf.seen("cdn") if "authorization" in r.headers]


def test_rate_limits_are_retried_after_the_hubs_delay(hf: FakeHub, mounter: Mounter) -> None:
    hf.add_repo("org/model", FILES)
    hf.api_failures += [(429, "1"), (503, None)]
    mountpoint, _ = mounter.mount("hf://org/model")
    assert (mountpoint / "config.json").read_bytes() == FILES["config.json"]
    assert "rate-limited" in mounter.log_text()
    hf.api_failures += [(429, "0")] * 10
    _, refused = mounter.mount("hf://org/model", expect_ok=False)
    one_line_error(refused, 3, "rate-limited by the hub (HTTP 429)")


def test_a_mount_stays_on_its_commit_while_the_branch_moves(hf: FakeHub, mounter: Mounter) -> None:
    repo = hf.add_repo("org/model", FILES)
    mountpoint, _ = mounter.mount("hf://org/model")
    changed = {**FILES, "config.json": b'{"changed": true}\n', "model.safetensors": os.urandom(999)}
    hf.push(repo, changed)
    assert_same_files(mountpoint, FILES)
    newer, _ = mounter.mount("hf://org/model@main")
    assert_same_files(newer, changed)


def test_corrupt_bytes_from_the_cdn_are_never_served_whole_file_mode(
    hf: FakeHub, mounter: Mounter
) -> None:
    hf.add_repo("org/model", FILES)
    hf.corrupt.add(hashlib.sha256(WEIGHTS).hexdigest())
    mountpoint, _ = mounter.mount("hf://org/model")
    result = subprocess.run(
        ["cat", str(mountpoint / "model.safetensors")], capture_output=True, check=False
    )
    assert result.returncode != 0 and b"Input/output error" in result.stderr
    assert result.stdout == b""
    assert "does not match the hub's sha256" in mounter.log_text()
    assert (mountpoint / "config.json").read_bytes() == FILES["config.json"]
    hf.corrupt.clear()
    assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS


def test_verified_files_are_read_from_the_cache_after_a_remount(
    hf: FakeHub, mounter: Mounter
) -> None:
    hf.add_repo("org/model", FILES)
    mountpoint, _ = mounter.mount("hf://org/model")
    assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS
    mounter.unmount(mountpoint)
    before = len(hf.seen("cdn"))
    again, _ = mounter.mount("hf://org/model")
    assert (again / "model.safetensors").read_bytes() == WEIGHTS
    assert len(hf.seen("cdn")) == before


def test_modelscope_mount_with_a_token_file(
    modelscope: FakeHub, mounter: Mounter, tmp_path: Path
) -> None:
    modelscope.add_repo("org/model", FILES, private=True)
    _, refused = mounter.mount("modelscope://org/model", expect_ok=False)
    one_line_error(refused, 3, "access denied (HTTP 403: no permission")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    for source, words in [
        ("modelscope://org/model@dev", "revision 'dev' not found"),
        ("modelscope://org/nothing", "repository or revision not found"),
    ]:
        _, result = mounter.mount(source, "--token-file", str(token_file), expect_ok=False)
        one_line_error(result, 3, words)
    mountpoint, result = mounter.mount("modelscope://org/model", "--token-file", str(token_file))
    assert "modelscope://org/model@master" in result.stdout
    assert_same_files(mountpoint, FILES)
    api = modelscope.seen("api")
    assert any(f"m_session_id={TOKEN}" in r.headers.get("cookie", "") for r in api)
    cdn = modelscope.seen("cdn")
    assert cdn and not [r for r in cdn if "authorization" in r.headers or "cookie" in r.headers]


def test_modelscope_corruption_pinning_and_manifest_build(
    modelscope: FakeHub, mounter: Mounter, tmp_path: Path
) -> None:
    repo: FakeRepo = modelscope.add_repo("org/model", FILES)
    output = tmp_path / "ms.json"
    built = lazyfs(
        "manifest", "build", "modelscope://org/model", "--block-size", "64K", "-o", output
    )
    assert built.returncode == 0, built.stderr
    assert output.read_bytes() == local_manifest(tmp_path, FILES)
    mountpoint, _ = mounter.mount("modelscope://org/model")
    modelscope.push(repo, {**FILES, "README.md": b"# moved on\n"})
    assert (mountpoint / "README.md").read_bytes() == FILES["README.md"]
    modelscope.corrupt.add(hashlib.sha256(FILES["tokenizer.json"]).hexdigest())
    with pytest.raises(OSError):
        (mountpoint / "tokenizer.json").read_bytes()


# Block mode: a manifest in the repository or given with --manifest


def local_manifest(tmp_path: Path, files: dict[str, bytes]) -> bytes:
    root = tmp_path / "published"
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return publish(root, "64K")


def block_range(index: int) -> str:
    return f"bytes={index * BLOCK}-{(index + 1) * BLOCK - 1}"


def read_block(path: Path, index: int) -> bytes:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
        return os.pread(descriptor, 1000, index * BLOCK)
    finally:
        os.close(descriptor)


def test_a_committed_manifest_mounts_lazily_block_by_block(
    hf: FakeHub, mounter: Mounter, tmp_path: Path
) -> None:
    raw = local_manifest(tmp_path, FILES)
    hf.add_repo("org/model", {**FILES, MANIFEST_NAME: raw})
    mountpoint, _ = mounter.mount("hf://org/model")
    assert MANIFEST_NAME not in os.listdir(mountpoint)
    assert read_block(mountpoint / "model.safetensors", 5) == WEIGHTS[5 * BLOCK :][:1000]
    # And its first block: opening a .safetensors file reads its header (here not one).
    assert wait_until(lambda: len(cdn_ranges(hf, WEIGHTS)) == 2)
    assert sorted(cdn_ranges(hf, WEIGHTS)) == [f"bytes=0-{BLOCK - 1}", block_range(5)]
    hf.corrupt.add(hashlib.sha256(WEIGHTS).hexdigest())  # the CDN flips a byte of block 20
    with pytest.raises(OSError):
        read_block(mountpoint / "model.safetensors", 20)
    assert "block 20 of model.safetensors failed verification" in mounter.log_text()
    assert read_block(mountpoint / "model.safetensors", 3) == WEIGHTS[3 * BLOCK :][:1000]
    # The CDN redirect is remembered: one trip to the hub for all of the file's blocks.
    assert len([r for r in hf.seen("api") if r.path.endswith("/model.safetensors")]) == 1


# Exit 0 if every tensor of the safetensors file argv[1] equals argv[2]'s, read with safe_open.
SAFE_OPEN_EQUALS = """
import sys
import numpy as np
from safetensors import safe_open
with safe_open(sys.argv[1], "numpy") as got, safe_open(sys.argv[2], "numpy") as want:
    assert sorted(got.keys()) == sorted(want.keys())
    for name in want.keys():
        assert np.array_equal(got.get_tensor(name), want.get_tensor(name)), name
"""


def test_a_hub_model_is_read_tensor_by_tensor_from_the_cdn(
    hf: FakeHub, mounter: Mounter, tmp_path: Path
) -> None:
    rng = np.random.default_rng(12)
    tensors = {f"t{n}": rng.standard_normal(1_200_000, dtype=np.float32) for n in range(3)}
    weights = tmp_path / "weights.safetensors"
    save_file(tensors, weights)
    files = {"config.json": FILES["config.json"], "model.safetensors": weights.read_bytes()}
    hf.add_repo("org/model", {**files, MANIFEST_NAME: local_manifest(tmp_path, files)})
    mountpoint, _ = mounter.mount("hf://org/model")
    data = files["model.safetensors"]
    header = 8 + int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8:header])["t1"]["data_offsets"]
    start, stop = header + begin, header + end
    # A loader in tensor t1 (past what the kernel reads ahead on its own) gets all of its
    # blocks from the CDN, and nothing of the other tensors; the header's block came at open.
    descriptor = os.open(mountpoint / "model.safetensors", os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
        part = ENTERED_BYTES + 16 * 1024
        assert stop - start > part
        assert os.pread(descriptor, part, start) == data[start : start + part]
    finally:
        os.close(descriptor)
    wanted = {block_range(index) for index in range(start // BLOCK, (stop - 1) // BLOCK + 1)}
    assert wait_until(lambda: wanted <= set(cdn_ranges(hf, data)))
    assert set(cdn_ranges(hf, data)) == wanted | {block_range(0)}
    # Loaded through a memory map, as safe_open does, in a process of its own: a page fault
    # holds the GIL, and this process serves the fake hub.
    loaded = subprocess.run(
        [sys.executable, "-c", SAFE_OPEN_EQUALS, str(mountpoint / "model.safetensors"), weights],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]


def test_a_committed_manifest_must_match_the_hubs_digest(
    hf: FakeHub, mounter: Mounter, tmp_path: Path
) -> None:
    raw = local_manifest(tmp_path, FILES)
    hf.add_repo("org/model", {**FILES, MANIFEST_NAME: raw})
    hf.corrupt.add(hashlib.sha256(raw).hexdigest())
    _, refused = mounter.mount("hf://org/model", expect_ok=False)
    one_line_error(refused, 5, "does not match the hub's git-sha1")


def test_manifest_build_from_the_hub_then_a_lazy_mount(
    hf: FakeHub, mounter: Mounter, tmp_path: Path
) -> None:
    hf.add_repo("org/model", FILES)
    output = tmp_path / "org-model.json"
    built = lazyfs("manifest", "build", "hf://org/model", "--block-size", "64K", "-o", output)
    assert built.returncode == 0, built.stderr
    assert "manifest sha256:" in built.stdout
    # The same bytes as publishing the files locally: the hub's copy was checked end to end.
    assert output.read_bytes() == local_manifest(tmp_path, FILES)
    streamed = len(cdn_ranges(hf, WEIGHTS))
    # --manifest also takes a URL (fetched without the hub's token: it is not the hub).
    raw = output.read_bytes()
    hf.blobs[hashlib.sha256(raw).hexdigest()] = raw
    url = f"{hf.cdn_base}/manifests/{hashlib.sha256(raw).hexdigest()}?X-Amz-Signature=s"
    mountpoint, _ = mounter.mount("hf://org/model", "--manifest", url)
    assert read_block(mountpoint / "model.safetensors", 7) == WEIGHTS[7 * BLOCK :][:1000]
    assert wait_until(lambda: len(cdn_ranges(hf, WEIGHTS)) == streamed + 2)
    assert sorted(cdn_ranges(hf, WEIGHTS)[streamed:]) == [f"bytes=0-{BLOCK - 1}", block_range(7)]
    assert_same_files(mountpoint, FILES)


def test_a_manifest_of_another_revision_is_refused(
    hf: FakeHub, mounter: Mounter, tmp_path: Path
) -> None:
    hf.add_repo("org/model", FILES)
    other = local_manifest(tmp_path, {**FILES, "model.safetensors": WEIGHTS[::-1]})
    (tmp_path / "other.json").write_bytes(other)
    _, result = mounter.mount(
        "hf://org/model", "--manifest", str(tmp_path / "other.json"), expect_ok=False
    )
    one_line_error(result, 4, "manifest does not match this revision")
    _, missing = mounter.mount(
        "hf://org/model", "--manifest", str(tmp_path / "nope.json"), expect_ok=False
    )
    one_line_error(missing, 2, "cannot read --manifest")


def test_manifest_build_refuses_corrupt_hub_bytes(hf: FakeHub, tmp_path: Path) -> None:
    hf.add_repo("org/model", FILES)
    hf.corrupt.add(hashlib.sha256(FILES["nested/dir/extra.bin"]).hexdigest())
    output = tmp_path / "m.json"
    result = lazyfs("manifest", "build", "hf://org/model", "-o", output)
    one_line_error(result, 5, "nested/dir/extra.bin from")
    assert not output.exists()
    one_line_error(lazyfs("manifest", "build", "hf://org/model"), 2, "needs -o FILE")


def test_status_and_prefetch_of_a_hub_mount(hf: FakeHub, mounter: Mounter) -> None:
    hf.add_repo("org/model", FILES)
    mountpoint, _ = mounter.mount("hf://org/model")
    shown = lazyfs("status", mountpoint)
    assert shown.returncode == 0, shown.stderr
    assert "  0%" in shown.stdout and "verified whole on first read, by sha256" in shown.stdout
    fetched = lazyfs("prefetch", mountpoint)
    assert fetched.returncode == 0, fetched.stderr
    report = json.loads(lazyfs("status", mountpoint, "--json").stdout)
    assert all(item["cached_bytes"] == item["size"] for item in report["files"])
    assert not [item for item in report["files"] if "verify_whole" in item]
    before = len(hf.seen("cdn")) + len(hf.seen("api"))
    assert_same_files(mountpoint, FILES)
    assert len(hf.seen("cdn")) + len(hf.seen("api")) == before


def test_manifest_option_on_a_published_origin(mounter: Mounter, tmp_path: Path) -> None:
    """--manifest works for http:// origins too: the given manifest replaces the origin's."""
    root = tmp_path / "origin"
    local_manifest(tmp_path, FILES)
    (tmp_path / "published").rename(root)
    manifest = root / MANIFEST_NAME
    kept = tmp_path / "kept.json"
    manifest.rename(kept)
    origin = start_lazyfs_origin(root, tmp_path / "serve")
    try:
        _, refused = mounter.mount(origin.url, expect_ok=False)
        one_line_error(refused, 4, "no manifest at")
        pin = hashlib.sha256(kept.read_bytes()).hexdigest()
        mountpoint, _ = mounter.mount(origin.url, "--manifest", str(kept), "--manifest-sha256", pin)
        assert_same_files(mountpoint, FILES)
        _, wrong = mounter.mount(
            origin.url, "--manifest", str(kept), "--manifest-sha256", "0" * 64, expect_ok=False
        )
        one_line_error(wrong, 7, "does not match --manifest-sha256")
    finally:
        origin.stop()


def test_whole_file_fetches_are_counted_once(hf: FakeHub, mounter: Mounter) -> None:
    """Status and metrics count every byte from the hub, also those streamed to verify a
    file whole; a remount re-checks from the cache and fetches (and counts) nothing."""
    hf.add_repo("org/model", FILES)
    port = free_port()
    metrics = ("--metrics", f"127.0.0.1:{port}")
    mountpoint, _ = mounter.mount("hf://org/model", *metrics)
    assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS
    assert (mountpoint / "config.json").read_bytes() == FILES["config.json"]
    fetched = len(WEIGHTS) + len(FILES["config.json"])
    report = json.loads(lazyfs("status", mountpoint, "--json").stdout)
    assert (report["bytes_fetched"], report["blocks_fetched"]) == (fetched, 2)
    assert report["fetches_in_flight"] == 0
    samples = scrape(port)
    assert samples["lazyfs_bytes_fetched_total"] == fetched
    assert samples["lazyfs_blocks_fetched_total"] == 2
    assert samples["lazyfs_fetch_seconds_count"] == 2
    assert samples["lazyfs_fetches_in_flight"] == 0
    mounter.unmount(mountpoint)

    mountpoint, _ = mounter.mount("hf://org/model", *metrics, mountpoint=mountpoint)
    assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS
    report = json.loads(lazyfs("status", mountpoint, "--json").stdout)
    assert (report["bytes_fetched"], report["blocks_fetched"]) == (0, 0)
    assert scrape(port)["lazyfs_bytes_fetched_total"] == 0


# Offline: a kept listing when the hub is unreachable or HF_HUB_OFFLINE is set


def listings_kept(mounter: Mounter) -> list[Path]:
    return sorted((mounter.cache_dir() / "listings").glob("*.json"))


@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_a_branch_remounts_from_its_kept_listing_with_the_hub_stopped(
    mounter: Mounter, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with fake_hub(kind) as hub:
        monkeypatch.setenv("HF_ENDPOINT" if kind == "hf" else "MODELSCOPE_ENDPOINT", hub.endpoint)
        repo = hub.add_repo("org/model", FILES)
        commit = repo.branches["main" if kind == "hf" else "master"]
        mountpoint, _ = mounter.mount(f"{kind}://org/model")
        read = {path: data for path, data in FILES.items() if path != "nested/dir/extra.bin"}
        for path, data in read.items():
            assert (mountpoint / path).read_bytes() == data
        mounter.unmount(mountpoint)
    # The hub is gone: its port refuses connections (asked twice, not four times: it is down).
    again, _ = mounter.mount(f"{kind}://org/model", "--retries", "2")
    log = mounter.log_text()
    assert log.count("mounted offline") == 1
    assert f"mounted offline, from the listing of commit {commit} resolved " in log
    for path, data in read.items():
        assert (again / path).read_bytes() == data
    report = json.loads(lazyfs("status", again, "--json").stdout)
    assert report["offline"].startswith(f"from the listing of commit {commit}")
    assert "unreachable" in report["offline"]
    # Every byte came from the cache: nothing fetched, nothing even tried.
    assert (report["bytes_fetched"], report["fetch_retries"], report["fetch_errors"]) == (0, 0, 0)
    # A file never read asks the hub (it may be back), and fails with EIO; the mount stays up.
    with pytest.raises(OSError) as failed:
        (again / "nested/dir/extra.bin").read_bytes()
    assert failed.value.errno == errno.EIO
    assert "read of nested/dir/extra.bin" in mounter.log_text()
    assert (again / "config.json").read_bytes() == FILES["config.json"]
    assert f"offline: from the listing of commit {commit}" in lazyfs("status", again).stdout


def test_hf_hub_offline_mounts_with_zero_requests_and_keeps_block_mode(
    hf: FakeHub, mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = local_manifest(tmp_path, FILES)
    repo = hf.add_repo("org/model", {**FILES, MANIFEST_NAME: raw})
    commit = repo.branches["main"]
    mountpoint, _ = mounter.mount("hf://org/model")
    assert read_block(mountpoint / "model.safetensors", 5) == WEIGHTS[5 * BLOCK :][:1000]
    assert (mountpoint / "config.json").read_bytes() == FILES["config.json"]
    mounter.unmount(mountpoint)
    hf.push(repo, {**FILES, "README.md": b"# moved on\n"})  # the branch moves meanwhile
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(hf.requests)
    again, _ = mounter.mount("hf://org/model")
    assert f"commit {commit} resolved" in mounter.log_text()
    assert "(HF_HUB_OFFLINE is set)" in mounter.log_text()
    assert read_block(again / "model.safetensors", 5) == WEIGHTS[5 * BLOCK :][:1000]
    assert (again / "config.json").read_bytes() == FILES["config.json"]
    assert (again / "README.md").stat().st_size == len(FILES["README.md"])
    # A block never fetched: EIO and a line saying why; the mount stays up.
    with pytest.raises(OSError) as failed:
        read_block(again / "model.safetensors", 20)
    assert failed.value.errno == errno.EIO
    assert "are not in the cache, and HF_HUB_OFFLINE is set: the hub is not asked" in (
        mounter.log_text()
    )
    assert read_block(again / "model.safetensors", 5) == WEIGHTS[5 * BLOCK :][:1000]
    assert len(hf.requests) == asked


def test_offline_without_a_good_kept_listing_is_one_line(
    hf: FakeHub, mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf.add_repo("org/model", FILES)
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    _, never = mounter.mount("hf://org/model", expect_ok=False)
    one_line_error(never, 3, "HF_HUB_OFFLINE is set and no listing of this revision is cached")
    assert not hf.requests
    monkeypatch.delenv("HF_HUB_OFFLINE")
    mountpoint, _ = mounter.mount("hf://org/model")
    mounter.unmount(mountpoint)
    kept = listings_kept(mounter)
    assert len(kept) == 2  # under "main" and under the commit
    for path in kept:
        path.write_bytes(path.read_bytes()[:-20])  # torn, as by a full disk
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, damaged = mounter.mount("hf://org/model", expect_ok=False)
    one_line_error(damaged, 3, "no listing of this revision is cached")
    assert "ignoring the damaged cached listing of hf://org/model@main" in mounter.log_text()
    # Online, a damaged listing is never read: the mount resolves and keeps a good one.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    mountpoint, _ = mounter.mount("hf://org/model")
    assert_same_files(mountpoint, FILES)
    mounter.unmount(mountpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mounter.mount("hf://org/model", mountpoint=mountpoint)
    assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS


def test_a_hub_path_mounts_one_folder_as_hffilesystem_names_it(
    hf: FakeHub, mounter: Mounter
) -> None:
    hf.add_repo("org/model", FILES, dataset=True)
    mountpoint, _ = mounter.mount("hf://datasets/org/model@main/nested")
    assert_same_files(mountpoint, {"dir/extra.bin": FILES["nested/dir/extra.bin"]})
