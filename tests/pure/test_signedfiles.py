"""What a signature must cover for a signed mount (lazyfs.core.signedfiles): the manifest's
exact bytes, and every other signed file with its manifest sha256."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lazyfs.core.manifest import MANIFEST_NAME, FileEntry, Manifest, parse_manifest
from lazyfs.core.signedfiles import SignedFiles, check_signed_manifest
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
