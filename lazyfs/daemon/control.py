"""The live mount's control socket: ``lazyfs status`` and ``lazyfs wait`` ask the daemon.

One Unix socket per mount, beside its pid file (0700 directory). A client sends one JSON line
(``{"command": "status"}``) and reads one JSON line back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from lazyfs.core.blocks import held_bytes
from lazyfs.core.namespace import Tree
from lazyfs.daemon.runtime import CLIENT_TIMEOUT
from lazyfs.errors import LazyfsError
from lazyfs.read.reader import BlockReader
from lazyfs.sources.hub import HubOrigin

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def mount_status(tree: Tree, reader: BlockReader) -> dict[str, Any]:
    """Per-file cached bytes and the mount-wide counters (blocking: asks the disk store for
    its statistics, and reloads its in-memory index when another process changed it; never
    once per block)."""
    store = reader.store.sync_index()
    held = reader.store.held
    files = []
    for listed in tree.entries():
        entry = reader.whole_files.known(listed)
        xet = reader.xet
        cached = held_bytes(reader.stored_keys(entry), entry.size, reader.block_size, held)
        item: dict[str, Any] = {
            "path": tree.shown_path(entry),
            "size": entry.size,
            "cached_bytes": cached,
        }
        if xet is not None and entry.path in xet.listed:
            # Proven against the Hub's xetHash window by window (or whole, when the CAS
            # cannot prove windows of it).
            item["verified_by"] = xet.mode[entry.path]
            item["verified_bytes"] = xet.verified_bytes(entry.path)
        elif listed.check is not None:
            item["verified_by"] = "whole"
            item["verified_bytes"] = entry.size if entry.check is None else 0
        else:
            item["verified_by"] = "manifest"
            item["verified_bytes"] = cached
        if entry.check is not None:
            # Verified whole on first read: nothing counts as cached until all of it matches.
            item["verify_whole"] = entry.check.algorithm
            streamed = reader.whole_files.streamed.get(entry.path)
            if streamed is not None:
                item["streamed_bytes"] = streamed
        files.append(item)
    files.sort(key=lambda item: str(item["path"]))
    origin = reader.fetcher.primary
    offline = (
        {}
        if not isinstance(origin, HubOrigin) or origin.offline is None
        else {"offline": origin.offline.describe()}
    )
    return {
        "files": files,
        **offline,
        **dataclasses.asdict(reader.counters),
        "cache_blocks": store.blocks,
        "cache_bytes": store.volume,
        "cache_limit": store.limit,
        # Files verified whole that did not match, Xet files proven in full included.
        "whole_file_failures": reader.whole_files.failures
        + (0 if reader.xet is None else len(reader.xet.failed)),
        "fetch_retries": reader.fetcher.counters.retries,
        "fetch_errors": reader.fetcher.counters.errors,
    }


async def serve_control(
    path: Path, handle: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer requests on ``path`` until cancelled; the socket file is removed on exit.
    Started (``nursery.start``) once the socket accepts connections."""
    path.unlink(missing_ok=True)
    listener_socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener_socket.bind(str(path))
    os.chmod(path, 0o600)
    # A full backlog refuses a client's connect at once (EAGAIN): leave room for many.
    listener_socket.listen(socket.SOMAXCONN)
    listener = trio.SocketListener(listener_socket)
    task_status.started()

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(CLIENT_TIMEOUT):
                    reply = await _reply_to(stream, handle)
                    await stream.send_all(reply)
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("control connection dropped: %r", exc)
            except Exception:
                # Whatever goes wrong with one client, the mount goes on serving.
                log.exception("control connection failed")

    try:
        await trio.serve_listeners(answer, [listener])
    finally:
        path.unlink(missing_ok=True)


async def _reply_to(stream: trio.SocketStream, handle: Handler) -> bytes:
    """The answer to the one request ``stream`` carries, as a JSON line: the handler's reply,
    or ``{"error": ...}`` for a bad request or a failed one (a bug is logged with its
    traceback, and answered too)."""
    try:
        request = json.loads(await _read_line(stream))
    except RequestTooLarge:
        return _encode({"error": f"request longer than {MAX_REQUEST} bytes"})
    except (ValueError, RecursionError):
        return _encode({"error": "not a JSON request"})
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        return _encode({"error": 'a request is a JSON object with a "command" string'})
    command = request["command"]
    try:
        return _encode(await handle(request))
    except LazyfsError as exc:
        log.warning("control request %r failed: %s", command, exc)
        return _encode({"error": str(exc)})
    except Exception as exc:
        log.exception("control request %r failed", command)
        return _encode({"error": f"internal error: {exc!r}"})


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply).encode() + b"\n"


class RequestTooLarge(ValueError):
    pass


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break  # end of input ends the request too
        data += chunk
        if len(data) > MAX_REQUEST:
            raise RequestTooLarge(len(data))
    return data.split(b"\n", 1)[0]
