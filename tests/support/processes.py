"""Real processes on this machine, for the tests and the benchmark alike: HTTP origins (nginx,
anything that listens on a port), FUSE mounts, and the pids behind them.

Origins write this access-log format, so a test can ask one which requests reached it:

    METHOD PATH STATUS BODY_BYTES_SENT "RANGE_HEADER_OR_DASH"

Control bytes, non-ASCII bytes, ``"`` and ``\\`` appear as ``\\xHH`` (nginx's escaping).
Everything that stops a process stops one we started, or one whose command line names a path of
ours: other people run lazyfs and nginx on the same machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

NGINX = Path("/usr/sbin/nginx")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

_LINE = re.compile(rb'(\S*) (.*) (\d{3}) (\d+) "(.*)"')
_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")
_SERVING = re.compile(r"serving .* at http://127\.0\.0\.1:(\d+)/$")
_MOUNTINFO_ESCAPE = re.compile(rb"\\([0-7]{3})")


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
    """A port nothing is bound to now, for a server that must be told its port in advance.

    Drawn below the kernel's ephemeral range: a port from ``bind(0)`` lies inside it, where any
    outgoing connection on the machine (tests run in parallel) may take it as its source port
    before our server binds it. Below the range only servers told their port can collide, and
    ``start_nginx_origin`` retries on another port if one did."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = _ports.randrange(max(1024, low - 10000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port found below {low}")


_ports = random.SystemRandom()  # not the seeded `random` tests use: workers must differ


class PortInUse(RuntimeError):
    """The origin could not listen on its port: another server took it first."""


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
        pid_file: Path | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self.workdir = workdir
        self.log_path = log_path
        self.port = port
        self.scheme = scheme
        self._command = command
        self._banner = banner  # the process prints `serving DIR at URL/` once it listens
        self._pid_file = pid_file  # written with the process's pid once it has bound its port
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
            while not (self._bound() and self._accepts()):
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
            error = PortInUse if "Address already in use" in log else RuntimeError
            raise error(f"{self.name} origin {state} on start:\n{log}")
        if wait:
            time.sleep(0.01)

    def _bound(self) -> bool:
        # Without this, another server that took the port first would answer for us while
        # nginx still retries its bind (for seconds) before it gives up.
        if self._pid_file is None:
            return True
        assert self._proc is not None
        try:
            return self._pid_file.read_text().strip() == str(self._proc.pid)
        except FileNotFoundError:
            return False

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

    def requests(
        self,
        at_least: int = 0,
        settle: float = 0.05,
        where: Callable[[AccessRecord], bool] = lambda record: True,
    ) -> list[AccessRecord]:
        """The access log so far (the records ``where`` picks). Both servers log a request only
        after its response has left, so a client can be faster than the log: wait for
        ``at_least`` picked records, then until the log has stopped growing for ``settle``
        seconds. A test that knows how many records are due says so: a quiet spell alone can
        end before a busy machine has run the server's logging."""
        deadline = time.monotonic() + START_TIMEOUT
        size, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            if now_size != size:
                size, quiet_since = now_size, time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                records = [r for r in read_access_log(self.log_path) if where(r)]
                if len(records) >= at_least:
                    return records
            time.sleep(0.005)
        return [r for r in read_access_log(self.log_path) if where(r)]

    def clear_log(self) -> None:
        # Both servers open the log with O_APPEND, so they keep writing at the new end.
        with open(self.log_path, "wb"):
            pass


class TlsFiles(Protocol):
    """A server certificate and its key (tests/origins.py makes them with a private CA)."""

    @property
    def server_cert(self) -> Path: ...

    @property
    def server_key(self) -> Path: ...


