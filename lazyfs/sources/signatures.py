"""Verifying a repository's OpenSSF model signature (``model.sig``), offline.

The cryptography is model_signing's own, the reference implementation of the format, so a
signature ``model_signing verify`` accepts is the one lazyfs accepts. Its public ``verify``
hashes every file of a local copy of the model, which is what a lazy mount exists to avoid; its
verifier classes check the signature alone and return the signed digests, and that is the part
used here (pinned to the 1.1 series in pyproject.toml, as those classes sit in a private module).

Three ways to trust a signature, as ``model_signing verify`` offers:
- a public key (``--signature-key``): the signature's ECDSA over its DSSE envelope;
- a certificate chain (``--signature-certificate``): the signing certificate must chain to it;
- a Sigstore identity (``--signature-identity`` and ``--signature-issuer``): the Fulcio
  certificate, its SCT, its transparency log entry and the identity, checked against a trust
  root on disk (Sigstore's production root as the sigstore package ships it, or
  ``--signature-trust-root``) without asking any server.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyfs.core.signedfiles import SignedFiles
from lazyfs.errors import SignatureError, UsageError

log = logging.getLogger(__name__)

_TRUSTED_ROOT_TYPE = "application/vnd.dev.sigstore.trustedroot+json"
_CLIENT_TRUST_CONFIG_TYPE = "application/vnd.dev.sigstore.clienttrustconfig"


@dataclass(frozen=True)
class SignatureTrust:
    """Whom a signed mount trusts; exactly one way is set (``check_trust`` says so)."""

    key: Path | None = None
    certificates: tuple[Path, ...] = ()
    identity: str | None = None
    issuer: str | None = None
    # A Sigstore trust configuration or trusted root (JSON); None: Sigstore's production root.
    trust_root: Path | None = None
    # Where the signature is (a file or URL); None: model.sig in the repository.
    location: str | None = None

    def describe(self) -> str:
        if self.key is not None:
            return f"key {self.key}"
        if self.certificates:
            return "certificate chain " + ", ".join(map(str, self.certificates))
        return f"Sigstore identity {self.identity} (issuer {self.issuer})"


def check_trust(trust: SignatureTrust) -> None:
    """Refuse, with one line, options that name no way or two ways to trust a signature, and
    key or certificate files that cannot be read or are not what they claim to be."""
    ways = [
        trust.key is not None,
        bool(trust.certificates),
        trust.identity is not None or trust.issuer is not None,
    ]
    if sum(ways) != 1:
        raise UsageError(
            "name one way to trust the signature: --signature-key, --signature-certificate, "
            "or --signature-identity with --signature-issuer"
        )
    if (trust.identity is None) != (trust.issuer is None):
        raise UsageError("--signature-identity and --signature-issuer go together")
    if trust.identity == "" or trust.issuer == "":
        raise UsageError("--signature-identity and --signature-issuer must not be empty")
    if trust.trust_root is not None and trust.identity is None:
        raise UsageError("--signature-trust-root is for --signature-identity")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if trust.key is not None:
        key = _load(trust.key, "--signature-key", serialization.load_pem_public_key)
        # The curves model_signing signs with.
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
            "secp256r1",
            "secp384r1",
            "secp521r1",
        ):
            raise UsageError(f"--signature-key {trust.key}: not a P-256, P-384 or P-521 public key")
    for path in trust.certificates:
        _load(path, "--signature-certificate", x509.load_pem_x509_certificates)
    if trust.trust_root is not None:
        _load(trust.trust_root, "--signature-trust-root", _trusted_root)


def _load(path: Path, option: str, parse: Callable[[bytes], Any]) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {option} {path}: {exc.strerror}") from None
    try:
        return parse(data)
    except Exception as exc:  # whatever the parser raises, the file is not what was asked for
        raise UsageError(f"{option} {path}: {_reason(exc) or 'not PEM'}") from None


def _trusted_root(data: bytes) -> Any:
    """The Sigstore trusted root in ``data``: a client trust configuration (what
    ``model_signing --trust_config`` and ``sigstore --trust-config`` read), or the bare trusted
    root (``trusted_root.json``, what a Sigstore deployment publishes and ``cosign
    --trusted-root`` reads). Verifying needs the trusted root alone."""
    from sigstore.models import ClientTrustConfig, TrustedRoot
    from sigstore_models.trustroot.v1 import TrustedRoot as TrustedRootDocument

    try:
        document = json.loads(data)
    except ValueError:
        raise ValueError("not JSON") from None
    media_type = str(document.get("mediaType")) if isinstance(document, dict) else ""
    if media_type.startswith(_TRUSTED_ROOT_TYPE):
        return TrustedRoot(TrustedRootDocument.from_json(data))
    if media_type.startswith(_CLIENT_TRUST_CONFIG_TYPE):
        return ClientTrustConfig.from_json(data.decode()).trusted_root
    raise ValueError(f"not a Sigstore trust configuration or trusted root (mediaType {media_type})")


def _production_trusted_root() -> Any:
    """Sigstore's production trusted root as the installed sigstore package ships it.

    Not ``ClientTrustConfig.production(offline=True)``: offline, that takes whatever
    ``trusted_root.json`` the user's sigstore cache holds (~/.cache/sigstore-python), unverified,
    and creates that directory first, so what a mount trusts would depend on what an earlier
    program left there, and a read-only home would fail the mount."""
    from sigstore._internal.tuf import DEFAULT_TUF_URL
    from sigstore._utils import read_embedded

    return _trusted_root(read_embedded("trusted_root.json", DEFAULT_TUF_URL))


def verify_signature(bundle: bytes, trust: SignatureTrust) -> SignedFiles:
    """The files ``bundle`` signs, once its cryptography checks out with ``trust``; else
    ``SignatureError`` saying why, in one line."""
    try:
        verifier, signature_type = _verifier(trust)
    except Exception as exc:  # trust material gone or unusable since the command checked it
        raise SignatureError(
            f"cannot check signatures with {trust.describe()}: {_reason(exc) or type(exc).__name__}"
        ) from None
    with tempfile.TemporaryDirectory(prefix="lazyfs-signature-") as folder:
        # model_signing reads signatures from files (and mends older layouts as it does).
        path = Path(folder, "model.sig")
        path.write_bytes(bundle)
        try:
            signature = signature_type.read(path)
            signed = verifier.verify(signature)
        except Exception as exc:  # any failure of an untrusted signature is a refusal
            raise SignatureError(
                f"the signature does not verify with {trust.describe()}: {_why(exc, trust)}"
            ) from None
    serialization = signed.serialization_type
    digests: dict[str, str] = {}
    for descriptor in signed.resource_descriptors():
        if descriptor.digest.algorithm != "sha256":
            raise SignatureError(
                f"the signature hashes {descriptor.identifier} with "
                f"{descriptor.digest.algorithm}; lazyfs checks sha256"
            )
        digests[str(descriptor.identifier)] = descriptor.digest.digest_hex
    return SignedFiles(signed.model_name, str(serialization.get("method")), digests)


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _why(exc: Exception, trust: SignatureTrust) -> str:
    """A failure of model_signing or sigstore, said for a user."""
    from cryptography.exceptions import InvalidSignature

    if isinstance(exc, InvalidSignature):
        return "the signature does not match"
    if isinstance(exc, json.JSONDecodeError):
        return "not a JSON signature bundle"
    if isinstance(exc, (KeyError, AttributeError, TypeError, IndexError)):
        # The bundle lacks what this way of signing puts in it (a key hint, a certificate).
        kind = "key" if trust.key else "certificate" if trust.certificates else "Sigstore"
        return f"not a {kind} signature (model_signing sign {kind.lower()})"
    return _reason(exc) or type(exc).__name__


def _verifier(trust: SignatureTrust) -> tuple[Any, Any]:
    # Imported here, each way alone: model_signing and sigstore are heavy, and only signed
    # mounts need them.
    from model_signing._signing import sign_sigstore_pb

    if trust.key is not None:
        from model_signing._signing import sign_ec_key

        return sign_ec_key.Verifier(trust.key), sign_sigstore_pb.Signature
    if trust.certificates:
        from model_signing._signing import sign_certificate

        return sign_certificate.Verifier(list(trust.certificates)), sign_sigstore_pb.Signature
    assert trust.identity is not None and trust.issuer is not None
    return _sigstore_verifier(trust.identity, trust.issuer, trust.trust_root)


def _sigstore_verifier(identity: str, issuer: str, trust_root: Path | None) -> tuple[Any, Any]:
    from model_signing._signing import sign_sigstore, signing
    from sigstore.verify import Verifier, policy

    if trust_root is None:
        trusted_root = _production_trusted_root()
    else:
        trusted_root = _load(trust_root, "--signature-trust-root", _trusted_root)
    verifier = Verifier(trusted_root=trusted_root)
    identity_policy = policy.Identity(identity=identity, issuer=issuer)

    class OfflineSigstoreVerifier(signing.Verifier):
        def _verify_signed_content(self, signature: signing.Signature) -> tuple[str, bytes]:
            assert isinstance(signature, sign_sigstore.Signature)
            return verifier.verify_dsse(bundle=signature.bundle, policy=identity_policy)

    return OfflineSigstoreVerifier(), sign_sigstore.Signature
