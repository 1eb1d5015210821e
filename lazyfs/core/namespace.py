"""The mount's directory tree, sans-I/O: inodes for the manifest's files and directories."""

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
    # Sorted once built, so listings are stable and resumable by position.
    children: dict[str, int] = field(default_factory=dict)

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
            node.children = dict(sorted(node.children.items()))
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

    def subdirectory_count(self, node: Node) -> int:
        return sum(1 for inode in node.children.values() if self.nodes[inode].is_dir)
