"""Signing a published directory as a publisher does, with the real ``model_signing`` library
(OpenSSF model signing), offline: an elliptic-curve key, or a certificate from a private CA."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lazyfs.core.signedfiles import SIGNATURE_NAME

if TYPE_CHECKING:
    import model_signing


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


@dataclass(frozen=True)
class SigningCertificate:
    private: Path
    certificate: Path
    # The CA the verifier trusts (--signature-certificate).
    ca: Path


def make_key_pair(folder: Path, name: str = "signer") -> KeyPair:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = folder / f"{name}.key"
    public = folder / f"{name}.pub"
    private.write_bytes(_private_pem(key))
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(private, public)


def make_signing_certificate(folder: Path, name: str = "publisher") -> SigningCertificate:
    """A CA and a code-signing certificate it issued, as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    signed = SigningCertificate(
        folder / f"{name}.key", folder / f"{name}.crt", folder / f"{name}-ca.crt"
    )
    signed.private.write_bytes(_private_pem(key))
    signed.certificate.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    signed.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return signed


def sign_with_key(model: Path, keys: KeyPair) -> Path:
    """Sign ``model`` into ``model/model.sig`` as ``model_signing sign key`` does."""
    import model_signing  # heavy (sigstore): imported by the tests that sign, not at collection

    signature = model / SIGNATURE_NAME
    config = model_signing.signing.Config().use_elliptic_key_signer(private_key=keys.private)
    config.set_hashing_config(_hashing(signature)).sign(model, signature)
    return signature


def sign_with_certificate(model: Path, signer: SigningCertificate) -> Path:
    import model_signing

    signature = model / SIGNATURE_NAME
    config = model_signing.signing.Config().use_certificate_signer(
        private_key=signer.private,
        signing_certificate=signer.certificate,
        certificate_chain=[signer.ca],
    )
    config.set_hashing_config(_hashing(signature)).sign(model, signature)
    return signature


def _hashing(signature: Path) -> model_signing.hashing.Config:
    import model_signing

    # What the model_signing CLI does: the signature itself and Git's files are not signed.
    return model_signing.hashing.Config().set_ignored_paths(
        paths=[signature.name], ignore_git_paths=True
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_usage(cert_sign: bool) -> x509.KeyUsage:
    """A CA's key usage (``cert_sign``), or a signing certificate's."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
