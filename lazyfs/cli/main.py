"""The ``lazyfs`` command line. User errors become one line on stderr and an exit code."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lazyfs import __version__
from lazyfs.cli.cache import cache_group
from lazyfs.cli.common import reports_errors
from lazyfs.cli.mount import ca_file_option, mount, normalize_source, token_file_option
from lazyfs.core.sizes import format_size, parse_size
from lazyfs.errors import IntegrityError, LazyfsError, UsageError

if TYPE_CHECKING:
    from lazyfs.core.manifest import Manifest


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lazyfs")
def cli() -> None:
    """Mount a remote model repository read-only; every block is verified before it is read.

    \b
    Publish:  lazyfs manifest build ./model && lazyfs serve ./model --port 8000
    Mount:    lazyfs mount http://127.0.0.1:8000 /mnt/models/model
    Unmount:  lazyfs unmount /mnt/models/model
    """


@cli.group()
def manifest() -> None:
    """Build or check the block manifest of a published directory.

    \b
    Example:
      lazyfs manifest build ./my-model && lazyfs manifest verify ./my-model
    """


@manifest.command("build")
@click.argument("source")
@click.option(
    "--block-size",
    default="4M",
    show_default=True,
    help="Block size, a power of two from 64K to 64M.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Write the manifest here (default: SOURCE/lazyfs-manifest.json; required for hubs).",
)
@token_file_option
@ca_file_option
@reports_errors
def manifest_build(
    source: str,
    block_size: str,
    output: Path | None,
    token_file: Path | None,
    ca_file: Path | None,
) -> None:
    """Hash every file of SOURCE and write its block manifest.

    SOURCE is a directory, or a hub repository (hf://ORG/NAME[@REV],
    modelscope://ORG/NAME[@REV]) that is streamed once, each file checked against the
    hub's digest; mount it lazily with the result: lazyfs mount hf://... --manifest FILE.

    To sign a repository, build its manifest first, then sign the directory (OpenSSF model
    signing: the signature then covers the manifest, and through it every block); the
    manifest never lists model.sig. Mount it with --signature-key (docs/signing.md).

    \b
    Examples:
      lazyfs manifest build ./my-model --block-size 4M
      lazyfs manifest build hf://ORG/NAME@main -o org-name.lazyfs-manifest.json
      lazyfs manifest build ./my-model && model_signing sign key ./my-model --private_key K
    """
    from lazyfs.cache.atomic import write_atomically
    from lazyfs.core.hubs import is_hub_source, split_hub_path
    from lazyfs.core.manifest import MANIFEST_NAME, check_block_size, manifest_digest
    from lazyfs.publish.build import build_manifest

    size = parse_size(block_size)
    try:
        check_block_size(size)
    except LazyfsError as exc:
        raise UsageError(f"--block-size: {exc}") from None
    started = time.monotonic()
    if is_hub_source(source):
        if output is None:
            raise UsageError("a hub source needs -o FILE for the manifest")
        source, folder = split_hub_path(source)
        if folder:
            raise UsageError(f"a manifest is of a whole repository, not of a folder: {folder}")
        source = normalize_source(source, token_file)
        built = _build_hub_manifest(source, size, token_file, ca_file)
    else:
        output = output or Path(source) / MANIFEST_NAME
        built = build_manifest(Path(source), size)
    raw = built.to_json()
    try:
        write_atomically(output, raw)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    elapsed = max(time.monotonic() - started, 1e-9)
    blocks = sum(len(entry.blocks) for entry in built.files)
    click.echo(
        f"wrote {output}: {len(built.files)} files, "
        f"{format_size(built.total_size)}, {blocks} blocks of {format_size(size)}, "
        f"hashed in {elapsed:.1f}s ({format_size(int(built.total_size / elapsed))}/s)"
    )
    click.echo(f"manifest sha256: {manifest_digest(raw)}")


def _build_hub_manifest(
    source: str, block_size: int, token_file: Path | None, ca_file: Path | None
) -> Manifest:
    import trio

    from lazyfs.core.attempts import RetryPolicy
    from lazyfs.publish.hubmanifest import build_hub_manifest
    from lazyfs.sources.hub import HubOrigin
    from lazyfs.sources.hubsettings import hub_settings
    from lazyfs.sources.origin import make_client
    from lazyfs.sources.transport import Transport

    settings = hub_settings(source, token_file)
    transport = Transport.from_environment(ca_file)

    async def build() -> Manifest:
        policy = RetryPolicy()
        async with make_client(policy, transport) as client:
            origin = HubOrigin(*settings, client, policy, transport=transport)
            try:
                return await build_hub_manifest(origin, block_size, click.echo)
            finally:
                origin.close()

    return trio.run(build)


@manifest.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
@reports_errors
def manifest_verify(directory: Path) -> None:
    """Check every file under DIRECTORY against its manifest.

    \b
    Example:
      lazyfs manifest verify ./my-model
    """
    from lazyfs.publish.build import load_local_manifest, verify_directory

    loaded = load_local_manifest(directory)
    problems = verify_directory(directory, loaded)
    for problem in problems:
        click.echo(problem)
    if problems:
        raise IntegrityError(f"{len(problems)} problem(s) in {directory}")
    click.echo(f"ok: {len(loaded.files)} files match the manifest")


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (0: any free port).",
)
@click.option("--access-log", type=click.Path(path_type=Path), help="Append one line per request.")
@reports_errors
def serve(directory: Path, host: str, port: int, access_log: Path | None) -> None:
    """Serve a published DIRECTORY over HTTP (GET, HEAD, byte ranges).

    \b
    Example:
      lazyfs serve ./my-model --port 8000
    """
    from lazyfs.publish.server import run_server

    run_server(directory, host, port, access_log)


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@reports_errors
def status(mountpoint: Path, as_json: bool) -> None:
    """Show what a live mount holds: per file, size and cached bytes; its cache, reads,
    failures and prefetch runs. File names are printed with control characters escaped.

    \b
    Example:
      lazyfs status /mnt/models/demo --json
    """
    from lazyfs.cli.client import describe_status
    from lazyfs.cli.client import status as mount_status

    report = mount_status(mountpoint)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    for line in describe_status(report):
        click.echo(line)


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1)
@click.option("--timeout", default=0.0, type=float, help="Give up after S seconds (0: never).")
@reports_errors
def wait(mountpoint: Path, paths: tuple[str, ...], timeout: float) -> None:
    """Return once PATHS (default: every file) of a live mount are verified and cached.

    Exit 0 when ready; 1 on timeout. For startup probes and scripts.

    \b
    Example:
      lazyfs wait /mnt/models/demo model.safetensors --timeout 600
    """
    from lazyfs.cli.client import wait_cached

    count, total = wait_cached(mountpoint, paths, timeout)
    click.echo(f"ready: {count} files, {format_size(total)} verified and cached")


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1)
@click.option("--cancel", is_flag=True, help="Cancel the mount's running prefetches instead.")
@reports_errors
def prefetch(mountpoint: Path, paths: tuple[str, ...], cancel: bool) -> None:
    """Fetch and verify PATHS (files or directories; default: everything) of a live mount
    into its cache, with progress, until the daemon has done all of it. Model files go
    headers first, then tensors in the order loaders want them, always behind reads: a
    loader started meanwhile finds its next tensors already verified.

    Exit 0 once every byte is verified and cached; 5 if files could not be fetched and
    verified, 6 if the cache did not keep them all (a selection larger than --cache-size,
    blocks evicted meanwhile, failed cache writes), each named on stderr. Ctrl-C stops the
    prefetch in the daemon too; --cancel stops every prefetch of the mount (also one
    started with lazyfs mount --prefetch).

    \b
    Examples:
      lazyfs prefetch /mnt/models/demo model.safetensors
      lazyfs prefetch --cancel /mnt/models/demo
    """
    from lazyfs.cli.client import cancel_prefetch
    from lazyfs.cli.client import prefetch as run_prefetch

    if cancel:
        if paths:
            raise UsageError("--cancel takes no paths: it cancels every prefetch of the mount")
        cancelled = cancel_prefetch(mountpoint)
        if cancelled:
            click.echo(f"cancelled {len(cancelled)} prefetch run(s)")
        else:
            click.echo("no prefetch was running")
        return
    count, total = run_prefetch(mountpoint, paths, tty=sys.stdout.isatty())
    click.echo(f"done: {count} files, {format_size(total)} verified and cached")


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@reports_errors
def unmount(mountpoint: Path) -> None:
    """Unmount MOUNTPOINT and stop its daemon; also cleans up a mount whose daemon died.

    \b
    Example:
      lazyfs unmount /mnt/models/demo
    """
    from lazyfs.daemon.mountpoint import unmount as unmount_path

    unmount_path(mountpoint.absolute())


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--size", default="256M", show_default=True, help="Size of the weights file.")
@click.option("--seed", default=0, show_default=True, type=int)
@reports_errors
def sample(directory: Path, size: str, seed: int) -> None:
    """Write a sample model repository (safetensors weights, config, tokenizer) to DIRECTORY.

    \b
    Example:
      lazyfs sample ./demo-model --size 256M && lazyfs manifest build ./demo-model
    """
    from lazyfs.publish.sample import write_sample_repository

    weights = parse_size(size)
    if not 1024 * 1024 <= weights <= 64 * 2**30:
        raise UsageError(f"--size must be from 1M to 64G, not {size}")
    try:
        written = write_sample_repository(directory, weights, seed)
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename or directory}: {exc.strerror}") from None
    click.echo(f"wrote {len(written)} files to {directory}")


cli.add_command(cache_group)
cli.add_command(mount)


def main() -> None:
    """The console script: click's usage errors also become one line and exit 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message())
        sys.exit(2)
    except click.UsageError as exc:
        click.echo(f"lazyfs: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.Abort:
        click.echo("lazyfs: interrupted", err=True)
        sys.exit(130)
