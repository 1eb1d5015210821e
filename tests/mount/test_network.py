"""Real mounts behind the things real networks have: an https origin whose certificate a
private CA signed (nginx, a CA made with openssl here), and a forward proxy (tinyproxy, from
apt) whose own log shows what went through it. Manifests and API calls (httpx) and block
bodies (http.client) must take the same way, so the tests read every byte through the mount.

Mount tier: real FUSE mounts, servers on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakehubs import fake_hub
from tests.mounts import Mounter, is_mounted, lazyfs, publish
from tests.origins import (
    NGINX,
    TINYPROXY,
    Origin,
    PrivateCA,
    make_test_ca,
    read_proxy_log,
    start_nginx_origin,
    start_tinyproxy,
)

BLOCK = 64 * 1024
WEIGHTS = os.urandom(20 * BLOCK + 4321)  # 21 blocks
NETWORK_VARIABLES = [
    *(f"{name}_proxy" for name in ("http", "https", "all", "no")),
    *(f"{name}_PROXY" for name in ("HTTP", "HTTPS", "ALL", "NO")),
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
]


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy and the system CAs, whatever the machine running the tests has set."""
    for name in NETWORK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for tool in (NGINX, TINYPROXY):
        if not tool.exists():
            pytest.fail(f"{tool} is not installed (run scripts/install)")


@pytest.fixture
def ca(tmp_path: Path) -> PrivateCA:
    return make_test_ca(tmp_path / "ca")


def served(root: Path) -> Path:
    """A published repository with a multi-block file; returns the file."""
    (root / "weights.bin").write_bytes(WEIGHTS)
    (root / "config.json").write_text('{"hidden_size": 64}\n')
    publish(root, "64K")
    return root / "weights.bin"


@pytest.fixture
def https_origin(origin_root: Path, tmp_path: Path, ca: PrivateCA) -> Iterator[Origin]:
    served(origin_root)
    origin = start_nginx_origin(origin_root, tmp_path / "nginx-tls", tls=ca)
    try:
        yield origin
    finally:
        origin.stop()


@pytest.fixture
def http_origin(origin_root: Path, tmp_path: Path) -> Iterator[Origin]:
    served(origin_root)
    origin = start_nginx_origin(origin_root, tmp_path / "nginx")
    try:
        yield origin
    finally:
        origin.stop()


def sha256_through(mountpoint: Path, path: str) -> str:
    """sha256sum of a file read through the mount, as a user would."""
    result = subprocess.run(
        ["sha256sum", str(mountpoint / path)], capture_output=True, text=True, check=True
    )
    return result.stdout.split()[0]


def one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def range_gets(origin: Origin, at_least: int = 0) -> list[str]:
    records = origin.requests(at_least, where=lambda r: r.path == "/weights.bin" and bool(r.range))
    return [r.range for r in records if r.range]


# -- TLS -------------------------------------------------------------------------------------


def test_https_origin_signed_by_an_unknown_ca_is_refused_with_one_line(
    https_origin: Origin, mounter: Mounter
) -> None:
    mountpoint, result = mounter.mount(https_origin.url, expect_ok=False)
    one_line(result, 3, f"127.0.0.1:{https_origin.port}", "--ca-file", "not signed by a CA")
    assert not is_mounted(mountpoint)


def test_https_origin_mounts_with_ca_file_and_reads_every_byte(
    https_origin: Origin, mounter: Mounter, ca: PrivateCA
) -> None:
    mountpoint, _ = mounter.mount(https_origin.url, "--ca-file", str(ca.cert))
    assert sha256_through(mountpoint, "weights.bin") == hashlib.sha256(WEIGHTS).hexdigest()
    # Every block came over TLS from nginx, which speaks nothing else.
    assert len(range_gets(https_origin, 21)) == 21
    mounter.unmount(mountpoint)
    # The manifest is cached now; an untrusted origin is still refused, not mounted from it.
    _, refused = mounter.mount(https_origin.url, expect_ok=False)
    one_line(refused, 3, "--ca-file")


