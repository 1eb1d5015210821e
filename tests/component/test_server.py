"""``lazyfs serve`` against real sockets, and nginx as the yardstick it must agree with."""

from __future__ import annotations

import http.client
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from lazyfs.errors import UsageError
from lazyfs.publish.server import RepositoryServer, parse_range
from tests.origins import (
    NGINX,
    AccessRecord,
    Origin,
    read_access_log,
    start_lazyfs_origin,
    start_nginx_origin,
)
from tests.waiting import wait_until

SIZE = 1 << 20
DATA = random.Random(1).randbytes(SIZE)
SECRET = b"TOP SECRET: this file lies outside the served root"

# httpx builds an SSL context per Client unless given one: 60 ms each, most of this file's time.
TLS = ssl.create_default_context()

needs_nginx = pytest.mark.skipif(not NGINX.exists(), reason=f"{NGINX} is not installed")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "model.bin").write_bytes(DATA)
    (root / "empty.bin").write_bytes(b"")
    (root / "sub" / "x.txt").write_bytes(b"x")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "escape-dir").symlink_to(tmp_path)
    (root / "relative-escape").symlink_to("../secret.txt")
    (root / "inside").symlink_to("model.bin")
    (root / "inside-dir").symlink_to("sub")
    return root


@pytest.fixture
def access_log(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
def server(root: Path, access_log: Path) -> Iterator[RepositoryServer]:
    with RepositoryServer(root, access_log=access_log) as server:
        yield server


@pytest.fixture
def client(server: RepositoryServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10, verify=TLS) as client:
        yield client


def raw_request(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Status and body, with the target sent byte for byte (httpx would normalise it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode("latin-1"))
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


def records(log: Path, at_least: int) -> list[AccessRecord]:
    # The server logs after the response has left: the client can be first.
    wait_until(lambda: len(read_access_log(log)) >= at_least)
    return read_access_log(log)


# -- whole files, HEAD, ranges --------------------------------------------------------------


def test_get_whole_file(client: httpx.Client) -> None:
    response = client.get("/model.bin")
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/octet-stream"
    assert re.fullmatch(r'"[0-9a-f-]+"', response.headers["etag"])
    assert response.headers["last-modified"].endswith(" GMT")
    assert "content-range" not in response.headers


def test_empty_file_and_query_string(client: httpx.Client) -> None:
    assert client.get("/empty.bin").content == b""
    assert client.get("/model.bin?revision=main&x=%2e%2e").content == DATA


def test_head_has_length_and_no_body(client: httpx.Client) -> None:
    response = client.head("/model.bin")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["accept-ranges"] == "bytes"
    # RFC 9110 defines Range for GET only: HEAD reports the whole representation.
    ranged = client.head("/model.bin", headers={"Range": "bytes=0-9"})
    assert (ranged.status_code, ranged.headers["content-length"]) == (200, str(SIZE))


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=0-99", 0, 99),
        ("bytes=1000-4095", 1000, 4095),
        ("bytes=100-", 100, SIZE - 1),
        ("bytes=-100", SIZE - 100, SIZE - 1),
        ("bytes=-1", SIZE - 1, SIZE - 1),
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1),
        (f"bytes={SIZE - 1}-", SIZE - 1, SIZE - 1),
        ("bytes=0-99999999999999999999", 0, SIZE - 1),
        ("bytes=-99999999999999999999", 0, SIZE - 1),
        ("Bytes=5-9", 5, 9),
    ],
)
def test_single_range(client: httpx.Client, header: str, first: int, last: int) -> None:
    response = client.get("/model.bin", headers={"Range": header})
    assert response.status_code == 206
    assert response.content == DATA[first : last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert response.headers["content-length"] == str(last - first + 1)
    assert response.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize(
    ("path", "header", "size"),
    [
        ("/model.bin", f"bytes={SIZE}-", SIZE),
        ("/model.bin", f"bytes={SIZE}-{SIZE + 10}", SIZE),
        ("/model.bin", "bytes=-0", SIZE),
        ("/empty.bin", "bytes=0-0", 0),
        ("/empty.bin", "bytes=0-", 0),
        ("/empty.bin", "bytes=-1", 0),
    ],
)
def test_unsatisfiable_range(client: httpx.Client, path: str, header: str, size: int) -> None:
    response = client.get(path, headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{size}"
    assert DATA[:100] not in response.content


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1,5-6",
        "bytes=0-1, 5-6",
        "bytes=abc",
        "items=0-1",
        "bytes=5-2",
        "bytes=",
        "bytes=-",
        "0-1",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=1_0-20",
        "bytes=0x1-2",
    ],
)
def test_multiple_or_malformed_ranges_serve_the_whole_file(
    client: httpx.Client, header: str
) -> None:
    response = client.get("/model.bin", headers={"Range": header})
    assert response.status_code == 200
    assert response.content == DATA
    assert "content-range" not in response.headers


