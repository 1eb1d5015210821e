"""A private Sigstore instance for tests, offline, and keyless signing against it.

``make_fake_sigstore`` makes what a Sigstore deployment is made of, with ``cryptography``: a
Fulcio-like CA (a root and an intermediate), a certificate-transparency log key and a Rekor key,
and writes the client trust configuration (``ClientTrustConfig`` JSON, what
``--signature-trust-root`` and ``model_signing --trust_config`` read) that trusts them.

``sign_keyless`` then signs a directory as ``model_signing sign sigstore`` would against that
deployment, without any server: model_signing hashes the directory and makes its in-toto
statement, and this module plays every service the real signing path talks to:

- Fulcio: an ephemeral P-256 key gets a ten-minute code-signing certificate from the
  intermediate, with the identity as its SAN and the OIDC issuer in Fulcio's extensions
  (1.3.6.1.4.1.57264.1.1 raw, 1.3.6.1.4.1.57264.1.8 as a DER UTF8String);
- the CT log: an SCT over the precertificate (RFC 6962), embedded in that certificate;
- Rekor (v1): a ``dsse`` 0.0.1 entry for the envelope, in a Merkle tree of a few entries (RFC
  6962 tree hashes and inclusion proof), with a checkpoint (a signed note) over the tree's root
  and a signed entry timestamp (the inclusion promise) over the entry and its integrated time.

The result is a Sigstore bundle (v0.3) with a DSSE envelope, the shape the real services produce
and sigstore-python's ``Verifier`` checks. Everything is built here from the formats, not from
sigstore-python's own helpers, so the verifier is checked against an independent construction.
Not covered: timestamp authorities (RFC 3161), Rekor v2 entries, OIDC tokens (nothing here
verifies one: Fulcio would, and Fulcio is played here).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from lazyfs.core.signedfiles import SIGNATURE_NAME
from tests.signing import key_usage

IN_TOTO = "application/vnd.in-toto+json"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_OIDC_ISSUER = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_OIDC_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_EMBEDDED_SCTS = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
_REKOR_ORIGIN = "rekor.lazyfs.test"
# Never contacted: verification is offline. Loopback's discard port, should anything try.
_NOWHERE = "http://127.0.0.1:9"


@dataclass(frozen=True)
class FakeSigstore:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    ct_key: ec.EllipticCurvePrivateKey
    rekor_key: ec.EllipticCurvePrivateKey
    # The ClientTrustConfig JSON that trusts all of the above (--signature-trust-root).
    trust_config: Path


def make_fake_sigstore(folder: Path) -> FakeSigstore:
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = _name("lazyfs test sigstore root")
    root = _ca_certificate(root_name, root_key.public_key(), root_name, root_key, now, None)
    intermediate_key = ec.generate_private_key(ec.SECP384R1())
    intermediate = _ca_certificate(
        _name("lazyfs test sigstore intermediate"),
        intermediate_key.public_key(),
        root_name,
        root_key,
        now,
        root,
    )
    sigstore = FakeSigstore(
        root_key,
        root,
        intermediate_key,
        intermediate,
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
        folder / "trust_config.json",
    )
    sigstore.trust_config.write_text(json.dumps(_trust_config(sigstore, now), indent=2))
    return sigstore


def sign_keyless(
    model: Path,
    sigstore: FakeSigstore,
    identity: str,
    issuer: str,
    *,
    ct_key: ec.EllipticCurvePrivateKey | None = None,
) -> Path:
    """Sign ``model`` into ``model/model.sig`` as ``model_signing sign sigstore`` does, with the
    certificate, SCT and log entry from ``sigstore``; ``ct_key`` signs the SCT instead of
    ``sigstore``'s CT log key (a certificate whose SCT no trusted log made)."""
    import model_signing
    from google.protobuf import json_format
    from model_signing._signing import signing

    signature = model / SIGNATURE_NAME
    hashing = model_signing.hashing.Config().set_ignored_paths(
        paths=[signature.name], ignore_git_paths=True
    )
    payload = signing.Payload(hashing.hash(model))
    statement = json_format.MessageToJson(payload.statement.pb).encode()
    if ct_key is not None:
        sigstore = replace(sigstore, ct_key=ct_key)
    signature.write_text(json.dumps(_bundle(statement, sigstore, identity, issuer)))
    return signature