def start_nginx_origin(
    root: Path,
    workdir: Path,
    *,
    workers: int = 1,
    listing: bool = False,
    access_log: bool = True,
    tls: TlsFiles | None = None,
    limit_rate: str | None = None,
    site: Callable[[int], str] | None = None,
) -> Origin:
    """nginx with a config of its own in ``workdir``; every path it writes is under ``workdir``.

    The tests' origin by default. ``listing``: directories answer with nginx's autoindex page (what
    ``rclone mount :http:`` lists) instead of 404 (what ``lazyfs serve`` answers).
    ``access_log=False`` spares a benchmark the write per request. With ``tls``, it speaks only
    https, with that certificate. ``limit_rate``: each response at most this fast (nginx's
    syntax, ``20m``: bytes per second). ``site``: instead of serving ``root``, the http-level
    configuration it returns for the port to listen on (the shipped cache tier, say)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "nginx-access.log"
    tls_lines = ""
    if tls is not None:
        tls_lines = f" ssl;\n        ssl_certificate {tls.server_cert};"
        tls_lines += f"\n        ssl_certificate_key {tls.server_key}"
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / (kind + '_temp')};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # No `buffer=` on access_log: each line is written when its request ends.
    logging = f"access_log {log} lazyfs;" if access_log else "access_log off;"
    # `try_files $uri =404`: a directory is a 404, as with lazyfs (nginx would 301 or 403).
    location = "autoindex on; autoindex_exact_size on;" if listing else "try_files $uri =404;"
    if limit_rate is not None:
        location += f" limit_rate {limit_rate};"
    conf_path = workdir / "nginx.conf"
    pid_file = workdir / "nginx.pid"  # nginx writes it once its socket is bound

    def command(port: int) -> list[str]:
        # Written per start: a port another server took first means a new port, a new config.
        # `user root`: pytest's tmp dirs are 0700, unreadable to nginx's default worker user.
        server = f"""\
    server {{
        listen 127.0.0.1:{port}{tls_lines};
        root {root};
        location / {{ {location} }}
    }}"""
        if site is not None:
            site_path = workdir / "site.conf"
            site_path.write_text(site(port))
            server = f"    include {site_path};"
        conf_path.write_text(f"""\
daemon off;
master_process on;
worker_processes {workers};
{"user root;" if os.geteuid() == 0 else ""}
pid {pid_file};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
{temp}
    log_format lazyfs '$request_method $uri $status $body_bytes_sent "$http_range"';
    {logging}
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    keepalive_requests 100000;
{server}
}}
""")
        # -e: the compiled-in error log (/var/log/nginx) is opened before the config is read.
        error_log = str(workdir / "error.log")
        return [str(NGINX), "-c", str(conf_path), "-p", str(workdir), "-e", error_log]

    scheme = "http" if tls is None else "https"
    origin = Origin(
        "nginx", root, workdir, log, command, free_port(), scheme=scheme, pid_file=pid_file
    )
    for _ in range(4):
        try:
            origin.start()
            return origin
        except PortInUse:
            origin.port = free_port()  # a server in another test took it first
    origin.start()
    return origin


# --- mounts -----------------------------------------------------------------------------------


def is_mounted(path: Path) -> bool:
    target = os.fsencode(os.path.abspath(path))
    with open("/proc/self/mountinfo", "rb") as mounts:
        for line in mounts:
            # The kernel writes space, tab, newline and backslash in a path as \ooo.
            field = _MOUNTINFO_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), line.split(b" ")[4])
            if field == target:
                return True
    return False


def force_unmount(path: Path) -> None:
    """The last resort: a lazy unmount, whatever state the daemon is in."""
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


# --- pids -------------------------------------------------------------------------------------


def cmdline(pid: int) -> list[str]:
    """The arguments of a process; empty if it is gone (or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie is not alive."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def processes_with(argument: str, also: str) -> list[int]:
    """Pids whose command line has both exact arguments (our own mount point, say)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            args = cmdline(int(entry))
            if argument in args and also in args:
                found.append(int(entry))
    return found


def kill_pid(pid: int, marker: str, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, one pid, and only while its command line still has ``marker``
    (so a pid reused by someone else's process is left alone)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive(pid) or marker not in cmdline(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
