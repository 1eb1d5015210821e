"""Mount lifecycle: checks, the manifest, the FUSE main loop, readiness and unmount.

``lazyfs mount`` without ``--foreground`` starts the same command with ``--foreground`` as a
daemon and waits on a pipe until the daemon says the mount is live or why it failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pyfuse3
import trio

from lazyfs.cache import BlockStore, load_cached_manifest, prepare_cache_dir, store_manifest
from lazyfs.control import Handler, mount_status, serve_control
from lazyfs.errors import (
    CacheError,
    LazyfsError,
    ManifestError,
    MountError,
    OriginHTTPError,
    SourceError,
    UsageError,
)
from lazyfs.fetch import HttpOrigin, RetryPolicy, make_client
from lazyfs.fs import LazyFS
from lazyfs.hubs import is_hub_source
from lazyfs.hubsource import HubOrigin, hub_settings, open_hub_manifest
from lazyfs.manifest import MANIFEST_NAME, Manifest, check_pin, parse_manifest
from lazyfs.metrics import start_metrics
from lazyfs.prefetch import Prefetcher, select_entries
from lazyfs.reader import open_block_reader
from lazyfs.tree import Tree
from lazyfs.wholefile import BlockLists

log = logging.getLogger(__name__)

READY_TIMEOUT = 180.0
UNMOUNT_TIMEOUT = 20.0
TERMINATE_GRACE = 2.0
KERNEL_READAHEAD_KB = 1024
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@dataclass(frozen=True)
class MountConfig:
    url: str
    mountpoint: Path
    cache_dir: Path
    cache_size: int
    manifest_sha256: str | None = None
    allow_other: bool = False
    # Paths to fetch into the cache once mounted (empty: everything); None: nothing.
    prefetch: tuple[str, ...] | None = None
    metrics: tuple[str, int] | None = None
    # --manifest: a manifest file or URL to use instead of the source's own.
    manifest_source: str | None = None
    token_file: Path | None = None
    # --mirror: the same published tree at other addresses; blocks only (not the manifest).
    mirrors: tuple[str, ...] = ()
    policy: RetryPolicy = field(default_factory=RetryPolicy)


def runtime_dir() -> Path:
    """Where live mounts leave their pid files, so ``lazyfs unmount`` can find the daemon."""
    base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.getuid() == 0 else "/tmp")
    path = Path(base) / f"lazyfs-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def pid_file(mountpoint: Path) -> Path:
    return runtime_dir() / f"{_mount_key(mountpoint)}.pid"


def control_socket(mountpoint: Path) -> Path:
    return runtime_dir() / f"{_mount_key(mountpoint)}.sock"


def _mount_key(mountpoint: Path) -> str:
    return hashlib.sha256(str(mountpoint.resolve()).encode()).hexdigest()[:24]


def _unescape_mountinfo(field: bytes) -> bytes:
    # The kernel writes space, tab, newline and backslash in mount points as octal escapes.
    return re.sub(rb"\\([0-7]{3})", lambda match: bytes([int(match[1], 8)]), field)


def _mount_entry(resolved: Path) -> tuple[str, bytes] | None:
    """(device "major:minor", filesystem type) of the topmost mount at ``resolved``, an
    already resolved path: read from mountinfo, so nothing here stats the mount point."""
    target = os.fsencode(resolved)
    found = None
    with open("/proc/self/mountinfo", "rb") as mounts:
        for line in mounts:
            fields = line.split(b" ")
            if _unescape_mountinfo(fields[4]) == target:
                found = fields[2].decode(), fields[fields.index(b"-") + 1]
    return found


def _mount_type(path: Path) -> bytes | None:
    """The filesystem type mounted at ``path`` (b"fuse.lazyfs", ...), or None."""
    entry = _mount_entry(path.resolve())
    return None if entry is None else entry[1]


def _is_mounted(path: Path) -> bool:
    return _mount_type(path) is not None


def check_mountpoint(mountpoint: Path) -> None:
    """Refuse, with one line, every mount point the kernel would refuse or we would regret."""
    try:
        mountpoint.stat()
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(
                f"mount point {mountpoint} is a dead mount (transport endpoint is not "
                f"connected); run: lazyfs unmount {mountpoint}"
            ) from None
        raise MountError(f"mount point {mountpoint}: {exc.strerror}") from None
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    mounted = _mount_type(mountpoint)
    if mounted == b"fuse.lazyfs" and _live_daemon(mountpoint) is None:
        raise MountError(
            f"mount point {mountpoint} is a dead lazyfs mount (its daemon is gone); "
            f"run: lazyfs unmount {mountpoint}"
        )
    if mounted is not None:
        raise MountError(f"mount point {mountpoint} is already mounted")
    if any(os.scandir(mountpoint)):
        raise MountError(f"mount point {mountpoint} is not empty")
    check_fuse_device()


def check_fuse_device() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError(
            "no /dev/fuse: load the fuse module (in a container: docker run --device /dev/fuse)"
        )
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("/dev/fuse is not readable and writable by this user")


async def open_manifest(
    origin: HttpOrigin, config: MountConfig, given: bytes | None = None
) -> tuple[Manifest, float]:
    """The manifest given with ``--manifest``, else the origin's, or, when the origin is
    unreachable, the cached copy."""
    if given is not None:
        check_pin(given, config.manifest_sha256)
        return parse_manifest(given), time.time()
    url = origin.url_for(MANIFEST_NAME)
    try:
        raw = await origin.get(MANIFEST_NAME)
    except OriginHTTPError as exc:
        if exc.status in (404, 410):
            raise ManifestError(
                f"no manifest at {url} (HTTP {exc.status}); publish one with: "
                "lazyfs manifest build DIR"
            ) from None
        raw = _cached_manifest_or_raise(config, exc)
    except SourceError as exc:
        raw = _cached_manifest_or_raise(config, exc)
    else:
        check_pin(raw, config.manifest_sha256)
        manifest = parse_manifest(raw)
        return manifest, store_manifest(config.cache_dir, config.url, raw)
    check_pin(raw, config.manifest_sha256)
    cached = load_cached_manifest(config.cache_dir, config.url)
    assert cached is not None
    return parse_manifest(raw), cached[1]


def _cached_manifest_or_raise(config: MountConfig, cause: SourceError) -> bytes:
    cached = load_cached_manifest(config.cache_dir, config.url)
    if cached is None:
        raise SourceError(f"cannot fetch the manifest: {cause}") from None
    log.warning("origin unavailable (%s); mounting from the cached manifest", cause)
    return cached[0]


async def load_manifest_source(source: str, client: httpx.AsyncClient) -> bytes:
    """The manifest given with ``--manifest``: a local file, or a URL (fetched without any
    hub token: it is not the hub)."""
    if source.startswith(("http://", "https://")):
        body, _ = await HttpOrigin(source, client).get_small(source)
        return body
    try:
        return await trio.Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --manifest {source}: {exc.strerror}") from None


async def serve_mount(config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount, serve until unmounted or signalled, and always unmount on the way out."""
    policy = config.policy
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(make_client(policy))
        given = None
        if config.manifest_source is not None:
            given = await load_manifest_source(config.manifest_source, client)
            if config.manifest_sha256 is None and config.manifest_source.startswith("http:"):
                log.warning(
                    "--manifest %s comes over plain http without --manifest-sha256: "
                    "its block digests are trusted as they arrive",
                    config.manifest_source,
                )
        origin: HttpOrigin
        if is_hub_source(config.url):
            origin = HubOrigin(*hub_settings(config.url, config.token_file), client, policy)
            stack.callback(origin.close)
            manifest, mtime = await open_hub_manifest(origin, given, config.manifest_sha256)
        else:
            origin = HttpOrigin(config.url, client, policy)
            stack.callback(origin.close)
            manifest, mtime = await open_manifest(origin, config, given)
        mirrors = [HttpOrigin(url, client, policy) for url in config.mirrors]
        for mirror in mirrors:
            stack.callback(mirror.close)
        store = BlockStore(config.cache_dir / "blocks", config.cache_size)
        stack.callback(store.close)
        block_lists = BlockLists(config.cache_dir / "verified")
        reader = await stack.enter_async_context(
            open_block_reader(
                origin,
                store,
                manifest.block_size,
                block_lists,
                mirrors,
                fetch_attempts=policy.attempts,
                deadline=policy.deadline,
            )
        )
        if config.metrics is not None:
            stack.callback(start_metrics(config.metrics, reader, [origin, *mirrors]))
        operations = LazyFS(Tree(manifest), reader, mtime)
        await _run_fuse(operations, [origin, *mirrors], config, on_ready, manifest)


