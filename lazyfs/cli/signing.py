"""The signed-mount options of ``lazyfs mount`` (``--signature-key`` and friends), gathered into
one ``SignatureTrust`` argument, checked before anything starts (docs/signing.md)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lazyfs.errors import UsageError

if TYPE_CHECKING:
    from lazyfs.sources.signatures import SignatureTrust

_PATH = click.Path(path_type=Path)

SIGNATURE_OPTIONS = (
    click.option(
        "--signature-key",
        type=_PATH,
        metavar="PUB.pem",
        help="Refuse to mount unless the repository's signature (OpenSSF model signing, "
        "model.sig) verifies with this public key and covers its lazyfs-manifest.json.",
    ),
    click.option(
        "--signature-certificate",
        type=_PATH,
        multiple=True,
        metavar="PEM",
        help="As --signature-key, for signatures made with a signing certificate: it must "
        "chain to these certificates (repeatable).",
    ),
    click.option(
        "--signature-identity",
        metavar="ID",
        help="As --signature-key, for Sigstore (keyless) signatures by this identity (an "
        "e-mail or workflow URI); checked offline against Sigstore's bundled trust root.",
    ),
    click.option(
        "--signature-issuer",
        metavar="URL",
        help="The OpenID Connect issuer of --signature-identity.",
    ),
    click.option(
        "--signature-trust-root",
        type=_PATH,
        metavar="FILE",
        help="A Sigstore trust configuration or trusted root (JSON) to check "
        "--signature-identity against instead of the bundled production one (a private "
        "Sigstore).",
    ),
    click.option(
        "--signature",
        "signature_location",
        metavar="PATH_OR_URL",
        help="Where the signature is [default: model.sig in the repository].",
    ),
)


def signature_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` the signature options; it receives them as one ``signature``
    argument: a checked ``SignatureTrust``, or None when no signature is asked for."""

    @functools.wraps(command)
    def with_signature(
        *args: Any,
        signature_key: Path | None,
        signature_certificate: tuple[Path, ...],
        signature_identity: str | None,
        signature_issuer: str | None,
        signature_trust_root: Path | None,
        signature_location: str | None,
        **kwargs: Any,
    ) -> Any:
        kwargs["signature"] = _trust(
            signature_key,
            signature_certificate,
            signature_identity,
            signature_issuer,
            signature_trust_root,
            signature_location,
        )
        return command(*args, **kwargs)

    for option in reversed(SIGNATURE_OPTIONS):
        with_signature = option(with_signature)
    return with_signature


def _trust(
    key: Path | None,
    certificates: tuple[Path, ...],
    identity: str | None,
    issuer: str | None,
    trust_root: Path | None,
    location: str | None,
) -> SignatureTrust | None:
    from lazyfs.sources.signatures import SignatureTrust, check_trust

    # Given at all, even empty (an fstab template's unset variable), a signature is asked for:
    # an empty value is refused by check_trust, never taken as "no signature".
    asked = (key, identity, issuer, trust_root)
    if all(value is None for value in asked) and not certificates:
        if location is not None:
            raise UsageError(
                "--signature needs a way to trust it: --signature-key, "
                "--signature-certificate, or --signature-identity with --signature-issuer"
            )
        return None
    if location is not None and not location.startswith(("http://", "https://")):
        location = str(Path(location).absolute())
    trust = SignatureTrust(
        key=key.absolute() if key else None,
        certificates=tuple(path.absolute() for path in certificates),
        identity=identity,
        issuer=issuer,
        trust_root=trust_root.absolute() if trust_root else None,
        location=location,
    )
    check_trust(trust)
    return trust
