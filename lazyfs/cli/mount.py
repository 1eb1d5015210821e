"""``lazyfs mount``: its options (defined once: ``mount.lazyfs`` reads its ``-o`` names from
them), their checks, and the start of a background mount's daemon."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import click

from lazyfs.cache.directory import default_cache_dir
from lazyfs.cli.common import configure_logging, reports_errors
from lazyfs.cli.signing import signature_options
from lazyfs.core.sizes import parse_size
from lazyfs.errors import UsageError

if TYPE_CHECKING:
    from lazyfs.daemon.config import MountConfig
    from lazyfs.sources.signatures import SignatureTrust

DEFAULT_CACHE_SIZE = "50G"
# The reader's DEFAULT_READAHEAD_BYTES, spelled here so the CLI need not import the read path.
DEFAULT_READ_AHEAD = "64M"


class OctalMode(click.ParamType[int]):
    """Permission bits in octal, as chmod takes them (0644)."""

    name = "MODE"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        from lazyfs.core.ownership import parse_mode

        try:
            return parse_mode(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


token_file_option = click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    help="Hub token file (default: $HF_TOKEN or $MODELSCOPE_API_TOKEN). Read again when it "
    "changes (a rotated Kubernetes secret) and when the hub refuses the token: no remount.",
)
ca_file_option = click.option(
    "--ca-file",
    type=click.Path(path_type=Path),
    help="Trust the CA certificates in FILE (PEM) for https instead of the system's "
    "(default: $SSL_CERT_FILE or $REQUESTS_CA_BUNDLE if set); see docs/network.md.",
)


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics wants HOST:PORT, such as 127.0.0.1:9400, not {text!r}")
    return host.strip("[]"), int(port)


def _metrics_address(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    try:
        return parse_address(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def normalize_source(source: str, token_file: Path | None = None) -> str:
    """A hub source, checked along with its endpoint and token, or a normalized URL."""
    from lazyfs.core.hubs import is_hub_source
    from lazyfs.sources.hubsettings import hub_settings

    if not is_hub_source(source):
        return normalize_url(source)
    repo, _, _ = hub_settings(source, token_file)
    return repo.name


def normalize_url(url: str) -> str:
    """An http(s) URL with a host and a valid port, without a trailing slash (so that one
    repository has one cache key however its URL was typed)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UsageError(f"not a valid URL: {url}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"URL must be http:// or https:// with a host: {url}")
    if parts.query or parts.fragment:
        raise UsageError(f"URL must not have a query or fragment: {url}")
    del port
    return urlunsplit(parts._replace(path=parts.path.rstrip("/")))


def _log_name(mountpoint: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(mountpoint.resolve()).strip("/"))
    return f"mount-{slug or 'root'}.log"


@click.command()
@click.argument("url")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    help="Block cache (default: $XDG_CACHE_HOME/lazyfs, else ~/.cache/lazyfs).",
)
@click.option(
    "--cache-size",
    default=DEFAULT_CACHE_SIZE,
    show_default=True,
    help="Cache bound; least recently used blocks are evicted beyond it.",
)
@click.option(
    "--read-ahead",
    default=DEFAULT_READ_AHEAD,
    show_default=True,
    help="Bytes of blocks fetched ahead of sequential readers and not yet read, for all open "
    "files together (0: no read-ahead).",
)
@click.option(
    "--tensor-aware/--no-tensor-aware",
    default=True,
    show_default=True,
    help="Read safetensors and GGUF tensor maps: a read inside a tensor fetches the whole "
    "tensor, and read-ahead and prefetch follow the order loaders want tensors in.",
)
@click.option(
    "--xet/--no-xet",
    default=True,
    show_default=True,
    help="Hugging Face files stored in Xet without block digests: prove each read's window "
    "of the file against the Hub's xetHash through the Xet CAS (--no-xet: verify them whole).",
)
@click.option("--manifest-sha256", help="Refuse to mount unless the manifest has this sha256.")
@click.option(
    "--manifest",
    "manifest_source",
    metavar="PATH_OR_URL",
    help="Use this block manifest instead of the repository's own (hubs: it must match the "
    "revision).",
)
@token_file_option
@ca_file_option
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    metavar="URL",
    help="The same published repository at another address (repeatable); blocks are "
    "verified, so a mirror needs no trust.",
)
@click.option(
    "--tier",
    "tiers",
    multiple=True,
    metavar="URL|URL...",
    help="A tier of caches in front of the repository's URL (repeatable, the nearest first): "
    "'http://c1/repo|http://c2/repo'. Blocks are asked of the first tier, whose members share "
    "them by digest (failing over to each other), then of the next tier, then of the URL; "
    "the manifest only ever comes from the URL. Blocks are verified, so no cache needs trust.",
)
@click.option(
    "--retries",
    type=click.IntRange(1, 100),
    default=4,
    show_default=True,
    help="Fetches per block in all (transport errors, 408/429/5xx and copies that fail "
    "verification share them; every mirror is tried once), and attempts per manifest or API "
    "request.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 3600),
    help="Seconds a connection may stall (connect or between bytes) [default: 5 to connect, "
    "20 between bytes].",
)
@click.option(
    "--deadline",
    type=click.FloatRange(0.1, 86400),
    default=60.0,
    show_default=True,
    help="Seconds a block fetch may take, all attempts included; then the read fails (EIO).",
)
@click.option(
    "--subdir",
    metavar="DIR",
    help="Show only this folder of the repository at the mount point (hubs: also "
    "hf://ORG/NAME@REV/DIR, as huggingface_hub's HfFileSystem writes it).",
)
@click.option(
    "--uid",
    type=click.IntRange(0, 2**32 - 2),
    help="Owner the mount shows [default: the mounting user]; readers other than the "
    "mounter also need --allow-other.",
)
@click.option("--gid", type=click.IntRange(0, 2**32 - 2), help="Group the mount shows.")
@click.option(
    "--file-mode",
    type=OctalMode(),
    default="0444",
    show_default=True,
    help="Permissions files show; executables add x where it gives r (0640: 0750).",
)
@click.option(
    "--dir-mode",
    type=OctalMode(),
    default="0555",
    show_default=True,
    help="Permissions folders show.",
)
@click.option(
    "--allow-other",
    is_flag=True,
    help="Let users other than the mounter read it (a mount by a user other than root needs "
    "user_allow_other in /etc/fuse.conf).",
)
@click.option("--foreground", is_flag=True, help="Stay in the foreground, logging to stderr.")
@click.option("--log-file", type=click.Path(path_type=Path), help="Log here instead.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--prefetch",
    is_flag=True,
    help="Once mounted, fetch everything into the cache (lazyfs status shows how far it got; "
    "lazyfs prefetch --cancel stops it).",
)
@click.option(
    "--prefetch-path",
    multiple=True,
    help="Once mounted, fetch this file or directory into the cache (repeatable).",
)
@click.option(
    "--metrics", "metrics_address", metavar="HOST:PORT", help="Serve Prometheus metrics here."
)
@click.option("--ready-fd", type=int, hidden=True)
@reports_errors
@signature_options
def mount(
    url: str,
    mountpoint: Path,
    cache_dir: Path | None,
    cache_size: str,
    read_ahead: str,
    tensor_aware: bool,
    xet: bool,
    manifest_sha256: str | None,
    manifest_source: str | None,
    token_file: Path | None,
    ca_file: Path | None,
    mirrors: tuple[str, ...],
    tiers: tuple[str, ...],
    retries: int,
    timeout: float | None,
    deadline: float,
    subdir: str | None,
    uid: int | None,
    gid: int | None,
    file_mode: int,
    dir_mode: int,
    allow_other: bool,
    foreground: bool,
    log_file: Path | None,
    log_level: str,
    prefetch: bool,
    prefetch_path: tuple[str, ...],
    metrics_address: str | None,
    ready_fd: int | None,
    signature: SignatureTrust | None,
) -> None:
    """Mount the repository at URL on MOUNTPOINT, read-only and lazily.

    URL is a published repository (http:// or https://) or a hub repository:
    hf://ORG/NAME[@REV], hf://datasets/ORG/NAME[@REV] or modelscope://ORG/NAME[@REV],
    optionally followed by /DIR to mount one folder (see docs/hubs.md). Returns once the
    mount is live (exit 0) or has failed (one line saying why).

    \b
    Examples:
      lazyfs mount http://127.0.0.1:8000 /mnt/models/demo --cache-size 20G
      lazyfs mount hf://Qwen/Qwen2.5-0.5B /mnt/models/qwen
      lazyfs mount hf://ORG/NAME@main/onnx /mnt/models/onnx --uid 1000 --allow-other
    """
    from lazyfs.cache.directory import prepare_cache_dir
    from lazyfs.core.attempts import RetryPolicy
    from lazyfs.core.hubs import is_hub_source, split_hub_path
    from lazyfs.core.namespace import check_subdir
    from lazyfs.core.ownership import Ownership
    from lazyfs.daemon.background import start_background
    from lazyfs.daemon.config import MountConfig

    # Everything this mount writes (cache, block lists, logs) is for its user alone.
    os.umask(0o077)
    url, url_subdir = split_hub_path(url)
    if url_subdir and subdir is not None:
        raise UsageError("name the folder once: in the hub URL's path or with --subdir")
    subdir = subdir if subdir is not None else (url_subdir or None)
    if subdir is not None:
        subdir = check_subdir(subdir)
    url = normalize_source(url, token_file)
    if mirrors and is_hub_source(url):
        raise UsageError("--mirror is for http(s) origins; for a hub mirror set its endpoint")
    if tiers and is_hub_source(url):
        raise UsageError("--tier is for http(s) origins; for a hub cache set its endpoint")
    for mirror in mirrors:
        if "|" in mirror:
            raise UsageError(f"--mirror takes one URL; a group of caches is a --tier: {mirror}")
    mirrors = tuple(normalize_url(mirror) for mirror in mirrors)
    tier_groups = tuple(tuple(normalize_url(url) for url in tier.split("|")) for tier in tiers)
    policy = RetryPolicy(attempts=retries, deadline=deadline)
    if timeout is not None:
        policy = dataclasses.replace(policy, connect_timeout=timeout, read_timeout=timeout)
    if manifest_source is not None and not manifest_source.startswith(("http://", "https://")):
        manifest_source = str(Path(manifest_source).absolute())
    if manifest_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", manifest_sha256):
        raise UsageError("--manifest-sha256 must be 64 lowercase hex digits")
    if allow_other:
        from lazyfs.daemon.mountpoint import check_allow_other

        check_allow_other()
    config = MountConfig(
        url=url,
        mountpoint=mountpoint.absolute(),
        cache_dir=(cache_dir or default_cache_dir()).absolute(),
        cache_size=parse_size(cache_size),
        read_ahead=parse_size(read_ahead),
        tensor_aware=tensor_aware,
        xet=xet,
        manifest_sha256=manifest_sha256,
        allow_other=allow_other,
        prefetch=prefetch_path if prefetch_path else (() if prefetch else None),
        metrics=_metrics_address(metrics_address),
        manifest_source=manifest_source,
        token_file=token_file.absolute() if token_file else None,
        mirrors=mirrors,
        tiers=tier_groups,
        policy=policy,
        ca_file=ca_file.absolute() if ca_file else None,
        ownership=Ownership(
            os.getuid() if uid is None else uid,
            os.getgid() if gid is None else gid,
            file_mode,
            dir_mode,
        ),
        subdir=subdir,
        signature=signature,
    )
    if foreground:
        from lazyfs.daemon.lifecycle import run_foreground

        configure_logging(log_level, log_file)
        run_foreground(config, ready_fd)
        return
    prepare_cache_dir(config.cache_dir)
    log_path = (log_file or config.cache_dir / "logs" / _log_name(mountpoint)).absolute()
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.open("a").close()
    except OSError as exc:
        raise UsageError(f"cannot write the log file {log_path}: {exc.strerror}") from None
    start_background(config, log_path, functools.partial(_serve, config, log_path, log_level))
    click.echo(f"mounted {url} at {mountpoint} (log: {log_path})")


def _serve(config: MountConfig, log_file: Path, log_level: str, ready_fd: int) -> None:
    """A background mount's daemon, forked from ``lazyfs mount``: only this process loads
    FUSE, HTTP and the event loop."""
    from lazyfs.daemon.lifecycle import run_foreground

    configure_logging(log_level, log_file)
    run_foreground(config, ready_fd)