def test_https_origin_mounts_with_the_ca_from_the_environment(
    https_origin: Origin, mounter: Mounter, ca: PrivateCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE first (here beside a REQUESTS_CA_BUNDLE of the system's CAs, as on many
    machines), then REQUESTS_CA_BUNDLE, which huggingface_hub's users set."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().openssl_cafile)
    mountpoint, _ = mounter.mount(https_origin.url)
    assert sha256_through(mountpoint, "weights.bin") == hashlib.sha256(WEIGHTS).hexdigest()
    mounter.unmount(mountpoint)
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.cert))
    mountpoint, _ = mounter.mount(https_origin.url, cache_dir=mounter.cache_dir("second"))
    assert sha256_through(mountpoint, "weights.bin") == hashlib.sha256(WEIGHTS).hexdigest()


def test_an_unusable_ca_file_is_one_line(
    https_origin: Origin, mounter: Mounter, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    _, result = mounter.mount(https_origin.url, "--ca-file", str(missing), expect_ok=False)
    one_line(result, 2, f"--ca-file {missing}")


# -- a forward proxy ---------------------------------------------------------------------------


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Origin]:
    started = start_tinyproxy(tmp_path / "tinyproxy")
    try:
        yield started
    finally:
        started.stop()


def test_plain_http_manifest_and_blocks_go_through_the_proxy(
    http_origin: Origin, proxy: Origin, mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    mountpoint, _ = mounter.mount(http_origin.url)
    assert sha256_through(mountpoint, "weights.bin") == hashlib.sha256(WEIGHTS).hexdigest()
    through = read_proxy_log(proxy.log_path)
    assert ("GET", f"{http_origin.url}/lazyfs-manifest.json") in through
    blocks = [target for method, target in through if target == f"{http_origin.url}/weights.bin"]
    # Every block GET the origin saw came through the proxy (absolute-form requests).
    assert len(blocks) == len(range_gets(http_origin, 21)) == 21


def test_https_goes_through_a_connect_tunnel(
    https_origin: Origin,
    tmp_path: Path,
    ca: PrivateCA,
    mounter: Mounter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = start_tinyproxy(tmp_path / "tunnel", connect_ports=(https_origin.port,))
    try:
        monkeypatch.setenv("https_proxy", proxy.url)
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # never used for https
        mountpoint, _ = mounter.mount(https_origin.url, "--ca-file", str(ca.cert))
        assert sha256_through(mountpoint, "weights.bin") == hashlib.sha256(WEIGHTS).hexdigest()
        through = read_proxy_log(proxy.log_path)
    finally:
        proxy.stop()
    assert through and set(through) == {("CONNECT", f"127.0.0.1:{https_origin.port}")}
    assert len(range_gets(https_origin, 21)) == 21


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_credentials_from_the_proxy_url(
    scheme: str,
    origin_root: Path,
    tmp_path: Path,
    ca: PrivateCA,
    mounter: Mounter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served(origin_root)
    tls = ca if scheme == "https" else None
    origin = start_nginx_origin(origin_root, tmp_path / "nginx", tls=tls)
    proxy = start_tinyproxy(tmp_path / "auth", (origin.port,), credentials=("alice", "s3cret"))
    variable = f"{scheme.upper()}_PROXY"
    try:
        monkeypatch.setenv(variable, proxy.url)
        _, refused = mounter.mount(origin.url, "--ca-file", str(ca.cert), expect_ok=False)
        one_line(refused, 3, "407", "http://USER:PASSWORD@HOST:PORT")
        # (tinyproxy answers a wrong password with 401.)
        monkeypatch.setenv(variable, f"http://alice:wrong@127.0.0.1:{proxy.port}")
        _, refused = mounter.mount(origin.url, "--ca-file", str(ca.cert), expect_ok=False)
        one_line(refused, 3)
        assert "wrong" not in refused.stderr
        # Percent-encoded in the URL, as curl takes it: "s3cret" with its "3" spelled %33.
        monkeypatch.setenv(variable, f"http://alice:s%33cret@127.0.0.1:{proxy.port}")
        mountpoint, _ = mounter.mount(origin.url, "--ca-file", str(ca.cert))
        assert sha256_through(mountpoint, "weights.bin") == hashlib.sha256(WEIGHTS).hexdigest()
    finally:
        proxy.stop()
        origin.stop()
    assert len(range_gets(origin)) == 21


def test_hub_api_redirects_and_blocks_go_through_the_proxy(
    proxy: Origin, mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake_hub("hf") as hub:
        hub.add_repo("org/model", {"model.safetensors": WEIGHTS, "config.json": b"{}\n"})
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("http_proxy", proxy.url)
        mountpoint, _ = mounter.mount("hf://org/model")
        digest = sha256_through(mountpoint, "model.safetensors")
        api, cdn = hub.seen("api"), hub.seen("cdn")
    assert digest == hashlib.sha256(WEIGHTS).hexdigest()
    through = [target for _, target in read_proxy_log(proxy.log_path)]
    assert any(t.startswith(f"{hub.endpoint}/api/models/org/model/revision/") for t in through)
    assert any(t.startswith(f"{hub.endpoint}/org/model/resolve/") for t in through)
    assert any(t.startswith(hub.cdn_base) for t in through)
    # Nothing reached the hub or its CDN except through the proxy.
    assert len(through) == len(api) + len(cdn)


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "localhost 127.0.0.1:{port}"])
def test_no_proxy_bypasses_the_proxy(
    no_proxy: str,
    http_origin: Origin,
    proxy: Origin,
    mounter: Mounter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy.format(port=http_origin.port))
    mountpoint, _ = mounter.mount(http_origin.url)
    assert sha256_through(mountpoint, "weights.bin") == hashlib.sha256(WEIGHTS).hexdigest()
    assert len(range_gets(http_origin, 21)) == 21
    assert read_proxy_log(proxy.log_path) == []


def test_no_proxy_for_the_hub_alone_still_sends_its_cdn_through_the_proxy(
    proxy: Origin, mounter: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub and its CDN are two hosts (here two ports): each request takes its own host's
    route, whichever client sends it."""
    with fake_hub("hf") as hub:
        hub.add_repo("org/model", {"model.safetensors": WEIGHTS, "config.json": b"{}\n"})
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("no_proxy", hub.endpoint.removeprefix("http://"))
        mountpoint, _ = mounter.mount("hf://org/model")
        digest = sha256_through(mountpoint, "model.safetensors")
        cdn = hub.seen("cdn")
    assert digest == hashlib.sha256(WEIGHTS).hexdigest()
    through = [target for _, target in read_proxy_log(proxy.log_path)]
    assert through and all(target.startswith(hub.cdn_base) for target in through)
    assert len(through) == len(cdn)


def test_manifest_build_from_a_hub_goes_through_the_proxy_and_takes_ca_file(
    proxy: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake_hub("hf") as hub:
        hub.add_repo("org/model", {"model.safetensors": WEIGHTS, "config.json": b"{}\n"})
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        output = tmp_path / "model.json"
        missing = tmp_path / "missing.pem"
        refused = lazyfs("manifest", "build", "hf://org/model", "-o", output, "--ca-file", missing)
        one_line(refused, 2, f"--ca-file {missing}")
        built = lazyfs("manifest", "build", "hf://org/model", "-o", output)
        seen = len(hub.seen("api")) + len(hub.seen("cdn"))
    assert built.returncode == 0, built.stderr
    through = [target for _, target in read_proxy_log(proxy.log_path)]
    assert any(t.startswith(hub.cdn_base) for t in through) and len(through) == seen