def _bundle(statement: bytes, sigstore: FakeSigstore, identity: str, issuer: str) -> dict[str, Any]:
    signed_at = int(datetime.datetime.now(datetime.UTC).timestamp())
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _signing_certificate(key, sigstore, identity, issuer, signed_at)
    signature = key.sign(_pae(IN_TOTO, statement), ec.ECDSA(hashes.SHA256()))
    envelope = {
        "payload": _b64(statement),
        "payloadType": IN_TOTO,
        "signatures": [{"sig": _b64(signature)}],
    }
    return {
        "mediaType": BUNDLE_TYPE,
        "verificationMaterial": {
            "certificate": {"rawBytes": _b64(certificate.public_bytes(serialization.Encoding.DER))},
            "tlogEntries": [
                _log_entry(sigstore.rekor_key, envelope, statement, certificate, signed_at)
            ],
        },
        "dsseEnvelope": envelope,
    }


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the envelope's signature signs."""
    return b"DSSEv1 %d %s %d %s" % (
        len(payload_type),
        payload_type.encode(),
        len(payload),
        payload,
    )


# Fulcio and the CT log


def _signing_certificate(
    key: ec.EllipticCurvePrivateKey,
    sigstore: FakeSigstore,
    identity: str,
    issuer: str,
    signed_at: int,
) -> x509.Certificate:
    """A Fulcio-style certificate for ``identity``, with the CT log's SCT embedded."""
    start = datetime.datetime.fromtimestamp(signed_at - 60, datetime.UTC)
    san: x509.GeneralName = (
        x509.UniformResourceIdentifier(identity) if "://" in identity else x509.RFC822Name(identity)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(sigstore.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(minutes=10))
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                sigstore.intermediate_key.public_key()
            ),
            critical=False,
        )
        # An empty subject: the SAN is the identity, and critical (RFC 5280, 4.2.1.6).
        .add_extension(x509.SubjectAlternativeName([san]), critical=True)
        .add_extension(x509.UnrecognizedExtension(_OIDC_ISSUER, issuer.encode()), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(_OIDC_ISSUER_V2, _der(0x0C, issuer.encode())),
            critical=False,
        )
    )
    # The precertificate is the certificate without its SCT list; the SCT, added last, signs it.
    precertificate = builder.sign(sigstore.intermediate_key, hashes.SHA256())
    sct = _sct(sigstore, precertificate.tbs_certificate_bytes, signed_at * 1000)
    certificate = builder.add_extension(
        x509.UnrecognizedExtension(_EMBEDDED_SCTS, _der(0x04, _tls_list([sct]))), critical=False
    ).sign(sigstore.intermediate_key, hashes.SHA256())
    assert certificate.tbs_precertificate_bytes == precertificate.tbs_certificate_bytes
    return certificate


def _sct(sigstore: FakeSigstore, tbs_precertificate: bytes, timestamp_ms: int) -> bytes:
    """An RFC 6962 signed certificate timestamp (v1, precert entry) in its TLS encoding."""
    issuer_key_hash = hashlib.sha256(_spki(sigstore.intermediate_key.public_key())).digest()
    signed = (
        struct.pack("!BBQH", 0, 0, timestamp_ms, 1)  # v1, certificate_timestamp, precert_entry
        + issuer_key_hash
        + len(tbs_precertificate).to_bytes(3, "big")
        + tbs_precertificate
        + struct.pack("!H", 0)  # no extensions
    )
    signature = sigstore.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
    log_id = _key_id(sigstore.ct_key)
    return (
        struct.pack("!B32sQH", 0, log_id, timestamp_ms, 0)
        + struct.pack("!BBH", 4, 3, len(signature))  # sha256, ecdsa
        + signature
    )


def _tls_list(items: Sequence[bytes]) -> bytes:
    body = b"".join(struct.pack("!H", len(item)) + item for item in items)
    return struct.pack("!H", len(body)) + body


# Rekor


