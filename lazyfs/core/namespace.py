"""The mount's directory tree, sans-I/O: inodes for the manifest's files and directories.

Built once per mount. What a directory operation needs is computed here at build time (the
children sorted by name, the number of subdirectories), so listing a directory of n entries
costs O(n) in all, however many requests the kernel splits it into, and a directory's
attributes cost O(1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazyfs.core.manifest import FileEntry, Manifest

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


class Tree:
    def __init__(self, manifest: Manifest) -> None:
        self.nodes: dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, "", ROOT_INODE)}
        for entry in sorted(manifest.files, key=lambda e: e.path):
            *directories, filename = entry.path.split("/")
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

    def entries(self) -> list[FileEntry]:
        return [node.entry for node in self.nodes.values() if node.entry is not None]
