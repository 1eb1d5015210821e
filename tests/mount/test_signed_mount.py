"""Signed repositories through real mounts: a repository signed with the real model_signing
library (OpenSSF model signing) mounts and reads; a manifest rebuilt after signing, a file added,
another key or no signature refuse the mount with one line and exit 4."""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import pytest

from lazyfs.core.manifest import MANIFEST_NAME
from lazyfs.core.signedfiles import SIGNATURE_NAME
from tests.fakehubs import FakeHub, fake_hub
from tests.fakesigstore import make_fake_sigstore, sign_keyless
from tests.mounts import Mounter, publish
from tests.origins import Origin
from tests.signing import (
    make_key_pair,
    make_signing_certificate,
    sign_with_certificate,
    sign_with_key,
)

WEIGHTS = random.Random(14).randbytes(5 * 64 * 1024 + 99)


def refused(mounter: Mounter, url: str, *options: str, why: str) -> None:
    _, result = mounter.mount(
        url, *options, cache_dir=mounter.cache_dir("refused"), expect_ok=False
    )
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0], result.stderr


# One origin is enough: the signature is checked in the daemon, whoever serves it.
@pytest.mark.parametrize("origin", ["lazyfs"], indirect=True)
def test_a_signed_repository_mounts_and_anything_else_is_refused(
    origin: Origin, mounter: Mounter, tmp_path: Path
) -> None:
    (origin.root / "model.safetensors").write_bytes(WEIGHTS)
    (origin.root / "config.json").write_text('{"hidden_size": 64}\n')
    (origin.root / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    publish(origin.root)
    keys = make_key_pair(tmp_path / "keys")
    sign_with_key(origin.root, keys)
    key = ("--signature-key", str(keys.public))
    mountpoint, _ = mounter.mount(origin.url, *key)
    assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS
    # Git's files are left out of the signature, and covered through the signed manifest.
    assert (mountpoint / ".gitattributes").read_text() == "*.safetensors filter=lfs\n"
    assert "signature verified with key" in mounter.log_text()

    other = make_key_pair(tmp_path / "keys", "other")
    refused(mounter, origin.url, "--signature-key", str(other.public), why="Key mismatch")
    # Rebuilt after signing: a file added, and other block digests.
    (origin.root / "extra.txt").write_text("added after signing\n")
    publish(origin.root, block_size="128K")
    refused(mounter, origin.url, *key, why="rebuilt after signing")
    (origin.root / SIGNATURE_NAME).unlink()
    refused(mounter, origin.url, *key, why=f"no signature at {origin.url}/{SIGNATURE_NAME}")
    # With the origin down, the first mount's cache still has the manifest and signature it
    # checked: they are checked again, and the verified blocks are served.
    origin.stop()
    mountpoint, _ = mounter.mount(origin.url, *key)
    assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS
    assert "checking the kept copy" in mounter.log_text()


@pytest.mark.parametrize("origin", ["lazyfs"], indirect=True)
def test_a_certificate_signature_kept_beside_the_repository_mounts_with_its_ca(
    origin: Origin, mounter: Mounter, tmp_path: Path
) -> None:
    (origin.root / "model.safetensors").write_bytes(WEIGHTS)
    publish(origin.root)
    signer = make_signing_certificate(tmp_path / "pki")
    # Signed on the publisher's side; the signature travels apart from the repository.
    signature = shutil.move(sign_with_certificate(origin.root, signer), tmp_path / "model.sig")
    trusted = ("--signature-certificate", str(signer.ca), "--signature", str(signature))
    mountpoint, _ = mounter.mount(origin.url, *trusted)
    assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS
    assert "signature verified with certificate chain" in mounter.log_text()


@pytest.mark.parametrize("origin", ["lazyfs"], indirect=True)
def test_a_keyless_signed_repository_mounts_with_its_private_sigstore_trust_root(
    origin: Origin, mounter: Mounter, tmp_path: Path
) -> None:
    (origin.root / "model.safetensors").write_bytes(WEIGHTS)
    publish(origin.root)
    sigstore = make_fake_sigstore(tmp_path / "sigstore")
    sign_keyless(origin.root, sigstore, "publisher@example.com", "https://issuer.example")
    keyless = (
        "--signature-identity",
        "publisher@example.com",
        "--signature-issuer",
        "https://issuer.example",
        "--signature-trust-root",
        str(sigstore.trust_config),
    )
    mountpoint, _ = mounter.mount(origin.url, *keyless)
    assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS
    assert "signature verified with Sigstore identity publisher@example.com" in (mounter.log_text())


def test_a_hub_repository_with_a_model_sig_mounts_the_same_way(
    mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = tmp_path / "published"
    published.mkdir()
    (published / "model.safetensors").write_bytes(WEIGHTS)
    (published / "README.md").write_text("# signed\n")
    publish(published)
    keys = make_key_pair(tmp_path / "keys")
    sign_with_key(published, keys)
    files = {
        str(path.relative_to(published)): path.read_bytes()
        for path in published.rglob("*")
        if path.is_file()
    }
    assert {MANIFEST_NAME, SIGNATURE_NAME} <= files.keys()
    hub: FakeHub
    with fake_hub("hf") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        hub.add_repo("org/signed", files)
        mountpoint, _ = mounter.mount("hf://org/signed", "--signature-key", str(keys.public))
        assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS
        assert SIGNATURE_NAME in os.listdir(mountpoint)
        # A hub serving other bytes of the same size for a Git file, and listing them as
        # such: the signed manifest, not the hub's blob id, decides, and nothing is served.
        hub.add_repo("org/altered", {**files, "README.md": b"# signet\n"})
        fresh = mounter.cache_dir("altered")
        mountpoint, _ = mounter.mount(
            "hf://org/altered", "--signature-key", str(keys.public), cache_dir=fresh
        )
        with pytest.raises(OSError) as failed:
            (mountpoint / "README.md").read_bytes()
        assert failed.value.errno == errno.EIO
        assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS
        # Offline, the kept listing, manifest and signature: checked again, the hub not asked.
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        asked = len(hub.seen("api")) + len(hub.seen("cdn"))
        mountpoint, _ = mounter.mount("hf://org/signed", "--signature-key", str(keys.public))
        assert (mountpoint / "model.safetensors").read_bytes() == WEIGHTS
        assert len(hub.seen("api")) + len(hub.seen("cdn")) == asked
        monkeypatch.delenv("HF_HUB_OFFLINE")
        unsigned = {path: data for path, data in files.items() if path != SIGNATURE_NAME}
        hub.add_repo("org/unsigned", unsigned)
        refused(
            mounter,
            "hf://org/unsigned",
            "--signature-key",
            str(keys.public),
            why="no signature at",
        )


def test_a_hub_repository_signed_without_a_block_manifest_is_served_file_by_file(
    mounter: Mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a publisher who never heard of lazyfs ships: model_signing's model.sig beside the
    files, no lazyfs-manifest.json. Every signed file is verified whole against its signed
    sha256, the Git ones too."""
    published = tmp_path / "published"
    published.mkdir()
    files = {
        "model.safetensors": WEIGHTS,
        "config.json": b'{"hidden_size": 64}\n',
        "modeling_custom.py": b"def forward(x):\n    return x\n",
    }
    for path, data in files.items():
        (published / path).write_bytes(data)
    keys = make_key_pair(tmp_path / "keys")
    signed = {**files, SIGNATURE_NAME: sign_with_key(published, keys).read_bytes()}
    key = ("--signature-key", str(keys.public))
    with fake_hub("hf") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        hub.add_repo("org/signed", signed)
        mountpoint, _ = mounter.mount("hf://org/signed", *key)
        for path, data in files.items():
            assert (mountpoint / path).read_bytes() == data
        assert "every signed file verified whole" in mounter.log_text()
        # Code of the same size, listed as such by the hub: not the signed bytes, not served.
        altered = b"def forward(x):\n    return 0\n"
        assert len(altered) == len(files["modeling_custom.py"])
        hub.add_repo("org/altered", {**signed, "modeling_custom.py": altered})
        # A cache of its own: the first mount's holds the signed bytes, which it would serve.
        fresh = mounter.cache_dir("altered")
        mountpoint, _ = mounter.mount("hf://org/altered", *key, cache_dir=fresh)
        with pytest.raises(OSError) as failed:
            (mountpoint / "modeling_custom.py").read_bytes()
        assert failed.value.errno == errno.EIO
        assert (mountpoint / "config.json").read_bytes() == files["config.json"]
        lacking = {path: data for path, data in signed.items() if path != "config.json"}
        hub.add_repo("org/lacking", lacking)
        refused(mounter, "hf://org/lacking", *key, why="config.json is signed but not in")
