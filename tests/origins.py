"""Origins for tests: the embedded ``lazyfs serve`` and nginx (plain or TLS, with a private CA
made here), and a forward proxy (tinyproxy, whose own log says which requests went through
it), run as real processes.

Both write the same access-log format (tests/support/processes.py describes it), so a test can ask
either one which requests reached it. The process handling is shared with scripts/benchmark.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.processes import (
    NGINX,
    AccessRecord,
    Origin,
    free_port,
    read_access_log,
    start_nginx_origin,
)
from tests.waiting import wait_until

__all__ = [
    "NGINX",
    "AccessRecord",
    "Origin",
    "PrivateCA",
    "cached_slice",
    "free_port",
    "make_test_ca",
    "nginx_origin",
    "read_access_log",
    "read_proxy_log",
    "start_cache_tier",
    "start_lazyfs_origin",
    "start_nginx_origin",
    "start_tinyproxy",
    "tier_answer",
]
TINYPROXY = Path("/usr/bin/tinyproxy")
CACHE_CONFIG = Path(__file__).resolve().parents[1] / "scripts" / "cluster" / "cache-config"


def start_lazyfs_origin(root: Path, workdir: Path) -> Origin:
    """``python -m lazyfs serve ROOT --port 0``, the real CLI; the port comes from its banner."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "lazyfs-access.log"

    def command(port: int) -> list[str]:
        serve = [sys.executable, "-m", "lazyfs", "serve", str(root), "--port", str(port)]
        return [*serve, "--access-log", str(log)]

    origin = Origin("lazyfs", root, workdir, log, command, banner=True)
    origin.start()
    return origin


@contextmanager
def nginx_origin(workdir: Path, limit_rate: str | None = None) -> Iterator[Origin]:
    """An nginx serving a fresh ``workdir/origin``, stopped on the way out."""
    root = workdir / "origin"
    root.mkdir()
    served = start_nginx_origin(root, workdir / "origin-nginx", limit_rate=limit_rate)
    try:
        yield served
    finally:
        served.stop()


def start_cache_tier(
    upstream: Origin, workdir: Path, block_size: str, *, workers: int = 1
) -> tuple[Origin, Path]:
    """The shipped block cache tier (scripts/cluster/cache-config, run as a user runs it) in an
    nginx of its own (``workers`` worker processes) in front of ``upstream``; returns it and its
    cache directory. Its access log lists the requests readers made of it, ``upstream``'s those
    that went through."""
    cache_dir = workdir / "blocks"

    def site(port: int) -> str:
        command = [sys.executable, str(CACHE_CONFIG), "--upstream", upstream.url]
        command += ["--block-size", block_size, "--cache-dir", str(cache_dir)]
        command += ["--listen", f"127.0.0.1:{port}", "--max-size", "2G"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    return start_nginx_origin(workdir, workdir, workers=workers, site=site), cache_dir


def cached_slice(cache_dir: Path, key: str) -> Path:
    """Where the tier keeps a key (levels=1:2 of its md5, from the end), once it is there:
    nginx renames a slice into its cache after the last byte went to the reader, so the file
    may appear a moment after the answer."""
    digest = hashlib.md5(key.encode()).hexdigest()  # nginx names cache files so
    stored = cache_dir / digest[-1] / digest[-3:-1] / digest
    assert wait_until(stored.exists), f"the tier never stored {key}"
    return stored


def tier_answer(client: httpx.Client, path: str, headers: dict[str, str]) -> tuple[str, bytes]:
    """What the tier answers for ``path``: its cache status and the body."""
    answer = client.get(path, headers=headers)
    return answer.headers["x-cache-status"], answer.content


@dataclass(frozen=True)
class PrivateCA:
    """A private CA and a certificate it signed for 127.0.0.1 (and localhost)."""

    cert: Path  # the CA's certificate: what --ca-file takes
    server_cert: Path
    server_key: Path


def make_test_ca(workdir: Path) -> PrivateCA:
    """A CA made with the openssl CLI, as an operator would make one, valid for two days."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = PrivateCA(workdir / "ca.pem", workdir / "server.pem", workdir / "server.key")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    extensions = workdir / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    commands = [
        ["req", "-x509", "-new", *key, "-keyout", workdir / "ca.key", "-out", ca.cert,
         "-days", "2", "-subj", "/CN=lazyfs test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-new", *key, "-keyout", ca.server_key, "-out", workdir / "server.csr",
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", workdir / "server.csr", "-CA", ca.cert,
         "-CAkey", workdir / "ca.key", "-CAcreateserial", "-out", ca.server_cert,
         "-days", "2", "-extfile", extensions],
    ]  # fmt: skip
    for command in commands:
        subprocess.run(["openssl", *map(str, command)], capture_output=True, check=True)
    return ca


def start_tinyproxy(
    workdir: Path, connect_ports: tuple[int, ...] = (), credentials: tuple[str, str] | None = None
) -> Origin:
    """tinyproxy in the foreground on a free port of 127.0.0.1, logging each request it takes
    (``read_proxy_log``); CONNECT only to ``connect_ports``; with ``credentials``, only for
    requests that carry them (Proxy-Authorization). Stop it with ``stop()``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), workdir / "tinyproxy.log"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 60",
        f'LogFile "{log}"',
        "LogLevel Info",
        "MaxClients 64",
        "DisableViaHeader Yes",
        *(f"ConnectPort {allowed}" for allowed in connect_ports),
    ]
    if credentials is not None:
        lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
    conf = workdir / "tinyproxy.conf"
    conf.write_text("\n".join(lines) + "\n")

    def command(port: int) -> list[str]:
        return [str(TINYPROXY), "-d", "-c", str(conf)]

    proxy = Origin("tinyproxy", workdir, workdir, log, command, port)
    proxy.start()
    return proxy


_PROXIED = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/1\.[01]$")


def read_proxy_log(path: Path) -> list[tuple[str, str]]:
    """(method, target) of every request tinyproxy logged: absolute URLs for plain http,
    ``HOST:PORT`` for CONNECT tunnels."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [(match[1], match[2]) for line in lines if (match := _PROXIED.search(line))]
