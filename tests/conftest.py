"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.origins import NGINX, Origin, start_lazyfs_origin, start_nginx_origin


@pytest.fixture
def origin_root(tmp_path: Path) -> Path:
    """The directory the ``origin`` fixture serves; fill it before or after the origin starts."""
    root = tmp_path / "origin"
    root.mkdir()
    return root


@pytest.fixture(params=["lazyfs", "nginx"])
def origin(request: pytest.FixtureRequest, origin_root: Path, tmp_path: Path) -> Iterator[Origin]:
    """``origin_root`` served over HTTP by ``lazyfs serve``, then by nginx."""
    if request.param == "nginx" and not NGINX.exists():
        # scripts/install puts nginx here; a missing origin must fail, not skip, the suite.
        pytest.fail(f"{NGINX} is not installed (run scripts/install)")
    start = start_lazyfs_origin if request.param == "lazyfs" else start_nginx_origin
    served = start(origin_root, tmp_path / f"{request.param}-origin")
    try:
        yield served
    finally:
        served.stop()


# Real-mount fixtures live beside their helpers; importing them here shares them.
from tests.mounts import mounter  # noqa: E402, F401
