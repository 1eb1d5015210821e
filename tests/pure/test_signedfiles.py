"""What a signature must cover for a signed mount (lazyfs.core.signedfiles): the manifest's
exact bytes, and every other signed file with its manifest sha256."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lazyfs.core.manifest import MANIFEST_NAME, FileCheck, FileEntry, Manifest, parse_manifest
from lazyfs.core.signedfiles import (
    SIGNATURE_NAME,
    SignedFiles,
    check_signed_manifest,
    sign_whole_files,
)
from lazyfs.errors import ManifestError, SignatureError
from tests.pure.test_manifest import digests


def signature_of(raw: bytes, manifest: Manifest, leave_out: set[str]) -> SignedFiles:
    """What model_signing signs for a published directory: each file's sha256, the
    manifest among them, ``leave_out`` (its ignored paths) not."""
    files = {entry.path: entry.sha256 for entry in manifest.files if entry.path not in leave_out}
    files[MANIFEST_NAME] = hashlib.sha256(raw).hexdigest()
    return SignedFiles("model", "files", files)


paths = st.lists(
    st.sampled_from(
        ["config.json", "model.safetensors", "sub/a.bin", "sub/b.bin", ".gitattributes"]
    ),
    unique=True,
    max_size=5,
)


@st.composite
def signed_repositories(draw: st.DrawFn) -> tuple[bytes, SignedFiles]:
    files = [FileEntry(path, 0, False, draw(digests), ()) for path in draw(paths)]
    manifest = Manifest(65536, tuple(sorted(files, key=lambda entry: entry.path)))
    raw = manifest.to_json()
    parse_manifest(raw)
    listed = [entry.path for entry in manifest.files]
    leave_out = set(draw(st.lists(st.sampled_from(listed), unique=True))) if listed else set()
    return raw, signature_of(raw, manifest, leave_out)


@given(signed_repositories())
def test_a_signature_over_the_manifest_and_its_files_covers_it(
    repository: tuple[bytes, SignedFiles],
) -> None:
    raw, signed = repository
    check_signed_manifest(signed, raw)


@given(signed_repositories(), st.sampled_from([b"\n", b" ", b"\r\n\t"]))
def test_a_manifest_changed_after_signing_is_refused(
    repository: tuple[bytes, SignedFiles], whitespace: bytes
) -> None:
    raw, signed = repository
    # The same manifest with other whitespace parses the same, but is not the signed file.
    changed = raw + whitespace
    assert parse_manifest(changed) == parse_manifest(raw)
    with pytest.raises(SignatureError, match="rebuilt after signing"):
        check_signed_manifest(signed, changed)


@given(signed_repositories(), digests)
def test_a_signed_file_with_another_digest_in_the_manifest_is_refused(
    repository: tuple[bytes, SignedFiles], other: str
) -> None:
    raw, signed = repository
    signed_paths = sorted(set(signed.sha256) - {MANIFEST_NAME})
    assume(signed_paths and signed.sha256[signed_paths[0]] != other)
    changed = {**signed.sha256, signed_paths[0]: other}
    with pytest.raises(SignatureError, match="not the signed one"):
        check_signed_manifest(SignedFiles("model", "files", changed), raw)


@given(signed_repositories(), digests)
def test_a_signed_file_the_manifest_lacks_is_refused(
    repository: tuple[bytes, SignedFiles], digest: str
) -> None:
    raw, signed = repository
    added = {**signed.sha256, "added-after-the-manifest.bin": digest}
    with pytest.raises(SignatureError, match="signed but not in"):
        check_signed_manifest(SignedFiles("model", "files", added), raw)


def test_a_signature_without_the_manifest_or_by_shards_is_refused() -> None:
    raw = Manifest(65536, ()).to_json()
    parse_manifest(raw)
    with pytest.raises(SignatureError, match=f"does not cover {MANIFEST_NAME}"):
        check_signed_manifest(SignedFiles("model", "files", {}), raw)
    by_shards = SignedFiles("model", "shards", {MANIFEST_NAME: hashlib.sha256(raw).hexdigest()})
    with pytest.raises(SignatureError, match="file by file"):
        check_signed_manifest(by_shards, raw)


def test_a_signature_error_is_a_manifest_error_exit_4() -> None:
    assert issubclass(SignatureError, ManifestError)
    assert SignatureError.exit_code == 4


def whole_file(path: str, check: FileCheck) -> FileEntry:
    """An entry of a hub revision without a manifest: verified whole against ``check``."""
    return FileEntry(
        path, 10, False, check.digest if check.algorithm == "sha256" else "", (), check
    )


@given(digests, digests, digests)
def test_a_signature_makes_the_digest_of_every_signed_file_served_whole(
    weights: str, config: str, listed_blob: str
) -> None:
    served = Manifest(
        65536,
        (
            whole_file(".gitattributes", FileCheck("git-sha1", listed_blob[:40])),
            whole_file("config.json", FileCheck("git-sha1", listed_blob[:40])),
            whole_file("model.safetensors", FileCheck("sha256", weights)),
            whole_file(SIGNATURE_NAME, FileCheck("git-sha1", listed_blob[:40])),
        ),
    )
    signed = SignedFiles("model", "files", {"config.json": config, "model.safetensors": weights})
    files = {entry.path: entry for entry in sign_whole_files(signed, served, "hf://o/m").files}
    # The Git file is checked against what was signed, not the hub's blob id.
    assert files["config.json"].check == FileCheck("sha256", config)
    assert files["config.json"].sha256 == config
    assert files["model.safetensors"].check == FileCheck("sha256", weights)
    # What the signer leaves out stays as the listing has it.
    assert files[".gitattributes"] == served.files[0]
    assert files[SIGNATURE_NAME] == served.files[3]


@given(digests, digests)
def test_a_revision_that_lacks_a_signed_file_or_lists_another_digest_is_refused(
    weights: str, other: str
) -> None:
    assume(weights != other)
    served = Manifest(65536, (whole_file("model.safetensors", FileCheck("sha256", weights)),))
    for files, why in (
        ({"model.safetensors": other}, "the signature says"),
        ({"model.safetensors": weights, "config.json": other}, "config.json is signed but not"),
    ):
        with pytest.raises(SignatureError, match=why):
            sign_whole_files(SignedFiles("model", "files", files), served, "hf://o/m")
    with pytest.raises(SignatureError, match="file by file"):
        sign_whole_files(SignedFiles("model", "shards", {}), served, "hf://o/m")