async def _run_fuse(
    operations: LazyFS,
    origins: list[HttpOrigin],
    config: MountConfig,
    on_ready: Callable[[], None],
    manifest: Manifest,
) -> None:
    options = {"ro", "default_permissions", "subtype=lazyfs", f"fsname={_fsname(config.url)}"}
    if config.allow_other:
        options.add("allow_other")
    # Resolved before mounting: once mounted, a stat of the mount point from this thread
    # would wait for an answer only this thread can give.
    pid_path = pid_file(config.mountpoint)
    control_path = control_socket(config.mountpoint)
    resolved = config.mountpoint.resolve()
    try:
        pyfuse3.init(operations, str(config.mountpoint), options)
    except RuntimeError as exc:
        raise MountError(f"cannot mount at {config.mountpoint}: {exc}") from None
    try:
        pid_path.write_text(f"{os.getpid()}\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fuse_main, nursery.cancel_scope)
            nursery.start_soon(_raise_kernel_readahead, operations, resolved)
            nursery.start_soon(_terminate_on_signal, nursery.cancel_scope)
            nursery.start_soon(_load_cache_index, operations.reader.store)
            prefetcher = Prefetcher(operations.reader, nursery)
            handler = _control_handler(operations, origins, prefetcher)
            await nursery.start(serve_control, control_path, handler)
            if config.prefetch is not None:
                chosen, unknown = select_entries(operations.tree.entries(), config.prefetch)
                for name in unknown:
                    log.warning("--prefetch: %s is not in the mount", name)
                prefetcher.start(chosen)
            log.info(
                "mounted %s at %s: %d files, %d bytes, %d-byte blocks",
                config.url,
                config.mountpoint,
                len(manifest.files),
                manifest.total_size,
                manifest.block_size,
            )
            on_ready()
    finally:
        pyfuse3.close(unmount=True)
        pid_path.unlink(missing_ok=True)
        log.info("unmounted %s", config.mountpoint)


def _control_handler(
    operations: LazyFS, origins: list[HttpOrigin], prefetcher: Prefetcher
) -> Handler:
    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "status":
            report = await trio.to_thread.run_sync(mount_status, operations.tree, operations.reader)
            report["fetch_retries"] = sum(origin.retries for origin in origins)
            report["fetch_errors"] = sum(origin.errors for origin in origins)
            report["prefetch"] = prefetcher.report()
            return report
        if command == "prefetch":
            paths = request.get("paths") or []
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                return {"error": "paths must be a list of strings"}
            chosen, unknown = select_entries(operations.tree.entries(), paths)
            run = None if unknown else prefetcher.start(chosen).id
            return {"unknown": unknown, "files": [entry.path for entry in chosen], "run": run}
        if command == "cancel_prefetch":
            run_id = request.get("run")
            if run_id is not None and (not isinstance(run_id, int) or isinstance(run_id, bool)):
                return {"error": "run must be a prefetch run's number"}
            return {"cancelled": prefetcher.cancel(run_id)}
        return {"error": f"unknown command {command!r}"}

    return handle


async def _load_cache_index(store: BlockStore) -> None:
    """Read which blocks the cache holds once, beside serving: the first ``lazyfs status``
    need not wait for it, and nothing waits for it to mount."""
    try:
        await trio.to_thread.run_sync(store.sync_index)
    except CacheError as exc:
        log.warning("%s", exc)


async def _raise_kernel_readahead(operations: LazyFS, resolved: Path) -> None:
    """Ask the kernel for reads of up to 1 MiB instead of 128 KiB: a quarter of the requests
    for the same bytes. Only after the FUSE handshake, which sets the readahead to the lower
    of the current value and the one the kernel offered at mount. ``resolved`` was resolved
    before mounting: a stat of our own mount point from this thread would wait for an
    answer only this thread can give."""
    await operations.initialized.wait()
    await trio.sleep(0.01)  # the handshake's reply reaches the kernel once the loop yields
    entry = _mount_entry(resolved)
    if entry is None:
        return
    setting = Path(f"/sys/class/bdi/{entry[0]}/read_ahead_kb")
    try:
        setting.write_text(f"{KERNEL_READAHEAD_KB}\n")
    except OSError as exc:
        log.info("kernel readahead left at its default (%s: %s)", setting, exc.strerror)


async def _fuse_main(scope: trio.CancelScope) -> None:
    await pyfuse3.main()
    # The loop ends when the kernel unmounts us (umount, fusermount -u) or on terminate().
    scope.cancel()


async def _terminate_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s; unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            # Reads still waiting on the origin get a moment to finish; then they are
            # cancelled, and the kernel fails them when the mount goes away.
            await trio.sleep(TERMINATE_GRACE)
            scope.cancel()
            return


def _fsname(url: str) -> str:
    """The mount's source as /proc/mounts shows it: the URL without any credentials.
    Mount options are comma-separated, so a URL with a comma is shown as "lazyfs"."""
    parts = urlsplit(url)
    shown = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return shown if "," not in shown and len(shown) < 1024 else "lazyfs"


def run_foreground(config: MountConfig, ready_fd: int | None = None) -> None:
    """Run the mount in this process until it is unmounted; report readiness on ``ready_fd``."""

    def report(line: str) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            try:
                os.write(ready_fd, f"{line}\n".encode())
                os.close(ready_fd)
            except OSError:
                pass  # the waiting parent is gone; nobody to tell
            ready_fd = None

    try:
        check_mountpoint(config.mountpoint)
        prepare_cache_dir(config.cache_dir)
        _return_large_buffers_to_the_system()
        try:
            trio.run(serve_mount, config, lambda: report("ready"))
        except BaseExceptionGroup as group:
            # Nurseries wrap what their tasks raise; a lazyfs error is still one line.
            found = _lazyfs_error_in(group)
            if found is None:
                raise
            raise found from None
    except LazyfsError as exc:
        report(f"error {exc.exit_code} {exc}")
        raise


def _return_large_buffers_to_the_system() -> None:
    """Blocks are megabytes, allocated and freed by several threads. glibc raises its mmap
    threshold after the first such free and then serves them from per-thread heaps, which
    fragment and never shrink; a fixed threshold keeps each block its own mapping, returned
    to the system when freed, so the daemon's memory follows what it holds."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):
        log.debug("mallopt is not available; memory use may run higher")


def _lazyfs_error_in(group: BaseExceptionGroup[BaseException]) -> LazyfsError | None:
    """The lazyfs error a nursery's group carries, if everything in it is one."""
    matched, rest = group.split(LazyfsError)
    if matched is None or rest is not None:
        return None
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, LazyfsError) else None


