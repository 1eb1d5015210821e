"""``lazyfs serve``: GET/HEAD of the files below a directory, single byte ranges (RFC 9110),
strong ETags, ``sendfile`` bodies. Nothing outside the root is reachable, even by symlink."""

from __future__ import annotations

import email.utils
import errno
import mimetypes
import os
import re
import signal
import socket
import socketserver
import stat
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import unquote

from lazyfs import __version__
from lazyfs.errors import UsageError

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII | re.IGNORECASE)
# int() refuses longer digit strings (Python's int_max_str_digits). No file is that large, and
# nginx answers 416 to any number past its off_t, so a longer number gets 416 here too.
_LONGEST_NUMBER = 4300


class RangeNotSatisfiable(Exception): ...  # 416: the range starts at or beyond the end


def _number(digits: str) -> int:
    significant = digits.lstrip("0") or "0"  # leading zeros change nothing, as for nginx
    if len(significant) > _LONGEST_NUMBER:
        raise RangeNotSatisfiable
    return int(significant)


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` a Range header asks for, clamped to ``size``; None: the
    whole file, since RFC 9110 lets a server ignore ranges it cannot parse or does not support
    (several ranges), and a 200 is what every client understands."""
    match = _RANGE.fullmatch(value.strip())
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":
        suffix = _number(match[2])
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    first = _number(match[1])
    last = _number(match[2]) if match[2] else None
    if last is not None and last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable
    return first, size - 1 if last is None else min(last, size - 1)


def split_target(target: str) -> tuple[str, list[str] | None]:
    """The decoded path (for the log) and its segments, None if the target is malformed or could
    climb out of the root. Dot segments are refused, not resolved: our clients never send them."""
    raw = target.split("?", 1)[0]
    try:
        decoded = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return raw, None
    parts = [part for part in decoded.split("/") if part]
    if not raw.startswith("/") or "\0" in decoded or "\\" in decoded or {".", ".."} & set(parts):
        return decoded, None
    return re.sub("/+", "/", decoded), parts  # logged as nginx logs $uri: slashes merged


def _escape(text: str) -> str:
    # nginx escapes log variables this way: one parser reads both logs, no path forges a line.
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02X}"
        for b in text.encode("utf-8", "surrogateescape")
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # an idle keep-alive connection holds a thread
    # Headers and body go out in two writes; Nagle would hold a small body back for an ACK.
    disable_nagle_algorithm = True

    # For the access log; reset per request because attributes outlive a keep-alive request.
    status: int | None = None
    sent = 0
    log_path = ""
    range_header: str | None = None

    def handle_one_request(self) -> None:
        self.status, self.sent, self.log_path, self.range_header = None, 0, "", None
        try:
            super().handle_one_request()
        except ConnectionError:
            self.close_connection = True
        server = cast(RepositoryServer, self.server)
        with server.log_lock:
            if self.status is not None and server.log is not None and not server.log.closed:
                rng = "-" if self.range_header is None else _escape(self.range_header)
                command = getattr(self, "command", None) or "-"
                path = _escape(self.log_path)
                server.log.write(f'{command} {path} {self.status} {self.sent} "{rng}"\n')
                server.log.flush()

    def version_string(self) -> str:
        return f"lazyfs/{__version__}"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.status = int(code)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Only for requests http.server could not parse: the stream may be out of step, and
        # garbage counts as HTTP/0.9 there, which would suppress the status line.
        self.close_connection, self.request_version = True, "HTTP/1.1"
        # http.server sets command and path together; without a command, path is stale.
        self.log_path = self.path if getattr(self, "command", None) else ""
        self._reply(code, {"Connection": "close"})

    def _reply(self, code: int, headers: dict[str, str]) -> None:
        body = b"" if code == 304 else f"{code} {HTTPStatus(code).phrase}\n".encode()
        if code != 304:  # a 304 has no body, and no length: it would be the 200's
            headers = {**headers, "Content-Type": "text/plain; charset=utf-8"}
            headers["Content-Length"] = str(len(body))
        self._head(code, headers)
        if getattr(self, "command", None) != "HEAD" and body:
            self.wfile.write(body)
            self.sent = len(body)

    def _head(self, code: int, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def do_GET(self) -> None:
        self.range_header = self.headers.get("Range")
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a body we do not read would desync the stream
        self.log_path, parts = split_target(self.path)
        if parts is None:
            self._reply(400, {})
            return
        root = cast(RepositoryServer, self.server).root
        try:
            real = root.joinpath(*parts).resolve(strict=True)
            if not real.is_relative_to(root):
                raise FileNotFoundError(real)
            # O_NONBLOCK: opening a FIFO someone left in the tree must not hang the thread.
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except PermissionError:
            self._reply(403, {})
            return
        except (OSError, RuntimeError):  # missing, outside, name too long, a symlink loop
            self._reply(404, {})
            return
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._reply(404, {})
            return
        with os.fdopen(fd, "rb", buffering=0) as file:
            self._send_file(file, st, self.command == "HEAD", real.name)

    do_HEAD = do_GET

    def _send_file(self, file: BinaryIO, st: os.stat_result, head: bool, name: str) -> None:
        size = st.st_size
        etag = f'"{size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'
        headers = {"Accept-Ranges": "bytes", "ETag": etag}
        headers["Last-Modified"] = email.utils.formatdate(st.st_mtime, usegmt=True)
        if_none_match = self.headers.get("If-None-Match")
        tags = {tag.strip().removeprefix("W/") for tag in (if_none_match or "").split(",")}
        if if_none_match is not None and ("*" in tags or etag in tags):  # weak comparison
            self._reply(304, headers)
            return
        first, last, status = 0, size - 1, 200
        # RFC 9110 defines ranges for GET only; HEAD answers with the whole length.
        if self.range_header is not None and not head and self._if_range_holds(etag, st):
            try:
                wanted = parse_range(self.range_header, size)
            except RangeNotSatisfiable:
                self._reply(416, {**headers, "Content-Range": f"bytes */{size}"})
                return
            if wanted is not None:
                (first, last), status = wanted, 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        length = last - first + 1
        headers["Content-Type"] = mimetypes.guess_type(name)[0] or "application/octet-stream"
        headers["Content-Length"] = str(length)
        self._head(status, headers)
        if head or length == 0:
            return
        file.seek(first)
        try:
            self.connection.sendfile(file, first, length)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        finally:  # socket.sendfile leaves the file positioned after what it sent, even on error
            self.sent = file.tell() - first
        if self.sent != length:
            self.close_connection = True  # the file shrank under us: the client cannot resync

    def _if_range_holds(self, etag: str, st: os.stat_result) -> bool:
        value = (self.headers.get("If-Range") or "").strip()
        if not value or value.startswith(('"', "W/")):
            return value in ("", etag)  # the strong comparison: a weak tag never matches
        try:
            return int(email.utils.parsedate_to_datetime(value).timestamp()) == int(st.st_mtime)
        except (TypeError, ValueError):
            return False


class RepositoryServer(ThreadingHTTPServer):
    """The embedded origin. ``start()`` serves from a daemon thread; ``with`` starts and closes."""

    daemon_threads = True
    allow_reuse_address = True
    # Clients open their connections in the same instant; a backlog of 5 means SYN retries.
    request_queue_size = 128

    def __init__(
        self, root: Path, host: str = "127.0.0.1", port: int = 0, access_log: Path | None = None
    ) -> None:
        if not root.is_dir():
            raise UsageError(f"serve: {root} is not a directory")
        self.root, self.host, self.log_lock = root.resolve(), host, threading.Lock()
        self._thread: threading.Thread | None = None
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            self.log = open(access_log, "a", encoding="utf-8") if access_log else None  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"serve: cannot open {access_log}: {exc.strerror}") from None
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            if self.log is not None:
                self.log.close()
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise UsageError(f"serve: cannot listen on {host}:{port}: {reason}") from None
        self.port: int = self.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):  # clients vanish
            super().handle_error(request, client_address)

    def start(self) -> None:
        if self._thread is None:
            # The poll interval is how long close() waits for the serving loop to notice.
            serve = lambda: self.serve_forever(poll_interval=0.05)  # noqa: E731
            self._thread = threading.Thread(target=serve, name="lazyfs-serve", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever: only if it runs
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        with self.log_lock:
            if self.log is not None:
                self.log.close()

    def __enter__(self) -> RepositoryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_server(root: Path, host: str, port: int, access_log: Path | None) -> None:
    """Serve ``root`` until SIGINT or SIGTERM; prints one line with the URL (parsed by scripts)."""
    # Block the signals and sigwait for them rather than install handlers: a handler runs at an
    # arbitrary bytecode of the main thread, and one that touches a lock can deadlock it.
    signals = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        server = RepositoryServer(root, host, port, access_log)
        try:
            server.start()  # the serving thread inherits the mask, so it never takes them
            print(f"serving {root} at {server.url}/", flush=True)
            signal.sigwait(signals)
        finally:
            server.close()
        while signals & signal.sigpending():  # a second Ctrl-C must not kill us after all
            signal.sigwait(signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
