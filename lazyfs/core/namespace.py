"""The mount's directory tree, sans-I/O: inodes for the manifest's files and directories.

Built once per mount. What a directory operation needs is computed here at build time (the
children sorted by name, the number of subdirectories), so listing a directory of n entries
costs O(n) in all, however many requests the kernel splits it into, and a directory's
attributes cost O(1).

A subfolder mount (``--subdir``) shows one folder of the repository: the tree is built from
the manifest's files under ``root``, named relative to it, while each node keeps its entry (and
so the repository path the bytes are fetched by).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazyfs.core.manifest import FileEntry, Manifest
from lazyfs.errors import UsageError

ROOT_INODE = 1


@dataclass
class Node:
    inode: int
    name: str
    parent: int
    entry: FileEntry | None = None
    # Name -> inode, for lookups.
    children: dict[str, int] = field(default_factory=dict)
    # The same children sorted by name, set once the tree is built: listings are stable, and
    # a listing resumes at a position without going over what came before it.
    listing: tuple[tuple[str, int], ...] = ()
    subdirectories: int = 0

    @property
    def is_dir(self) -> bool:
        return self.entry is None


def check_subdir(text: str) -> str:
    """A ``--subdir`` as the repository path of a folder: relative, no ``.`` or ``..``
    parts, no empty ones (a trailing slash is allowed)."""
    path = text.removesuffix("/")
    parts = path.split("/")
    if text.startswith("/") or not path or any(part in ("", ".", "..") for part in parts):
        raise UsageError(
            f"--subdir wants a folder's path inside the repository, such as onnx: {text!r}"
        )
    if any(ord(char) < 0x20 or char == "\\" for char in path):
        raise UsageError(f"--subdir has a control character or a backslash: {text!r}")
    return path


def files_under(manifest: Manifest, subdir: str) -> Manifest:
    """The manifest's files in folder ``subdir`` (a ``check_subdir`` path), for a subfolder
    mount; a folder the repository does not have, or a file, is refused."""
    prefix = f"{subdir}/"
    inside = tuple(entry for entry in manifest.files if entry.path.startswith(prefix))
    if not inside:
        if any(entry.path == subdir for entry in manifest.files):
            raise UsageError(f"--subdir {subdir} is a file, not a folder of the repository")
        raise UsageError(f"--subdir {subdir}: no such folder in the repository")
    return Manifest(manifest.block_size, inside)


class Tree:
    def __init__(self, manifest: Manifest, root: str = "") -> None:
        """The tree of ``manifest``'s files; with ``root`` (a folder every file is under,
        see ``files_under``), of that folder."""
        self.nodes: dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, "", ROOT_INODE)}
        self._prefix = f"{root}/" if root else ""
        for entry in sorted(manifest.files, key=lambda e: e.path):
            *directories, filename = self.shown_path(entry).split("/")
            parent = ROOT_INODE
            for name in directories:
                parent = self._child_dir(parent, name)
            self._add(parent, filename, entry)
        for node in self.nodes.values():
            if node.is_dir:
                node.listing = tuple(sorted(node.children.items()))
                node.subdirectories = sum(
                    1 for _, child in node.listing if self.nodes[child].is_dir
                )
        self.file_count = len(manifest.files)
        self.total_size = manifest.total_size

    def _add(self, parent: int, name: str, entry: FileEntry | None) -> int:
        inode = len(self.nodes) + 1
        self.nodes[inode] = Node(inode, name, parent, entry)
        self.nodes[parent].children[name] = inode
        return inode

    def _child_dir(self, parent: int, name: str) -> int:
        existing = self.nodes[parent].children.get(name)
        return existing if existing is not None else self._add(parent, name, None)

    def lookup(self, parent: int, name: str) -> Node | None:
        node = self.nodes.get(parent)
        if node is None or not node.is_dir:
            return None
        if name == ".":
            return node
        if name == "..":
            return self.nodes[node.parent]
        child = node.children.get(name)
        return None if child is None else self.nodes[child]

    def shown_path(self, entry: FileEntry) -> str:
        """Where ``entry`` is in the mount: its repository path below the root folder."""
        if not entry.path.startswith(self._prefix):
            raise ValueError(f"{entry.path} is not under {self._prefix}")
        return entry.path[len(self._prefix) :]

    def entries(self) -> list[FileEntry]:
        return [node.entry for node in self.nodes.values() if node.entry is not None]

    def files(self) -> dict[str, FileEntry]:
        """Every file by its path in the mount."""
        return {self.shown_path(entry): entry for entry in self.entries()}