def _log_entry(
    rekor_key: ec.EllipticCurvePrivateKey,
    envelope: dict[str, Any],
    statement: bytes,
    certificate: x509.Certificate,
    integrated_time: int,
) -> dict[str, Any]:
    """A Rekor v1 ``dsse`` entry for the envelope, included in a small tree: the inclusion proof,
    the checkpoint over the tree's root and the signed entry timestamp, as in a bundle."""
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    body = _canonical(
        {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(_canonical(envelope)).hexdigest(),
                },
                "payloadHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(statement).hexdigest(),
                },
                "signatures": [
                    {
                        "signature": envelope["signatures"][0]["sig"],
                        "verifier": _b64(certificate_pem),
                    }
                ],
            },
        }
    )
    # Others signed before us, and one after: the proof has hashes on both sides.
    leaves = [b"entry %d of the test log" % n for n in range(6)]
    index = 4
    leaves[index] = body
    root = _tree_hash(leaves)
    log_id = _key_id(rekor_key)
    promise = _canonical(
        {
            "body": _b64(body),
            "integratedTime": integrated_time,
            "logID": log_id.hex(),
            "logIndex": index,
        }
    )
    return {
        "logIndex": str(index),
        "logId": {"keyId": _b64(log_id)},
        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
        "integratedTime": str(integrated_time),
        "inclusionPromise": {
            "signedEntryTimestamp": _b64(rekor_key.sign(promise, ec.ECDSA(hashes.SHA256())))
        },
        "inclusionProof": {
            "logIndex": str(index),
            "rootHash": _b64(root),
            "treeSize": str(len(leaves)),
            "hashes": [_b64(node) for node in _inclusion_proof(index, leaves)],
            "checkpoint": {"envelope": _checkpoint(rekor_key, len(leaves), root)},
        },
        "canonicalizedBody": _b64(body),
    }


def _checkpoint(rekor_key: ec.EllipticCurvePrivateKey, size: int, root: bytes) -> str:
    """A signed note (transparency-dev's checkpoint format) over the tree's size and root."""
    note = f"{_REKOR_ORIGIN} - 1\n{size}\n{_b64(root)}\n"
    signature = rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
    return f"{note}\n\u2014 {_REKOR_ORIGIN} {_b64(_key_id(rekor_key)[:4] + signature)}\n"


def _tree_hash(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962's Merkle tree hash."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    split = _split(len(leaves))
    return _node(_tree_hash(leaves[:split]), _tree_hash(leaves[split:]))


def _inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962's audit path for leaf ``index``, from the leaf's sibling up."""
    if len(leaves) == 1:
        return []
    split = _split(len(leaves))
    if index < split:
        return [*_inclusion_proof(index, leaves[:split]), _tree_hash(leaves[split:])]
    return [*_inclusion_proof(index - split, leaves[split:]), _tree_hash(leaves[:split])]


def _split(size: int) -> int:
    """The largest power of two below ``size``."""
    return 1 << ((size - 1).bit_length() - 1)


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


# The trust configuration


def _trust_config(sigstore: FakeSigstore, now: datetime.datetime) -> dict[str, Any]:
    since = {"start": _iso(now - datetime.timedelta(days=1))}

    def log(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
        return {
            "baseUrl": url,
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": _b64(_spki(key.public_key())),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": since,
            },
            "logId": {"keyId": _b64(_key_id(key))},
        }

    def service(url: str) -> dict[str, Any]:
        return {"url": url, "majorApiVersion": 1, "validFor": since, "operator": "lazyfs tests"}

    chain = [sigstore.intermediate, sigstore.root]
    return {
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(sigstore.rekor_key, f"{_NOWHERE}/rekor")],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "lazyfs tests", "commonName": "fulcio"},
                    "uri": f"{_NOWHERE}/fulcio",
                    "certChain": {
                        "certificates": [
                            {"rawBytes": _b64(ca.public_bytes(serialization.Encoding.DER))}
                            for ca in chain
                        ]
                    },
                    "validFor": since,
                }
            ],
            "ctlogs": [log(sigstore.ct_key, f"{_NOWHERE}/ct")],
            "timestampAuthorities": [],
        },
        "signingConfig": {
            "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
            "caUrls": [service(f"{_NOWHERE}/fulcio")],
            "oidcUrls": [service(f"{_NOWHERE}/oauth2")],
            "rekorTlogUrls": [service(f"{_NOWHERE}/rekor")],
            "tsaUrls": [],
            "rekorTlogConfig": {"selector": "ANY"},
            "tsaConfig": {"selector": "ANY"},
        },
    }


# Certificates and encodings


def _ca_certificate(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    parent: x509.Certificate | None,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None if parent is None else 0),
            critical=True,
        )
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA384())
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lazyfs tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_id(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A log's ID, RFC 6962 style: the sha256 of its public key."""
    return hashlib.sha256(_spki(key.public_key())).digest()


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV (an OCTET STRING, a UTF8String)."""
    if len(content) < 0x80:
        length = bytes([len(content)])
    else:
        size = (len(content).bit_length() + 7) // 8
        length = bytes([0x80 | size]) + len(content).to_bytes(size, "big")
    return bytes([tag]) + length + content


def _canonical(document: dict[str, Any]) -> bytes:
    # RFC 8785 for what is used here (ASCII strings, integers): sorted keys, no spaces.
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
