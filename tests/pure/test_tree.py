"""The mount's tree (lazyfs.core.namespace), pure: listings and directory counts against the
paths."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.manifest import FileEntry, make_manifest
from lazyfs.core.namespace import ROOT_INODE, Node, Tree

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
BLOCK = 64 * 1024

# A small alphabet, so that drawn paths share directories and collide in every way.
names = st.text("ab.-é", min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))


def tree_ok(paths: list[str]) -> bool:
    directories = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    return len(set(paths)) == len(paths) and not directories & set(paths)


path_lists = st.lists(st.lists(names, min_size=1, max_size=4).map("/".join), max_size=40).filter(
    tree_ok
)


def build(paths: list[str]) -> Tree:
    entries = [FileEntry(path, 0, False, EMPTY_SHA256, ()) for path in paths]
    return Tree(make_manifest(BLOCK, entries))


def path_of(tree: Tree, node: Node) -> str:
    parts = []
    while node.inode != ROOT_INODE:
        parts.append(node.name)
        node = tree.nodes[node.parent]
    return "/".join(reversed(parts))


@given(path_lists)
def test_every_listing_is_sorted_complete_and_its_own(paths: list[str]) -> None:
    tree = build(paths)
    listed: list[int] = []
    for node in tree.nodes.values():
        names_in_order = [name for name, _ in node.listing]
        assert names_in_order == sorted(set(names_in_order))
        assert dict(node.listing) == node.children
        assert all(tree.nodes[inode].parent == node.inode for _, inode in node.listing)
        for name, inode in node.listing:
            assert tree.nodes[inode].name == name
            assert tree.lookup(node.inode, name) is tree.nodes[inode]
        listed += [inode for _, inode in node.listing]
    # Every node but the root is listed exactly once, in its parent's listing, and every
    # path of the manifest is found there.
    assert sorted(listed) == sorted(set(tree.nodes) - {ROOT_INODE})
    files = {path_of(tree, node): node.entry for node in tree.nodes.values() if not node.is_dir}
    assert {path: entry.path for path, entry in files.items() if entry} == {p: p for p in paths}


@given(path_lists)
def test_subdirectory_counts_match_the_paths(paths: list[str]) -> None:
    tree = build(paths)
    directories = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    for node in tree.nodes.values():
        if not node.is_dir:
            assert (node.listing, node.subdirectories) == ((), 0)
            continue
        prefix = f"{path_of(tree, node)}/".lstrip("/")
        expected = {d for d in directories if d.startswith(prefix) and "/" not in d[len(prefix) :]}
        assert node.subdirectories == len(expected)


def test_a_large_directory() -> None:
    tree = build([f"d/f{n:06d}" for n in range(20_000)] + ["d/sub/x", "d/sub2/y"])
    directory = tree.nodes[tree.nodes[ROOT_INODE].children["d"]]
    assert len(directory.listing) == 20_002
    assert directory.subdirectories == 2
    assert directory.listing[0][0] == "f000000" and directory.listing[-1][0] == "sub2"