def start_background(config: MountConfig, log_file: Path, extra_args: list[str]) -> None:
    """Start the mount daemon and return once the mount is live; raise if it failed."""
    check_mountpoint(config.mountpoint)
    prepare_cache_dir(config.cache_dir)
    read_end, write_end = os.pipe()
    # Isolated from the caller's working directory: `python -m` would otherwise import
    # lazyfs from there first (a directory named lazyfs, such as the default cache dir in
    # ~/.cache, breaks the mount; a lazyfs.py would run as the mounting user). -P keeps it
    # off sys.path; cwd "/" keeps the daemon from holding the directory busy. Every path in
    # the command is absolute.
    command = [
        sys.executable,
        "-P",
        "-m",
        "lazyfs",
        "mount",
        config.url,
        str(config.mountpoint),
        "--foreground",
        "--cache-dir",
        str(config.cache_dir),
        "--cache-size",
        str(config.cache_size),
        "--log-file",
        str(log_file),
        "--ready-fd",
        str(write_end),
        *extra_args,
    ]
    with open(log_file, "ab") as log_handle:
        daemon = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=log_handle,
            pass_fds=(write_end,),
            start_new_session=True,
            cwd="/",
        )
    os.close(write_end)
    try:
        message = _read_status(read_end, daemon)
    finally:
        os.close(read_end)
    if message == "ready":
        return
    if message.startswith("error "):
        _, code, text = message.split(" ", 2)
        daemon.wait(timeout=30)
        error = MountError(text)
        error.exit_code = int(code)
        raise error
    daemon.kill()
    daemon.wait()
    raise MountError(f"{message}; see {log_file}")


