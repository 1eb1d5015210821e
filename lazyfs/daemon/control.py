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

from lazyfs.core.blocks import block_extent
from lazyfs.core.namespace import Tree
from lazyfs.daemon.runtime import CLIENT_TIMEOUT
from lazyfs.read.reader import BlockReader

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def mount_status(tree: Tree, reader: BlockReader) -> dict[str, Any]:
    """Per-file cached bytes and the mount-wide counters (blocking: asks the disk store)."""
    files = []
    for entry in map(reader.whole_files.known, tree.entries()):
        cached = sum(
            block_extent(index, entry.size, reader.block_size)[1]
            for index, digest in enumerate(entry.blocks)
            if reader.store.contains(digest)
        )
        item: dict[str, Any] = {"path": entry.path, "size": entry.size, "cached_bytes": cached}
        if entry.check is not None:
            # Verified whole on first read: nothing counts as cached until all of it matches.
            item["verify_whole"] = entry.check.algorithm
            streamed = reader.whole_files.streamed.get(entry.path)
            if streamed is not None:
                item["streamed_bytes"] = streamed
        files.append(item)
    files.sort(key=lambda item: str(item["path"]))
    store = reader.store.statistics()
    return {
        "files": files,
        **dataclasses.asdict(reader.counters),
        "cache_blocks": store.blocks,
        "cache_bytes": store.volume,
        "cache_limit": store.limit,
        "whole_file_failures": reader.whole_files.failures,
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
    listener_socket.listen(16)
    listener = trio.SocketListener(listener_socket)
    task_status.started()

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(CLIENT_TIMEOUT):
                    request = json.loads(await _read_line(stream))
                    reply = await handle(request)
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
            except (trio.TooSlowError, trio.BrokenResourceError, ValueError) as exc:
                log.debug("control request dropped: %s", exc)

    try:
        await trio.serve_listeners(answer, [listener])
    finally:
        path.unlink(missing_ok=True)


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    return data.split(b"\n", 1)[0]
