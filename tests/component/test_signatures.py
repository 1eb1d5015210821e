"""Signature verification (lazyfs.sources.signatures) against signatures made by the real
model_signing library: what verifies, and the one-line refusal of everything else."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from lazyfs.core.manifest import MANIFEST_NAME
from lazyfs.errors import SignatureError, UsageError
from lazyfs.sources.signatures import SignatureTrust, check_trust, verify_signature
from tests.signing import (
    make_key_pair,
    make_signing_certificate,
    sign_with_certificate,
    sign_with_key,
)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(b"w" * 1000)
    (root / "sub" / "config.json").write_text("{}\n")
    (root / MANIFEST_NAME).write_text('{"stand-in": "manifest"}\n')
    (root / ".gitattributes").write_text("*.bin filter=lfs\n")
    return root


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_key_signature_yields_every_signed_file(model: Path, tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path / "keys")
    bundle = sign_with_key(model, keys).read_bytes()
    signed = verify_signature(bundle, SignatureTrust(key=keys.public))
    assert signed.method == "files"
    # model_signing leaves Git's files and the signature out.
    assert signed.sha256 == {
        name: sha256_of(model / name) for name in ("weights.bin", "sub/config.json", MANIFEST_NAME)
    }


def test_a_certificate_signature_verifies_against_its_ca_only(model: Path, tmp_path: Path) -> None:
    signer = make_signing_certificate(tmp_path / "pki")
    bundle = sign_with_certificate(model, signer).read_bytes()
    signed = verify_signature(bundle, SignatureTrust(certificates=(signer.ca,)))
    assert signed.sha256["weights.bin"] == sha256_of(model / "weights.bin")
    stranger = make_signing_certificate(tmp_path / "other-pki", "stranger")
    with pytest.raises(SignatureError, match="certificate"):
        verify_signature(bundle, SignatureTrust(certificates=(stranger.ca,)))


def test_a_signature_is_refused_with_one_line_for_any_other_key_or_bytes(
    model: Path, tmp_path: Path
) -> None:
    keys = make_key_pair(tmp_path / "keys")
    bundle = sign_with_key(model, keys).read_bytes()
    other = make_key_pair(tmp_path / "keys", "other")
    document = json.loads(bundle)
    statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    document["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    forged = json.dumps(document).encode()
    # The Sigstore way, offline from the root bundled with sigstore: a key signature has no
    # certificate for it to check.
    keyless = SignatureTrust(identity="publisher@example.com", issuer="https://issuer.example")
    cases = [
        (bundle, SignatureTrust(key=other.public), "Key mismatch"),
        (forged, SignatureTrust(key=keys.public), "does not match"),
        (b"not json", SignatureTrust(key=keys.public), "not a JSON signature bundle"),
        (b"{}", SignatureTrust(key=keys.public), "not a key signature"),
        (bundle, keyless, "Sigstore identity publisher@example.com"),
    ]
    for data, trust, why in cases:
        with pytest.raises(SignatureError) as refused:
            verify_signature(data, trust)
        assert why in str(refused.value) and "\n" not in str(refused.value)


def test_trust_options_are_checked_before_anything_starts(tmp_path: Path) -> None:
    keys = make_key_pair(tmp_path / "keys")
    signer = make_signing_certificate(tmp_path / "pki")
    check_trust(SignatureTrust(key=keys.public))
    check_trust(SignatureTrust(certificates=(signer.ca, signer.certificate)))
    check_trust(SignatureTrust(identity="a@example.com", issuer="https://issuer.example"))
    refused = [
        (SignatureTrust(), "name one way"),
        (SignatureTrust(key=keys.public, certificates=(signer.ca,)), "name one way"),
        (SignatureTrust(identity="a@example.com"), "go together"),
        (SignatureTrust(key=keys.public, trust_root=keys.public), "is for --signature-identity"),
        (SignatureTrust(key=tmp_path / "missing.pub"), "cannot read --signature-key"),
        (SignatureTrust(key=keys.private), "--signature-key"),
        (SignatureTrust(certificates=(keys.public,)), "--signature-certificate"),
    ]
    for trust, why in refused:
        with pytest.raises(UsageError, match=why):
            check_trust(trust)
