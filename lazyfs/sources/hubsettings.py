"""A hub source's settings from the command line and the environment: the repository, its
endpoint (``HF_ENDPOINT``, ``MODELSCOPE_ENDPOINT``) and its token (``--token-file``, ``HF_TOKEN``,
``MODELSCOPE_API_TOKEN``). Light: the CLI checks them before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

from lazyfs.core import hubs
from lazyfs.core.hubs import HubRepo
from lazyfs.errors import UsageError
from lazyfs.sources.hubtoken import TokenSource


def hub_endpoint(hub: str) -> str:
    variable = hubs.ENDPOINT_VARIABLES[hub]
    return hubs.check_endpoint(hub, os.environ.get(variable) or hubs.DEFAULT_ENDPOINTS[hub])


def hub_settings(source: str, token_file: Path | None) -> tuple[HubRepo, str, TokenSource]:
    """A hub source checked, with its endpoint and token: what ``HubOrigin`` takes. A token
    from ``token_file`` is read again whenever the file changes (``TokenSource``)."""
    repo = hubs.parse_hub_source(source)
    token = hub_token(repo.hub, token_file)
    if token_file is None:
        return repo, hub_endpoint(repo.hub), TokenSource(token)
    return repo, hub_endpoint(repo.hub), TokenSource(token, token_file, read_token_file)


def hub_offline(hub: str) -> str | None:
    """The environment variable that keeps lazyfs from asking ``hub`` (``HF_HUB_OFFLINE``)."""
    return hubs.offline_setting(hub, os.environ)


def hub_token(hub: str, token_file: Path | None) -> str | None:
    """The token from ``--token-file``, else from the hub's environment variable."""
    if token_file is not None:
        return read_token_file(token_file)
    variable = hubs.TOKEN_VARIABLES[hub]
    token = os.environ.get(variable) or None
    return None if token is None else checked_token(token, f"${variable}")


def read_token_file(token_file: Path) -> str:
    """The one token in ``token_file``, or ``UsageError`` with one line saying why not."""
    try:
        token = token_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise UsageError(f"cannot read --token-file {token_file}: {reason}") from None
    return checked_token(token, f"--token-file {token_file}")


def checked_token(token: str, where: str) -> str:
    """``token`` if it can go into an HTTP header: printable ASCII without spaces."""
    if (
        not token
        or not token.isascii()
        or not all(ch.isprintable() and not ch.isspace() for ch in token)
    ):
        raise UsageError(f"{where} does not hold one token (printable ASCII, no spaces)")
    return token