def _read_status(read_end: int, daemon: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    received = b""
    while b"\n" not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"the mount daemon did not become ready in {READY_TIMEOUT:.0f}s"
        readable, _, _ = select.select([read_end], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(read_end, 4096)
        if not chunk:
            code = daemon.wait(timeout=30)
            return f"the mount daemon exited with status {code} before the mount was ready"
        received += chunk
    return received.split(b"\n", 1)[0].decode(errors="replace")


def unmount(mountpoint: Path, timeout: float = UNMOUNT_TIMEOUT) -> None:
    """Stop the daemon serving ``mountpoint`` (it unmounts on the way out) and wait for it;
    a mount whose daemon died is detached with fusermount."""
    daemon_pid = _live_daemon(mountpoint)
    if daemon_pid is not None:
        os.kill(daemon_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(daemon_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(daemon_pid):
            raise MountError(f"the daemon for {mountpoint} (pid {daemon_pid}) did not stop")
    if not _is_mounted(mountpoint):
        if daemon_pid is None:
            raise MountError(f"{mountpoint} is not mounted")
        return
    result = subprocess.run(
        ["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise MountError(f"cannot unmount {mountpoint}: {reason}")


def _live_daemon(mountpoint: Path) -> int | None:
    path = pid_file(mountpoint)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not _pid_alive(pid) or b"lazyfs" not in _cmdline(pid):
        path.unlink(missing_ok=True)
        return None
    return pid


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except FileNotFoundError:
        return b""


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            # A zombie has exited; only its parent has yet to collect it.
            return stat_file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
