"""Where the cache directory is; light enough for client commands to import."""

from __future__ import annotations

import os
from pathlib import Path

from lazyfs.errors import CacheError


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lazyfs"


def prepare_cache_dir(path: Path) -> Path:
    """Create the cache directory 0700 (it holds private model bytes), or raise CacheError
    (exit 6) if it cannot be used: a file in its place or above it, no write permission, a
    read-only file system.

    An existing directory keeps its mode (it may be shared, like /tmp); what lazyfs creates
    inside it is 0700.
    """
    for directory in (path, *(path / sub for sub in ("blocks", "manifests", "logs"))):
        try:
            if not directory.exists():
                directory.mkdir(mode=0o700, parents=True)
                os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        except NotADirectoryError:
            raise _unusable(path, f"{file_in_the_way(directory)} is not a directory") from None
        except OSError as exc:
            raise _unusable(path, f"cannot create {directory}: {exc.strerror}") from None
        if not directory.is_dir():
            raise _unusable(path, f"{file_in_the_way(directory)} is not a directory")
        # Checked now rather than at the first block stored: a mount would come up, then fail
        # every read. access() also answers "no" on a read-only file system, even to root.
        if not os.access(directory, os.W_OK | os.X_OK):
            raise _unusable(path, f"{directory} is not writable")
    return path


def _unusable(path: Path, reason: str) -> CacheError:
    return CacheError(f"cannot use cache dir {path}: {reason}")


def file_in_the_way(directory: Path) -> Path:
    """The path nearest the root, from ``directory`` up, that exists and is not a directory."""
    for candidate in (*reversed(directory.parents), directory):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return directory
