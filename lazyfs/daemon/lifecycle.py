"""Mount lifecycle: checks, the manifest, the FUSE main loop, readiness and unmount.

``lazyfs mount`` without ``--foreground`` forks a daemon that runs this (see background.py)
and waits on a pipe until the daemon says the mount is live or why it failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pyfuse3
import trio

from lazyfs.cache.blocklists import BlockLists
from lazyfs.cache.directory import prepare_cache_dir
from lazyfs.cache.store import BlockStore
from lazyfs.cache.xetlists import XetLists
from lazyfs.core.hubs import is_hub_source
from lazyfs.core.manifest import Manifest
from lazyfs.core.namespace import Tree, files_under
from lazyfs.core.selection import select_entries
from lazyfs.daemon.config import MountConfig
from lazyfs.daemon.control import Handler, mount_status, serve_control
from lazyfs.daemon.fs import LazyFS
from lazyfs.daemon.hubmount import open_hub_mount
from lazyfs.daemon.manifestchoice import load_manifest_source, open_manifest
from lazyfs.daemon.mountpoint import check_mountpoint, mount_entry
from lazyfs.daemon.runtime import control_socket, pid_file
from lazyfs.daemon.signedmount import signed_manifest
from lazyfs.errors import (
    CacheError,
    LazyfsError,
    MountError,
)
from lazyfs.read.prefetch import Prefetcher
from lazyfs.read.reader import open_block_reader
from lazyfs.sources.hub import HubOrigin, xet_source_for
from lazyfs.sources.hubsettings import hub_settings
from lazyfs.sources.origin import HttpOrigin, make_client
from lazyfs.sources.transport import Transport

if TYPE_CHECKING:
    from lazyfs.daemon.metrics import MountMetrics

log = logging.getLogger(__name__)

TERMINATE_GRACE = 2.0
KERNEL_READAHEAD_KB = 1024
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


async def serve_mount(config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount, serve until unmounted or signalled, and always unmount on the way out."""
    policy = config.policy
    transport = Transport.from_environment(config.ca_file)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(make_client(policy, transport))
        given = None
        if config.manifest_source is not None:
            given = await load_manifest_source(config.manifest_source, client, transport)
            unchecked = config.manifest_sha256 is None and config.signature is None
            if unchecked and config.manifest_source.startswith("http:"):
                log.warning(
                    "--manifest %s comes over plain http without --manifest-sha256 or a "
                    "signature: "
                    "its block digests are trusted as they arrive",
                    config.manifest_source,
                )
        origin: HttpOrigin
        if is_hub_source(config.url):
            settings = hub_settings(config.url, config.token_file)
            origin = HubOrigin(*settings, client, policy, transport=transport)
            stack.callback(origin.close)
            opened = await open_hub_mount(origin, config, given)
        else:
            origin = HttpOrigin(config.url, client, policy, transport=transport)
            stack.callback(origin.close)
            opened = await open_manifest(origin, config, given)
        manifest, mtime = opened.manifest, opened.mtime
        if config.signature is not None:
            manifest = await signed_manifest(
                origin, config, config.signature, opened, client, transport
            )
        if config.subdir is not None:
            # Only the folder's files: nothing else is listed, proven or prefetched.
            manifest = files_under(manifest, config.subdir)
        mirrors = [HttpOrigin(url, client, policy, transport=transport) for url in config.mirrors]
        tiers = [
            [HttpOrigin(url, client, policy, transport=transport) for url in tier]
            for tier in config.tiers
        ]
        for extra in (*mirrors, *(member for tier in tiers for member in tier)):
            stack.callback(extra.close)
        store = BlockStore(config.cache_dir / "blocks", config.cache_size)
        stack.callback(store.close)
        block_lists = BlockLists(config.cache_dir / "verified")
        xet = None
        if config.xet and isinstance(origin, HubOrigin):
            xet = xet_source_for(origin, manifest, client, transport)
        metrics = None if config.metrics is None else _mount_metrics()
        reader = await stack.enter_async_context(
            open_block_reader(
                origin,
                store,
                manifest.block_size,
                block_lists,
                mirrors,
                limits=policy.limits,
                readahead_bytes=config.read_ahead,
                tensor_aware=config.tensor_aware,
                observe_fetch=None if metrics is None else metrics.observe_fetch,
                xet=xet,
                xet_lists=XetLists(config.cache_dir / "xet"),
                tiers=tiers,
            )
        )
        manifest = await reader.adopt(manifest)
        reader.know_files(manifest.files)
        if metrics is not None and config.metrics is not None:
            stack.callback(metrics.serve(config.metrics, reader))
        operations = LazyFS(Tree(manifest, config.subdir or ""), reader, mtime, config.ownership)
        await _run_fuse(operations, config, on_ready, manifest)


async def _run_fuse(
    operations: LazyFS,
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
            nursery.start_soon(_terminate_on_signal, nursery.cancel_scope)
            nursery.start_soon(_load_cache_index, operations.reader.store)
            prefetcher = Prefetcher(operations.reader, nursery)
            handler = _control_handler(operations, prefetcher)
            await nursery.start(serve_control, control_path, handler)
            # Before the mount is reported ready: a reader starting at once gets 1 MiB reads too.
            await _raise_kernel_readahead(operations, resolved)
            if config.prefetch is not None:
                chosen, unknown = select_entries(operations.tree.files(), config.prefetch)
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


def _mount_metrics() -> MountMetrics:
    # prometheus_client takes longer to import than the mount takes to start without it.
    from lazyfs.daemon.metrics import MountMetrics

    return MountMetrics()


def _control_handler(operations: LazyFS, prefetcher: Prefetcher) -> Handler:
    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "status":
            report = await trio.to_thread.run_sync(mount_status, operations.tree, operations.reader)
            report["prefetch"] = prefetcher.report()
            return report
        if command == "prefetch":
            paths = request.get("paths") or []
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                return {"error": "paths must be a list of strings"}
            chosen, unknown = select_entries(operations.tree.files(), paths)
            run = None if unknown else prefetcher.start(chosen).id
            shown = [operations.tree.shown_path(entry) for entry in chosen]
            return {"unknown": unknown, "files": shown, "run": run}
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
    entry = mount_entry(resolved)
    if entry is None:
        return
    raise_kernel_readahead(Path(f"/sys/class/bdi/{entry[0]}/read_ahead_kb"))


def raise_kernel_readahead(setting: Path) -> None:
    """Write ``KERNEL_READAHEAD_KB`` to the mount's ``read_ahead_kb``; when that fails (it
    needs root), say once what read size the kernel will use instead, and why."""
    try:
        setting.write_text(f"{KERNEL_READAHEAD_KB}\n")
        return
    except OSError as exc:
        why = exc.strerror
        if exc.errno in (errno.EACCES, errno.EPERM):
            why = f"{why}: only root can raise it"
    try:
        current = f"{int(setting.read_text())} KiB"
    except (OSError, ValueError):
        current = "the default size"
    # Nothing a user mount offers raises it: FUSE's max_readahead can only lower it, and
    # pyfuse3 cannot set max_read or max_pages (see docs/operations.md for the figures).
    log.info(
        "the kernel reads files of this mount in requests of %s, not %d KiB (%s: %s): more "
        "requests for the same bytes and slower sequential reads, see docs/operations.md",
        current,
        KERNEL_READAHEAD_KB,
        setting,
        why,
    )


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