def test_parse_range_edges() -> None:
    assert parse_range("bytes=0-", 1) == (0, 0)
    assert parse_range(" bytes=2-3 ", 10) == (2, 3)
    assert parse_range("bytes=٣-٤", 10) is None  # non-ASCII digits are not digits here


# -- validators -----------------------------------------------------------------------------


def test_etag_is_stable_and_if_none_match_gives_304(client: httpx.Client, root: Path) -> None:
    etag = client.get("/model.bin").headers["etag"]
    assert client.head("/model.bin").headers["etag"] == etag
    assert not etag.startswith("W/")
    for value in (etag, f"W/{etag}", "*", f'"other", {etag}'):
        for method in ("GET", "HEAD"):
            response = client.request(method, "/model.bin", headers={"If-None-Match": value})
            assert (response.status_code, response.content) == (304, b""), value
            assert response.headers["etag"] == etag
    assert client.get("/model.bin", headers={"If-None-Match": '"other"'}).status_code == 200

    # Same size, new bytes, new mtime: a cached copy must not be revalidated.
    stat = (root / "model.bin").stat()
    (root / "model.bin").write_bytes(DATA[::-1])
    os.utime(root / "model.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = client.get("/model.bin", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.content == DATA[::-1]
    assert changed.headers["etag"] != etag


def test_if_range(client: httpx.Client) -> None:
    whole = client.get("/model.bin")
    etag, modified = whole.headers["etag"], whole.headers["last-modified"]
    cases = {
        etag: 206,
        modified: 206,
        '"not-the-etag"': 200,
        f"W/{etag}": 200,  # If-Range compares strongly: a weak tag never matches
        "Thu, 01 Jan 1998 00:00:00 GMT": 200,
        "not a date": 200,
    }
    for value, status in cases.items():
        response = client.get("/model.bin", headers={"Range": "bytes=10-19", "If-Range": value})
        assert response.status_code == status, value
        assert response.content == (DATA[10:20] if status == 206 else DATA)


# -- what is not served ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/sub/../../secret.txt",
        "/a/../../secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/sub/..%2F..%2Fsecret.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/./../secret.txt",
        "/escape",
        "/relative-escape",
        "/escape-dir/secret.txt",
        "/inside-dir/../../secret.txt",
        "/%c0%ae%c0%ae/secret.txt",  # overlong UTF-8 dots
        "/model.bin%00",
        "/%00../secret.txt",
        "secret.txt",
        "../secret.txt",
        "http://127.0.0.1/../secret.txt",
        "/../../../../../../../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_nothing_outside_the_root_is_reachable(
    server: RepositoryServer, tmp_path: Path, target: str
) -> None:
    status, body = raw_request(server.port, target)
    assert status in (400, 404)
    assert SECRET not in body
    assert b"root:" not in body


