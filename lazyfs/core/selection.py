"""Choosing manifest files by the names a user gives (files or directories), for prefetch and
wait."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lazyfs.core.manifest import FileEntry


def select_paths(paths: Sequence[str], wanted: Sequence[str]) -> tuple[list[str], list[str]]:
    """The file paths named by ``wanted`` (files or directories; none, or ".": all) and the
    names that match nothing."""
    names = [name.strip("/") for name in wanted if name.strip("/") not in ("", ".")]
    if not names:
        return list(paths), []

    def matches(path: str, name: str) -> bool:
        return path == name or path.startswith(f"{name}/")

    chosen = [path for path in paths if any(matches(path, name) for name in names)]
    unknown = [name for name in names if not any(matches(path, name) for path in paths)]
    return chosen, unknown


def select_entries(
    by_path: Mapping[str, FileEntry], wanted: Sequence[str]
) -> tuple[list[FileEntry], list[str]]:
    """The entries ``wanted`` names, given each by its path in the mount (``Tree.files``)."""
    chosen, unknown = select_paths(list(by_path), wanted)
    return [by_path[path] for path in chosen], unknown
