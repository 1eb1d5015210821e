"""Origins for tests: the embedded ``lazyfs serve`` and nginx (plain or TLS, with a private CA
made here), and a forward proxy (tinyproxy), run as real processes.

Both origins write the same access-log format, so a test can ask either one which requests
reached it:

    METHOD PATH STATUS BODY_BYTES_SENT "RANGE_HEADER_OR_DASH"

Control bytes, non-ASCII bytes, ``"`` and ``\\`` appear as ``\\xHH`` (nginx's escaping).
The proxy's own log says which requests went through it (``read_proxy_log``).
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NGINX = Path("/usr/sbin/nginx")
TINYPROXY = Path("/usr/bin/tinyproxy")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

_LINE = re.compile(rb'(\S*) (.*) (\d{3}) (\d+) "(.*)"')
_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")
_SERVING = re.compile(r"serving .* at http://127\.0\.0\.1:(\d+)/$")


@dataclass(frozen=True)
class AccessRecord:
    method: str
    path: str
    status: int
    bytes_sent: int
    range: str | None


def _unescape(field: bytes) -> str:
    raw = _ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), field)
    return raw.decode("utf-8", "surrogateescape")


def read_access_log(path: Path) -> list[AccessRecord]:
    """Every complete line of an access log; a missing log is an empty one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    # A line still being written has no newline yet: leave it for the next read.
    for line in data.split(b"\n")[:-1]:
        match = _LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"{path}: unparseable access log line {line!r}")
        rng = _unescape(match[5])
        records.append(
            AccessRecord(
                method=_unescape(match[1]),
                path=_unescape(match[2]),
                status=int(match[3]),
                bytes_sent=int(match[4]),
                range=None if rng == "-" else rng,
            )
        )
    return records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_live: set[Origin] = set()


@atexit.register
def _stop_all() -> None:
    for origin in list(_live):
        origin.stop()


class Origin:
    """One origin process serving ``root`` on 127.0.0.1, restartable on the same port."""

    def __init__(
        self,
        name: str,
        root: Path,
        workdir: Path,
        log_path: Path,
        command: Callable[[int], list[str]],
        port: int = 0,
        banner: bool = False,
        scheme: str = "http",
    ) -> None:
        self.name = name
        self.root = root
        self.workdir = workdir
        self.log_path = log_path
        self.port = port
        self.scheme = scheme
        self._command = command
        self._banner = banner  # the process prints `serving DIR at URL/` once it listens
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Origin {self.name} {self.url if self.port else '(not started)'}>"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        stdout = self.workdir / f"{self.name}.stdout"
        stderr = self.workdir / f"{self.name}.stderr"
        with open(stdout, "wb") as out, open(stderr, "ab") as err:
            # Its own process group: a last-resort kill also reaches nginx's workers.
            self._proc = subprocess.Popen(
                self._command(self.port),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                start_new_session=True,
            )
        _live.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while self._banner:
                match = _SERVING.match(stdout.read_text().partition("\n")[0])
                if match:
                    self.port = int(match[1])
                    break
                self._check_alive(deadline, stderr)
            while not self._accepts():
                self._check_alive(deadline, stderr)
            self._check_alive(deadline, stderr, wait=False)  # not someone else on our port
        except BaseException:
            self.stop()
            raise

    def _check_alive(self, deadline: float, stderr: Path, wait: bool = True) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None or time.monotonic() > deadline:
            state = f"exited {self._proc.returncode}" if self._proc.poll() is not None else "hung"
            log = stderr.read_text(errors="replace")
            if self.name == "nginx":
                log += (self.workdir / "error.log").read_text(errors="replace")
            if self.name == "tinyproxy":
                log += self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"{self.name} origin {state} on start:\n{log}")
        if wait:
            time.sleep(0.01)

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _live.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # The group, not just the pid: nginx's workers would outlive a killed master.
                # The leader is not reaped yet, so the group id cannot have been reused.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)

    def requests(self, at_least: int = 0, settle: float = 0.05) -> list[AccessRecord]:
        """The access log so far. Both servers log a request only after its response has left,
        so a client can be faster than the log: wait for ``at_least`` records, then until the log
        has stopped growing for ``settle`` seconds."""
        deadline = time.monotonic() + START_TIMEOUT
        size, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            if now_size != size:
                size, quiet_since = now_size, time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                records = read_access_log(self.log_path)
                if len(records) >= at_least:
                    return records
            time.sleep(0.005)
        return read_access_log(self.log_path)

    def clear_log(self) -> None:
        # Both servers open the log with O_APPEND, so they keep writing at the new end.
        with open(self.log_path, "wb"):
            pass


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


def start_nginx_origin(root: Path, workdir: Path, tls: PrivateCA | None = None) -> Origin:
    """nginx with a config of its own in ``workdir``; every path it writes is under ``workdir``.
    With ``tls``, it speaks only https, with the certificate ``tls`` signed."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), workdir / "nginx-access.log"
    listen = f"127.0.0.1:{port}"
    if tls is not None:
        listen += f" ssl;\n        ssl_certificate {tls.server_cert};"
        listen += f"\n        ssl_certificate_key {tls.server_key}"
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / (kind + '_temp')};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # `user root`: pytest's tmp dirs are 0700, unreadable to nginx's default worker user.
    # No `buffer=` on access_log: each line is written when its request ends.
    # `try_files $uri =404`: a directory is a 404, as with lazyfs (nginx would 301 or 403).
    conf = f"""\
daemon off;
master_process on;
worker_processes 1;
{"user root;" if os.geteuid() == 0 else ""}
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
{temp}
    log_format lazyfs '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log {log} lazyfs;
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen {listen};
        root {root};
        location / {{ try_files $uri =404; }}
    }}
}}
"""
    conf_path = workdir / "nginx.conf"
    conf_path.write_text(conf)

    def command(port: int) -> list[str]:
        # -e: the compiled-in error log (/var/log/nginx) is opened before the config is read.
        error_log = str(workdir / "error.log")
        return [str(NGINX), "-c", str(conf_path), "-p", str(workdir), "-e", error_log]

    scheme = "http" if tls is None else "https"
    origin = Origin("nginx", root, workdir, log, command, port, scheme=scheme)
    origin.start()
    return origin


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
