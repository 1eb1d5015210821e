"""Shared fixtures, and the tiers every test belongs to.

A test's tier says the most it needs: ``pure`` (memory only), ``component`` (threads, sockets,
temp files, HTTP servers; no FUSE mount), ``mount`` (real FUSE mounts or mount daemons). A file
names its tier with ``pytestmark = pytest.mark.TIER``; a file in tests/pure, tests/component or
tests/mount gets its folder's. A test with no tier, or two, fails the run: the fast subset
(``scripts/test --quick``: pure and component) must never lose a test by accident.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.origins import NGINX, Origin, start_lazyfs_origin, start_nginx_origin
from tests.xetuploads import SessionUploads

TIERS = ("pure", "component", "mount")

# Properties are about behaviour, never time: on a shared 2-core machine under a parallel
# suite, one example or its generation may take seconds, and that must not fail a test.
settings.register_profile("lazyfs", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lazyfs")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[pytest.CollectReport]:
    """A file's tests with no tier, or two, make that file a collection error: the run fails
    whatever -m, -k or -n say (with xdist, each worker collects, so a check after collection
    would crash the workers instead of naming the tests)."""
    report: pytest.CollectReport = yield
    problems: dict[str, None] = {}  # in order, without repeats
    for item in report.result if report.passed else []:
        if not isinstance(item, pytest.Item):
            continue
        folder = item.path.parent.name
        if folder in TIERS:
            item.add_marker(folder)
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            name = getattr(item, "originalname", item.name)  # once per parametrized test
            problems[f"{name}: {', '.join(tiers) or 'no tier'}"] = None
    if problems:
        report.outcome = "failed"
        report.longrepr = (
            f"every test needs exactly one tier of {', '.join(TIERS)} (tests/conftest.py):\n  "
            + "\n  ".join(problems)
        )
    return report


@pytest.fixture(scope="session", autouse=True)
def private_default_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A command that falls back on the default cache dir ($XDG_CACHE_HOME/lazyfs) gets one of
    this test process's own, not one shared with parallel workers and other runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session")
def run_shared_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A directory every test process of this run sees, and no other run: an xdist worker's
    base temp dir is ``popen-gwN`` inside the controller's (its parent is the run's); without
    xdist the one process's own base temp dir."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if hasattr(request.config, "workerinput") else base) / "run-shared"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(scope="session")
def xet_uploads(run_shared_dir: Path) -> SessionUploads:
    """Fake Xet CAS uploads and generated model bytes made once per run (tests/xetuploads.py)."""
    return SessionUploads(run_shared_dir / "xet")


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
