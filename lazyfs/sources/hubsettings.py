"""A hub source's settings from the command line and the environment: the repository, its
endpoint (``HF_ENDPOINT``, ``MODELSCOPE_ENDPOINT``) and its token (``--token-file``, ``HF_TOKEN``,
``MODELSCOPE_API_TOKEN``). Light: the CLI checks them before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

from lazyfs.core import hubs
from lazyfs.core.hubs import HubRepo
from lazyfs.errors import UsageError


def hub_endpoint(hub: str) -> str:
    variable = hubs.ENDPOINT_VARIABLES[hub]
    return hubs.check_endpoint(hub, os.environ.get(variable) or hubs.DEFAULT_ENDPOINTS[hub])


def hub_settings(source: str, token_file: Path | None) -> tuple[HubRepo, str, str | None]:
    """A hub source checked, with its endpoint and token: what ``HubOrigin`` takes."""
    repo = hubs.parse_hub_source(source)
    return repo, hub_endpoint(repo.hub), hub_token(repo.hub, token_file)


def hub_offline(hub: str) -> str | None:
    """The environment variable that keeps lazyfs from asking ``hub`` (``HF_HUB_OFFLINE``)."""
    return hubs.offline_setting(hub, os.environ)


def hub_token(hub: str, token_file: Path | None) -> str | None:
    """The token from ``--token-file``, else from the hub's environment variable."""
    if token_file is None:
        variable = hubs.TOKEN_VARIABLES[hub]
        token = os.environ.get(variable) or None
        where = f"${variable}"
    else:
        try:
            token = token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise UsageError(f"cannot read --token-file {token_file}: {reason}") from None
        where = f"--token-file {token_file}"
    # It goes into an HTTP header: printable ASCII without spaces, or a clear refusal.
    if token is not None and (
        not token
        or not token.isascii()
        or not all(ch.isprintable() and not ch.isspace() for ch in token)
    ):
        raise UsageError(f"{where} does not hold one token (printable ASCII, no spaces)")
    return token