def test_absolute_paths_are_relative_to_the_root(server: RepositoryServer, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    for target in ("/" + str(secret), "//" + str(secret), "/" + quote(str(secret), safe="")):
        status, body = raw_request(server.port, target)
        assert status == 404, target
        assert SECRET not in body


def test_symlinks_inside_the_root_are_served(client: httpx.Client) -> None:
    assert client.get("/inside").content == DATA
    assert client.get("/inside-dir/x.txt").content == b"x"


@pytest.mark.parametrize("path", ["/missing", "/sub", "/sub/", "/", "/inside-dir", "/sub/x.txt/y"])
def test_missing_files_and_directories_are_404(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 404
    assert client.head(path).status_code == 404


def test_other_methods_are_501(client: httpx.Client) -> None:
    assert client.post("/model.bin", content=b"x").status_code == 501
    assert client.get("/model.bin", headers={"Range": "bytes=0-0"}).content == DATA[:1]


# -- connections ----------------------------------------------------------------------------


def test_keep_alive_survives_errors(server: RepositoryServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        results = []
        for path, headers in [
            ("/model.bin", {"Range": "bytes=0-3"}),
            ("/missing", {}),
            ("/empty.bin", {"Range": "bytes=0-0"}),
            ("/model.bin", {"If-None-Match": "*"}),
            ("/model.bin", {}),
        ]:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            results.append((response.status, len(response.read())))
            sock = conn.sock
            assert sock is not None
            if len(results) == 1:
                first = sock
            assert sock is first, "the server closed a keep-alive connection"
        assert [status for status, _ in results] == [206, 404, 416, 304, 200]
        assert results[-1][1] == SIZE
    finally:
        conn.close()


def test_fifty_concurrent_clients_get_exact_bytes(server: RepositoryServer) -> None:
    def client_reads(seed: int) -> int:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=30, verify=TLS) as client:
            for _ in range(10):
                first = rng.randrange(SIZE)
                last = min(SIZE - 1, first + rng.randrange(1, 64 * 1024))
                response = client.get("/model.bin", headers={"Range": f"bytes={first}-{last}"})
                assert response.status_code == 206
                assert response.content == DATA[first : last + 1]
        return 10

    with ThreadPoolExecutor(50) as pool:
        assert sum(pool.map(client_reads, range(50))) == 500


def test_client_disconnect_is_quiet(
    root: Path, access_log: Path, server: RepositoryServer, capfd: pytest.CaptureFixture[str]
) -> None:
    big = 32 << 20
    (root / "big.bin").write_bytes(bytes(big))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        # Unread data makes close() send a RST; the server is mid-sendfile.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    log = records(access_log, 1)
    assert [(r.path, r.status) for r in log] == [("/big.bin", 200)]
    assert 0 <= log[0].bytes_sent < big
    with httpx.Client(base_url=server.url, verify=TLS) as client:
        assert client.get("/model.bin", headers={"Range": "bytes=0-9"}).content == DATA[:10]
    assert "Traceback" not in capfd.readouterr().err


# -- the access log -------------------------------------------------------------------------


def test_access_log_format(client: httpx.Client, access_log: Path) -> None:
    client.get("/model.bin", headers={"Range": "bytes=0-9"})
    client.head("/model.bin")
    client.get("/model.bin?x=1")
    client.get("/missing")
    client.get("/empty.bin", headers={"Range": "bytes=0-0"})
    client.get("/a%22b%0Ac", headers={"Range": 'bytes="1"'})
    client.get("/caf%C3%A9//x")
    expected_lines = [
        'GET /model.bin 206 10 "bytes=0-9"',
        'HEAD /model.bin 200 0 "-"',
        f'GET /model.bin 200 {SIZE} "-"',
        'GET /missing 404 14 "-"',
        'GET /empty.bin 416 36 "bytes=0-0"',
        'GET /a\\x22b\\x0Ac 404 14 "bytes=\\x221\\x22"',
        'GET /caf\\xC3\\xA9/x 404 14 "-"',
    ]
    records(access_log, len(expected_lines))
    assert access_log.read_text().splitlines() == expected_lines
    parsed = read_access_log(access_log)
    assert parsed[0] == AccessRecord("GET", "/model.bin", 206, 10, "bytes=0-9")
    assert parsed[1] == AccessRecord("HEAD", "/model.bin", 200, 0, None)
    assert parsed[5] == AccessRecord("GET", '/a"b\nc', 404, 14, 'bytes="1"')
    assert parsed[6].path == "/café/x"


def test_unparseable_requests_are_logged_and_closed(
    server: RepositoryServer, access_log: Path
) -> None:
    status, _ = raw_request(server.port, "/model.bin", method="BREW")
    assert status == 501
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):  # until the server closes: it must, after garbage
            response += chunk
    assert response.startswith(b"HTTP/1.1 400 ")
    assert [(r.method, r.path, r.status) for r in records(access_log, 2)] == [
        ("BREW", "/model.bin", 501),
        ("-", "", 400),
    ]


# -- the Python API and the command line ----------------------------------------------------


def test_server_refuses_bad_roots_and_busy_ports(root: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        RepositoryServer(root / "missing")
    with pytest.raises(UsageError, match="is not a directory"):
        RepositoryServer(root / "model.bin")
    with RepositoryServer(root) as first:
        with pytest.raises(UsageError, match=f"127.0.0.1:{first.port}: address already in use"):
            RepositoryServer(root, port=first.port)
        assert first.url == f"http://127.0.0.1:{first.port}"
    RepositoryServer(root).close()  # closing a server never started does not hang


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_its_url_and_stops_on_signal(
    root: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    log = tmp_path / "cli.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazyfs", "serve", str(root), "--port", "0", "--access-log", log],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(
            rf"serving {re.escape(str(root))} at (http://127\.0\.0\.1:\d+)/\n", line
        )
        assert match, line
        assert (
            httpx.get(f"{match[1]}/model.bin", headers={"Range": "bytes=0-1"}, verify=TLS).content
            == DATA[:2]
        )
        # The request is logged just after its answer has left: stop the server once it is.
        assert wait_until(lambda: read_access_log(log) != [])
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert (stdout, stderr) == ("", "")
    assert read_access_log(log) == [AccessRecord("GET", "/model.bin", 206, 2, "bytes=0-1")]


def test_cli_errors_are_one_line(root: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "lazyfs", "serve", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=20)

    missing = serve(str(root / "missing"), "--port", "0")
    assert missing.returncode == 2
    assert missing.stderr == f"lazyfs: error: serve: {root / 'missing'} is not a directory\n"
    with RepositoryServer(root) as busy:
        taken = serve(str(root), "--port", str(busy.port))
    assert taken.returncode == 2
    assert taken.stderr.count("\n") == 1
    assert f"127.0.0.1:{busy.port}" in taken.stderr


# -- the two origins the mount tests use ----------------------------------------------------


def test_origin_restarts_on_the_same_port(origin: Origin) -> None:
    (origin.root / "f.bin").write_bytes(DATA[:1000])
    url = origin.url
    assert origin.running
    assert httpx.get(f"{url}/f.bin", verify=TLS).content == DATA[:1000]
    origin.stop()
    assert not origin.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/f.bin", verify=TLS)
    origin.start()
    assert (origin.running, origin.url) == (True, url)
    assert httpx.get(f"{url}/f.bin", headers={"Range": "bytes=0-4"}, verify=TLS).content == DATA[:5]
    assert origin.requests(where=lambda r: r.status == 206, at_least=1) == [
        AccessRecord("GET", "/f.bin", 206, 5, "bytes=0-4")
    ]
    origin.clear_log()
    assert origin.requests() == []


HUGE = "9" * 5000  # longer than int() converts (4,300 digits); past any off_t


@pytest.mark.parametrize(
    ("header", "status", "content_range"),
    [
        (f"bytes=0-{HUGE}", 416, "bytes */1000"),
        (f"bytes=-{HUGE}", 416, "bytes */1000"),
        (f"bytes={HUGE}-", 416, "bytes */1000"),
        (f"bytes={HUGE}-2", 416, "bytes */1000"),
        (f"bytes={'0' * 5000}1-5", 206, "bytes 1-5/1000"),
        (f"bytes=5-{'0' * 5000}7", 206, "bytes 5-7/1000"),
    ],
)
def test_numbers_too_long_to_convert_get_416_like_nginx(
    origin: Origin, header: str, status: int, content_range: str
) -> None:
    (origin.root / "f.bin").write_bytes(DATA[:1000])
    connection = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=10)
    try:
        connection.request("GET", "/f.bin", headers={"Range": header})
        response = connection.getresponse()
        response.read()
        assert (response.status, response.getheader("Content-Range")) == (status, content_range)
        # The connection lives on: the next request on it is answered.
        connection.request("GET", "/f.bin", headers={"Range": "bytes=0-4"})
        again = connection.getresponse()
        assert (again.status, again.read()) == (206, DATA[:5])
    finally:
        connection.close()


@needs_nginx
def test_lazyfs_and_nginx_agree(tmp_path: Path) -> None:
    root = tmp_path / "published"
    (root / "nested dir").mkdir(parents=True)
    (root / "nested dir" / "w.bin").write_bytes(DATA)
    path = "/nested dir/w.bin"
    checks = [
        ("bytes=0-9", 0, 9),
        ("bytes=-10", SIZE - 10, SIZE - 1),
        ("bytes=1000-", 1000, SIZE - 1),
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1),
        (f"bytes=5-{SIZE + 100}", 5, SIZE - 1),
    ]
    seen: dict[str, list[AccessRecord]] = {}
    for start in (start_lazyfs_origin, start_nginx_origin):
        origin = start(root, tmp_path / start.__name__)
        try:
            with httpx.Client(base_url=origin.url, timeout=10, verify=TLS) as client:
                for header, first, last in checks:
                    response = client.get(quote(path), headers={"Range": header})
                    assert response.status_code == 206, origin.name
                    assert response.content == DATA[first : last + 1], origin.name
                    expected_range = f"bytes {first}-{last}/{SIZE}"
                    assert response.headers["content-range"] == expected_range, origin.name
                unsatisfiable = client.get(quote(path), headers={"Range": f"bytes={SIZE}-"})
                assert unsatisfiable.status_code == 416, origin.name
                assert unsatisfiable.headers["content-range"] == f"bytes */{SIZE}", origin.name
                assert client.get("/missing").status_code == 404
                whole = client.get(quote(path))
                assert (whole.status_code, whole.content) == (200, DATA)
                revalidated = client.get(
                    quote(path), headers={"If-None-Match": whole.headers["etag"]}
                )
                assert revalidated.status_code == 304
            seen[origin.name] = origin.requests(at_least=len(checks) + 4)
        finally:
            origin.stop()
    lazyfs, nginx = seen["lazyfs"], seen["nginx"]
    assert len(lazyfs) == len(nginx) == len(checks) + 4
    # Error pages differ in size (nginx sends HTML); everything else is the same record.
    for ours, theirs in zip(lazyfs, nginx, strict=True):
        if ours.status < 400:
            assert ours == theirs
        else:
            assert (ours.method, ours.path, ours.status, ours.range) == (
                theirs.method,
                theirs.path,
                theirs.status,
                theirs.range,
            )
    assert lazyfs[0] == AccessRecord("GET", path, 206, 10, "bytes=0-9")
