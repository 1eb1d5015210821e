"""What a verified repository signature vouches for, and whether a manifest agrees with it.

A signature in the OpenSSF model signing format lists the sha256 of every file the publisher
signed. lazyfs serves blocks against its manifest, so a signed mount is as strong as its
signature only if the manifest itself is one of the signed files, byte for byte: then every
block digest is covered. The other signed files must then have the signed digest as their
whole-file sha256 in that manifest; files the signer left out (``.git*``, ``model.sig``) are
still covered through the signed manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

from lazyfs.core.manifest import MANIFEST_NAME, FileCheck, Manifest, parse_manifest
from lazyfs.errors import SignatureError

# The file name publishers sign to and lazyfs fetches from a repository by default.
SIGNATURE_NAME = "model.sig"
# The serialization a signature must use: one digest per whole file. Shard digests cover
# byte ranges that do not line up with the manifest's blocks.
FILES_METHOD = "files"


@dataclass(frozen=True)
class SignedFiles:
    """The content of a signature whose cryptography has been checked."""

    model_name: str
    method: str
    # sha256 hex digest of every signed file, by its path in the repository.
    sha256: Mapping[str, str]


def check_signed_manifest(signed: SignedFiles, raw: bytes) -> None:
    """Raise ``SignatureError`` with one line unless ``signed`` covers the manifest ``raw``:
    its exact bytes are a signed file and every other signed file is in it with its signed
    digest."""
    _check_method(signed)
    listed = signed.sha256.get(MANIFEST_NAME)
    if listed is None:
        raise SignatureError(
            f"the signature does not cover {MANIFEST_NAME} "
            "(build the manifest first, then sign the directory)"
        )
    actual = hashlib.sha256(raw).hexdigest()
    if listed != actual:
        raise SignatureError(
            f"{MANIFEST_NAME} has sha256 {actual[:16]}…, the signature says {listed[:16]}… "
            "(was the manifest rebuilt after signing?)"
        )
    in_manifest = {entry.path: entry.sha256 for entry in parse_manifest(raw).files}
    for path in sorted(signed.sha256):
        if path == MANIFEST_NAME:
            continue
        digest = in_manifest.get(path)
        if digest is None:
            raise SignatureError(f"{path} is signed but not in {MANIFEST_NAME}")
        if digest != signed.sha256[path]:
            raise SignatureError(f"{path}: its sha256 in {MANIFEST_NAME} is not the signed one")


def sign_whole_files(signed: SignedFiles, manifest: Manifest, source: str) -> Manifest:
    """A hub revision without a block manifest, served file by file, under a verified
    signature: every signed file is verified whole against its signed sha256, so a Git file's
    blob id (which a hostile hub could list other bytes under) no longer decides. Files the
    signer leaves out (``.git*``, ``model.sig``) stay verified against the listing. A signed
    file the revision lacks, or lists with another sha256, refuses the mount."""
    _check_method(signed)
    listed = {entry.path for entry in manifest.files}
    missing = sorted(signed.sha256.keys() - listed)
    if missing:
        raise SignatureError(f"{missing[0]} is signed but not in {source}")
    entries = []
    for entry in manifest.files:
        digest = signed.sha256.get(entry.path)
        if digest is None or entry.path == SIGNATURE_NAME:
            entries.append(entry)
            continue
        if entry.check is None:
            raise SignatureError(f"{entry.path}: not served file by file")  # never in this mode
        if entry.check.algorithm == "sha256" and entry.check.digest != digest:
            raise SignatureError(
                f"{entry.path}: {source} lists sha256 {entry.check.digest[:16]}…, "
                f"the signature says {digest[:16]}…"
            )
        entries.append(replace(entry, sha256=digest, check=FileCheck("sha256", digest)))
    return Manifest(manifest.block_size, tuple(entries))


def _check_method(signed: SignedFiles) -> None:
    if signed.method != FILES_METHOD:
        raise SignatureError(
            f"the signature hashes {signed.method!r}; lazyfs checks signatures made "
            f"file by file ({FILES_METHOD!r}, the model_signing default)"
        )
