"""The control socket of a live mount: no request, however malformed, ends the mount."""

from __future__ import annotations

import json
import logging
import random
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from lazyfs.cli.client import ask
from lazyfs.daemon.control import serve_control
from lazyfs.daemon.runtime import control_socket
from lazyfs.errors import CacheError
from tests.mounts import Mounter, is_mounted, lazyfs, publish
from tests.origins import Origin

BLOCK = 64 * 1024
MIB = 1024 * 1024


def send_raw(mountpoint: Path, payload: bytes, *, half_close: bool = True) -> bytes:
    """Send ``payload`` as it is; the daemon's answer, or b"" if it only closed."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(60)
    try:
        client.connect(str(control_socket(mountpoint.absolute())))
        try:
            client.sendall(payload)
            if half_close:
                client.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a huge request: the daemon answered and closed before reading all of it
        data = b""
        try:
            while chunk := client.recv(1 << 16):
                data += chunk
        except ConnectionResetError:
            pass  # the daemon closed with our unread bytes still queued
        return data
    finally:
        client.close()


def error_of(answer: bytes) -> str:
    reply = json.loads(answer)
    assert set(reply) == {"error"}, reply
    assert isinstance(reply["error"], str) and reply["error"]
    return str(reply["error"])


GARBAGE = {
    "not JSON": b"not json\n",
    "a list": b"[]\n",
    "an empty object": b"{}\n",
    "a string": b'"status"\n',
    "null": b"null\n",
    "an unknown command": b'{"command": "no-such-command"}\n',
    "a command that is not a string": b'{"command": ["status"]}\n',
    "paths that are not a list": b'{"command": "prefetch", "paths": "weights.bin"}\n',
    "paths that are not strings": b'{"command": "prefetch", "paths": [1]}\n',
    "bytes that are not UTF-8": b"\xff\xfe{}\n",
    "JSON nested too deep": b"[" * 30000 + b"\n",
    "a huge line": b"x" * (4 * MIB) + b"\n",
    "nothing, then end of input": b"",
}


@pytest.fixture
def live_mount(origin: Origin, mounter: Mounter) -> tuple[Path, bytes]:
    data = random.Random(21).randbytes(6 * BLOCK + 99)
    (origin.root / "weights.bin").write_bytes(data)
    publish(origin.root)
    mountpoint, _ = mounter.mount(origin.url)
    return mountpoint, data


def assert_still_serving(mountpoint: Path, data: bytes) -> None:
    assert is_mounted(mountpoint)
    assert (mountpoint / "weights.bin").read_bytes() == data
    report = lazyfs("status", mountpoint, "--json")
    assert report.returncode == 0, report.stderr


def test_garbage_is_answered_with_an_error_and_the_mount_lives(
    live_mount: tuple[Path, bytes], mounter: Mounter
) -> None:
    mountpoint, data = live_mount
    for name, payload in GARBAGE.items():
        answer = send_raw(mountpoint, payload)
        assert answer.endswith(b"\n"), name
        error_of(answer)
        assert is_mounted(mountpoint), f"{name} ended the mount"
    assert_still_serving(mountpoint, data)
    # Bad input is not a bug: no traceback in the log.
    assert "Traceback" not in mounter.log_text()


def test_odd_clients_do_not_end_the_mount(live_mount: tuple[Path, bytes]) -> None:
    mountpoint, data = live_mount
    # A request without its newline, then end of input: still one request.
    reply = json.loads(send_raw(mountpoint, b'{"command": "status"}'))
    assert [item["path"] for item in reply["files"]] == ["weights.bin"]
    # A client that goes away before its answer, and one that says nothing and leaves.
    send_raw(mountpoint, b'{"command": "status"}\n', half_close=False)
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(control_socket(mountpoint.absolute())))
            client.sendall(b'{"command": "status"}\n')
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(control_socket(mountpoint.absolute())))

    # A hundred clients at once, good and bad.
    answers: dict[int, bytes] = {}

    def client(number: int) -> None:
        payload = b'{"command": "status"}\n' if number % 2 else b"[]\n"
        answers[number] = send_raw(mountpoint, payload)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(answers) == list(range(100))
    for number, answer in answers.items():
        if number % 2:
            assert "files" in json.loads(answer)
        else:
            error_of(answer)
    assert_still_serving(mountpoint, data)


def test_a_failing_cache_fails_the_status_request_not_the_mount(
    live_mount: tuple[Path, bytes], mounter: Mounter
) -> None:
    mountpoint, data = live_mount
    assert (mountpoint / "weights.bin").read_bytes() == data
    # Damage the cache's database under the live mount: its bookkeeping table is gone.
    with sqlite3.connect(mounter.cache_dir() / "blocks" / "cache.db") as database:
        database.execute("DROP TABLE Settings")

    result = lazyfs("status", mountpoint)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lazyfs: error: "), result.stderr
    assert "Settings" in lines[0]
    assert is_mounted(mountpoint)
    assert (mountpoint / "weights.bin").read_bytes() == data
    descriptor = (mountpoint / "weights.bin").open("rb")
    with descriptor:
        descriptor.seek(3 * BLOCK + 7)
        assert descriptor.read(100) == data[3 * BLOCK + 7 : 3 * BLOCK + 107]


def test_a_bug_in_a_handler_is_logged_with_its_traceback_and_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "control.sock"

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        if request["command"] == "bug":
            raise KeyError("no such thing")
        if request["command"] == "cache":
            raise CacheError("block cache lookup failed: disk I/O error")
        return {"ok": True}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, path, handle)
            for command in ("bug", "cache", "fine"):
                reply = await trio.to_thread.run_sync(ask, path, tmp_path, {"command": command})
                replies[command] = reply
            nursery.cancel_scope.cancel()

    replies: dict[str, dict[str, Any]] = {}
    with caplog.at_level(logging.WARNING, logger="lazyfs.daemon.control"):
        trio.run(main)
    assert "no such thing" in replies["bug"]["error"]
    assert replies["cache"] == {"error": "block cache lookup failed: disk I/O error"}
    assert replies["fine"] == {"ok": True}
    bug_records = [record for record in caplog.records if record.exc_info is not None]
    assert len(bug_records) == 1 and "bug" in bug_records[0].getMessage()
