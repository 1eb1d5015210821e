"""Signature verification (lazyfs.sources.signatures) against signatures made by the real
model_signing library: what verifies, and the one-line refusal of everything else."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from lazyfs.core.manifest import MANIFEST_NAME
from lazyfs.errors import SignatureError, UsageError
from lazyfs.sources.signatures import SignatureTrust, check_trust, verify_signature
from tests.fakesigstore import FakeSigstore, make_fake_sigstore, sign_keyless
from tests.signing import (
    make_key_pair,
    make_signing_certificate,
    sign_with_certificate,
    sign_with_key,
)

IDENTITY = "publisher@example.com"
ISSUER = "https://issuer.example"


@pytest.fixture(scope="module")
def sigstore(tmp_path_factory: pytest.TempPathFactory) -> FakeSigstore:
    return make_fake_sigstore(tmp_path_factory.mktemp("sigstore"))


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


def sigstore_trust(trust_root: Path) -> SignatureTrust:
    return SignatureTrust(identity=IDENTITY, issuer=ISSUER, trust_root=trust_root)


def json_file(folder: Path, document: object) -> Path:
    path = folder / "document.json"
    path.write_text(json.dumps(document))
    return path


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
        (sigstore_trust(keys.public), "--signature-trust-root .*: not JSON"),
        (sigstore_trust(json_file(tmp_path, {"mediaType": "x"})), "not a Sigstore trust"),
    ]
    for trust, why in refused:
        with pytest.raises(UsageError, match=why):
            check_trust(trust)


def keyless(sigstore: FakeSigstore, **changes: Any) -> SignatureTrust:
    trust = {"identity": IDENTITY, "issuer": ISSUER, "trust_root": sigstore.trust_config}
    return SignatureTrust(**(trust | changes))


def refused_with(bundle: bytes, trust: SignatureTrust, why: str) -> None:
    with pytest.raises(SignatureError) as refused:
        verify_signature(bundle, trust)
    assert why in str(refused.value) and "\n" not in str(refused.value), str(refused.value)


def test_a_sigstore_keyless_signature_verifies_offline_against_a_private_trust_root(
    model: Path, tmp_path: Path, sigstore: FakeSigstore
) -> None:
    import model_signing

    signature = sign_keyless(model, sigstore, IDENTITY, ISSUER)
    bundle = signature.read_bytes()
    signed = verify_signature(bundle, keyless(sigstore))
    assert signed.method == "files"
    assert signed.sha256 == {
        name: sha256_of(model / name) for name in ("weights.bin", "sub/config.json", MANIFEST_NAME)
    }
    # The private Sigstore is one model_signing's own `verify sigstore --trust_config` accepts.
    model_signing.verifying.Config().use_sigstore_verifier(
        identity=IDENTITY, oidc_issuer=ISSUER, trust_config=sigstore.trust_config
    ).set_hashing_config(
        model_signing.hashing.Config().set_ignored_paths(paths=[signature.name])
    ).verify(model, signature)
    # The bare trusted root, as a deployment publishes it (trusted_root.json), does as well.
    trusted_root = tmp_path / "trusted_root.json"
    trusted_root.write_text(
        json.dumps(json.loads(sigstore.trust_config.read_text())["trustedRoot"])
    )
    check_trust(keyless(sigstore, trust_root=trusted_root))
    assert verify_signature(bundle, keyless(sigstore, trust_root=trusted_root)) == signed

    elsewhere = make_fake_sigstore(tmp_path / "another-sigstore")
    refused_with(bundle, keyless(sigstore, identity="other@example.com"), "SANs do not match")
    refused_with(bundle, keyless(sigstore, issuer="https://other.example"), "OIDCIssuer")
    refused_with(bundle, keyless(sigstore, trust_root=None), "certificate chain")
    refused_with(bundle, keyless(elsewhere), "certificate chain")


def edited(bundle: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """``bundle`` with its transparency log entry changed by ``edit``."""
    document = json.loads(bundle)
    edit(document["verificationMaterial"]["tlogEntries"][0])
    return json.dumps(document).encode()


def test_a_keyless_signature_whose_log_entry_or_sct_does_not_check_out_is_refused(
    model: Path, sigstore: FakeSigstore
) -> None:
    bundle = sign_keyless(model, sigstore, IDENTITY, ISSUER).read_bytes()

    def later(entry: dict[str, Any]) -> None:
        entry["integratedTime"] = str(int(entry["integratedTime"]) + 1)

    def another_path(entry: dict[str, Any]) -> None:
        entry["inclusionProof"]["hashes"].reverse()

    def another_tree(entry: dict[str, Any]) -> None:
        checkpoint = entry["inclusionProof"]["checkpoint"]
        checkpoint["envelope"] = checkpoint["envelope"].replace("\n6\n", "\n7\n", 1)

    def no_promise(entry: dict[str, Any]) -> None:
        del entry["inclusionPromise"]

    refused_with(edited(bundle, later), keyless(sigstore), "invalid inclusion promise")
    refused_with(edited(bundle, another_path), keyless(sigstore), "inclusion proof")
    refused_with(edited(bundle, another_tree), keyless(sigstore), "checkpoint: invalid signature")
    refused_with(edited(bundle, no_promise), keyless(sigstore), "inclusion promise")
    # A certificate from the trusted CA, with an SCT no trusted CT log made.
    stray = ec.generate_private_key(ec.SECP256R1())
    unlogged = sign_keyless(model, sigstore, IDENTITY, ISSUER, ct_key=stray).read_bytes()
    refused_with(unlogged, keyless(sigstore), "failed to verify SCT")


def test_sigstores_production_root_is_the_one_the_package_ships_not_a_cached_file(
    model: Path, tmp_path: Path, sigstore: FakeSigstore, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = sign_keyless(model, sigstore, IDENTITY, ISSUER).read_bytes()
    production = keyless(sigstore, trust_root=None)
    # sigstore's offline mode reads its cache unverified: a trusted_root.json found there, left
    # by another program or planted, must not become what the mount trusts.
    cache = tmp_path / "xdg-cache"
    planted = cache / "sigstore-python/tuf" / quote("https://tuf-repo-cdn.sigstore.dev", safe="")
    planted.mkdir(parents=True)
    config = json.loads(sigstore.trust_config.read_text())
    (planted / "trusted_root.json").write_text(json.dumps(config["trustedRoot"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    refused_with(bundle, production, "certificate chain")
    # Nor does the check need a writable home (a read-only container).
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/version/cache")
    monkeypatch.setenv("XDG_DATA_HOME", "/proc/version/data")
    refused_with(bundle, production, "certificate chain")
