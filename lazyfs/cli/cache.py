"""``lazyfs cache``: inspect and maintain a block cache."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lazyfs.cache.directory import default_cache_dir
from lazyfs.cli.common import reports_errors
from lazyfs.core.sizes import format_size, parse_size
from lazyfs.errors import CacheError, IntegrityError, UsageError

if TYPE_CHECKING:
    from lazyfs.cache.store import BlockStore


@click.group("cache")
def cache_group() -> None:
    """Inspect and maintain a block cache (also while mounts use it).

    \b
    Example:
      lazyfs cache info && lazyfs cache prune 10G
    """


cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    help="The cache (default: $XDG_CACHE_HOME/lazyfs, else ~/.cache/lazyfs).",
)


def _open_store(cache_dir: Path | None) -> tuple[Path, BlockStore]:
    from lazyfs.cache.directory import file_in_the_way
    from lazyfs.cache.store import BlockStore

    directory = (cache_dir or default_cache_dir()).absolute()
    blocks = directory / "blocks"
    try:
        is_directory = stat.S_ISDIR(blocks.stat().st_mode)
    except FileNotFoundError:
        raise UsageError(f"{directory} is not a lazyfs cache (no blocks/ in it)") from None
    except NotADirectoryError:
        reason = f"{file_in_the_way(blocks)} is not a directory"
        raise CacheError(f"cannot use cache dir {directory}: {reason}") from None
    except OSError as exc:
        raise CacheError(f"cannot use cache dir {directory}: {exc.strerror}") from None
    if not is_directory:
        raise CacheError(f"cannot use cache dir {directory}: {blocks} is not a directory")
    # The limit only matters to writers; the mounts using this cache keep their own.
    return directory, BlockStore(directory / "blocks", 2**62)


@cache_group.command("info")
@cache_dir_option
@reports_errors
def cache_info(cache_dir: Path | None) -> None:
    """Show where the cache is, its size and its block count.

    \b
    Example:
      lazyfs cache info --cache-dir /var/cache/lazyfs
    """
    directory, store = _open_store(cache_dir)
    try:
        stats = store.statistics()
    finally:
        store.close()
    manifests = len(list((directory / "manifests").glob("*.json")))
    click.echo(f"cache dir: {directory}")
    click.echo(f"blocks: {stats.blocks} ({format_size(stats.volume)} on disk)")
    click.echo(f"manifests: {manifests}")


@cache_group.command("verify")
@cache_dir_option
@reports_errors
def cache_verify(cache_dir: Path | None) -> None:
    """Re-hash every cached block; drop any that no longer match (exit 5 if there were).

    \b
    Example:
      lazyfs cache verify
    """
    _, store = _open_store(cache_dir)
    try:
        checked, dropped = store.verify()
    finally:
        store.close()
    for digest in dropped:
        click.echo(f"dropped corrupt block {digest}")
    click.echo(f"checked {checked} blocks, {len(dropped)} corrupt")
    if dropped:
        raise IntegrityError(f"{len(dropped)} corrupt block(s) dropped; they will be refetched")


@cache_group.command("prune")
@click.argument("size")
@cache_dir_option
@reports_errors
def cache_prune(size: str, cache_dir: Path | None) -> None:
    """Evict least recently used blocks until the cache holds at most SIZE.

    \b
    Example:
      lazyfs cache prune 10G
    """
    target = parse_size(size)
    _, store = _open_store(cache_dir)
    try:
        dropped = store.evict_to(target)
        left = store.statistics()
    finally:
        store.close()
    click.echo(f"evicted {dropped} blocks; {left.blocks} left ({format_size(left.volume)})")


@cache_group.command("clear")
@cache_dir_option
@reports_errors
def cache_clear(cache_dir: Path | None) -> None:
    """Remove every cached block, manifest and hub listing.

    \b
    Example:
      lazyfs cache clear --cache-dir /tmp/lazyfs-cache
    """
    directory, store = _open_store(cache_dir)
    try:
        removed = store.clear()
    finally:
        store.close()
    for kept in (directory / "manifests").glob("*.json"):
        kept.unlink(missing_ok=True)
    # Hub listings go too: without blocks, an offline mount of one could read nothing.
    for kept in (directory / "listings").glob("*.json"):
        kept.unlink(missing_ok=True)
    click.echo(f"removed {removed} blocks from {directory}")
