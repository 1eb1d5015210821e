"""Publishing (lazyfs.publish.build and `lazyfs manifest build|verify`) against hashlib, by hand."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.core.manifest import MANIFEST_NAME, FileEntry, Manifest, parse_manifest
from lazyfs.core.signedfiles import SIGNATURE_NAME
from lazyfs.errors import UsageError
from lazyfs.publish import build as publish
from lazyfs.publish import sharedreads
from lazyfs.publish.build import FileHasher, build_manifest, list_published_files, verify_directory

KIB = 1024
BLOCK = 64 * KIB


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def expected_entry(path: str, data: bytes, block_size: int, executable: bool) -> FileEntry:
    """A file's entry computed independently of lazyfs, from the spec."""
    blocks = tuple(
        hashlib.sha256(data[i : i + block_size]).hexdigest()
        for i in range(0, len(data), block_size)
    )
    return FileEntry(path, len(data), executable, hashlib.sha256(data).hexdigest(), blocks)


def write(root: Path, relative: str, data: bytes, mode: int = 0o644) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


# Published path -> (content, executable). Sizes straddle every boundary of a 64 KiB block.
TREE: dict[str, tuple[bytes, bool]] = {
    "config.json": (b'{"hidden_size": 8}\n', False),
    "empty": (b"", False),
    "one-block.bin": (payload(BLOCK, 1), False),
    "one-byte-over.bin": (payload(BLOCK + 1, 2), False),
    "a/b/c/deep.bin": (payload(3 * BLOCK - 1, 3), False),
    "a/b/sibling.txt": (b"sibling\n", False),
    "bin/run.sh": (b"#!/bin/sh\necho hi\n", True),
    "weights/model.safetensors": (payload(5 * BLOCK + 123, 4), False),
    "z/group-exec": (b"x", True),
    "weights/model.sig": (b"deeper, a file like any", False),
}
LINK = "link-to-deep.bin"  # a symlink inside the tree, to a/b/c/deep.bin


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    for relative, (data, executable) in TREE.items():
        write(root, relative, data, 0o755 if executable else 0o644)
    (root / "z" / "group-exec").chmod(0o610)  # any execute bit counts
    (root / LINK).symlink_to(Path("a/b/c/deep.bin"))
    # Never published: version-control directories at any depth, the manifest, its temp files.
    write(root, ".git/HEAD", b"ref: refs/heads/main\n")
    write(root, ".git/objects/ab/cdef", payload(100, 5))
    write(root, "a/.hg/store", b"hg")
    write(root, "weights/.svn/entries", b"svn")
    write(root, MANIFEST_NAME, b"stale")
    write(root, f"{MANIFEST_NAME}.1234.tmp", b"partial")
    # Nor the repository's signature: it signs the manifest.
    write(root, SIGNATURE_NAME, b"{}")
    return root


def expected_manifest(block_size: int) -> list[FileEntry]:
    files = {path: data for path, (data, _) in TREE.items()}
    files[LINK] = TREE["a/b/c/deep.bin"][0]
    executable = {path: flag for path, (_, flag) in TREE.items()} | {LINK: False}
    return [
        expected_entry(path, files[path], block_size, executable[path]) for path in sorted(files)
    ]


@pytest.mark.parametrize("block_size", [BLOCK, 2 * BLOCK, 4 * 2**20])
def test_build_matches_hashlib(tree: Path, block_size: int) -> None:
    built = build_manifest(tree, block_size)
    assert built.block_size == block_size
    assert list(built.files) == expected_manifest(block_size)
    by_path = {entry.path: entry for entry in built.files}
    assert by_path["empty"].blocks == ()
    assert len(by_path["one-block.bin"].blocks) == 1
    assert by_path["one-block.bin"].blocks[0] == by_path["one-block.bin"].sha256
    assert len(by_path["one-byte-over.bin"].blocks) == (2 if block_size == BLOCK else 1)
    assert not any(p.startswith((".git", "a/.hg", "weights/.svn", MANIFEST_NAME)) for p in by_path)
    assert parse_manifest(built.to_json()) == built


@pytest.mark.parametrize("chunk_size", [BLOCK, 3 * BLOCK, 2 * BLOCK + 1, BLOCK // 3, 16 * 2**20])
@pytest.mark.parametrize("parallel_from", [0, 2**40])
def test_hashing_does_not_depend_on_chunking_or_threads(
    tmp_path: Path, chunk_size: int, parallel_from: int
) -> None:
    data = payload(11 * BLOCK + 7, 6)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[int] = []
    with FileHasher(BLOCK, chunk_size=chunk_size, parallel_from=parallel_from) as hasher:
        entry = hasher.hash_file(path, "f", seen.append)
        again = hasher.hash_file(path, "f")
    assert entry == again == expected_entry("f", data, BLOCK, False)
    assert sum(seen) == len(data)


# Small sizes so that one example crosses many chunks, buffers of the ring and blocks.
@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=40 * KIB),
    block_size=st.sampled_from([KIB, 3 * KIB, 4 * KIB, 64 * KIB]),
    chunk_size=st.integers(min_value=1, max_value=9 * KIB),
    parallel_from=st.sampled_from([0, 2**40]),
)
def test_both_threads_digest_what_hashlib_does(
    size: int, block_size: int, chunk_size: int, parallel_from: int
) -> None:
    data = payload(size, size)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "f"
        path.write_bytes(data)
        with FileHasher(block_size, chunk_size=chunk_size, parallel_from=parallel_from) as hasher:
            assert hasher.hash_file(path, "f") == expected_entry("f", data, block_size, False)


@pytest.mark.parametrize("failing_chunk", [0, 1, 2, 5])
def test_a_read_failing_on_either_thread_fails_the_file_not_the_hasher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_chunk: int
) -> None:
    # Even chunks are read on the calling thread, odd ones on the whole-file thread.
    chunk = 2 * KIB
    data = payload(9 * chunk, 8)
    path = tmp_path / "f"
    path.write_bytes(data)
    original = sharedreads.read_full_at

    def failing(fd: int, view: memoryview, offset: int) -> int:
        if offset == failing_chunk * chunk:
            raise OSError(errno.EIO, "Input/output error")
        return original(fd, view, offset)

    with FileHasher(KIB, chunk_size=chunk, parallel_from=0) as hasher:
        monkeypatch.setattr(sharedreads, "read_full_at", failing)
        with pytest.raises(OSError, match="Input/output error"):
            hasher.hash_file(path, "f")
        monkeypatch.undo()
        assert hasher.hash_file(path, "f") == expected_entry("f", data, KIB, False)


def test_a_file_truncated_while_hashed_gets_an_entry_for_the_bytes_read(tmp_path: Path) -> None:
    chunk = 2 * KIB
    data = payload(20 * chunk, 9)
    path = tmp_path / "f"
    path.write_bytes(data)
    original = sharedreads.read_full_at

    def truncating(fd: int, view: memoryview, offset: int) -> int:
        if offset == 3 * chunk:
            os.truncate(path, 7 * chunk + 5)
        return original(fd, view, offset)

    with (
        FileHasher(KIB, chunk_size=chunk, parallel_from=0) as hasher,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(sharedreads, "read_full_at", truncating)
        entry = hasher.hash_file(path, "f")
    assert entry == expected_entry("f", data[: 7 * chunk + 5], KIB, False)


def test_build_is_deterministic(tree: Path) -> None:
    assert build_manifest(tree, BLOCK).to_json() == build_manifest(tree, BLOCK).to_json()


def test_listing_skips_and_follows(tree: Path) -> None:
    assert sorted(list_published_files(tree)) == sorted([*TREE, LINK])


# ---- what cannot be published --------------------------------------------------------------


def test_symlink_outside_the_tree_is_refused(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    (tree / "escape").symlink_to(outside)
    with pytest.raises(UsageError, match="points outside"):
        build_manifest(tree, BLOCK)


def test_relative_symlink_climbing_out_is_refused(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    (tree / "a" / "escape").symlink_to(Path("../../secret"))
    with pytest.raises(UsageError, match="points outside"):
        build_manifest(tree, BLOCK)


def test_fifo_is_refused(tree: Path) -> None:
    os.mkfifo(tree / "a" / "pipe")
    with pytest.raises(UsageError, match="is not a regular file"):
        build_manifest(tree, BLOCK)


def test_symlink_to_directory_is_refused(tree: Path) -> None:
    (tree / "dirlink").symlink_to(Path("a"))
    with pytest.raises(UsageError, match="symlink to a directory"):
        build_manifest(tree, BLOCK)


def test_dangling_symlink_is_refused(tree: Path) -> None:
    (tree / "dangling").symlink_to(Path("nowhere"))
    with pytest.raises(UsageError, match="dangling symlink"):
        build_manifest(tree, BLOCK)


LOOPS = {
    "self": [("self-loop", "self-loop")],
    "pair": [("ping", "pong"), ("pong", "ping")],
    "through a directory": [("a/b/circle", "circle/deeper")],
}


def make_loop(root: Path, kind: str) -> Path:
    for name, target in LOOPS[kind]:
        (root / name).symlink_to(Path(target))
    return root / LOOPS[kind][0][0]


@pytest.mark.parametrize("kind", LOOPS)
def test_symlink_loop_is_refused(tree: Path, kind: str) -> None:
    make_loop(tree, kind)
    with pytest.raises(UsageError, match="is a symlink loop"):
        build_manifest(tree, BLOCK)


def test_backslash_in_a_name_is_refused(tree: Path) -> None:
    write(tree, "a\\b", b"x")
    with pytest.raises(UsageError, match="contains a backslash"):
        build_manifest(tree, BLOCK)


def test_not_a_directory_is_refused(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        build_manifest(tree / "config.json", BLOCK)
    with pytest.raises(UsageError, match="is not a directory"):
        build_manifest(tmp_path / "missing", BLOCK)


def test_unreadable_file_is_a_usage_error(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(publish, "_open", refuse)
    with pytest.raises(UsageError, match=r"cannot read .*: Permission denied"):
        build_manifest(tree, BLOCK)


# ---- verify --------------------------------------------------------------------------------


@pytest.fixture
def built(tree: Path) -> Manifest:
    return build_manifest(tree, BLOCK)


def test_verify_clean_tree(tree: Path, built: Manifest) -> None:
    assert verify_directory(tree, built) == []


def test_verify_missing_file(tree: Path, built: Manifest) -> None:
    (tree / "a" / "b" / "sibling.txt").unlink()
    assert verify_directory(tree, built) == ["a/b/sibling.txt: missing"]


def test_verify_modified_byte_names_the_block(tree: Path, built: Manifest) -> None:
    path = tree / "weights" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[2 * BLOCK + 10] ^= 0xFF
    data[5 * BLOCK] ^= 0x01
    path.write_bytes(data)
    assert verify_directory(tree, built) == ["weights/model.safetensors: 2 bad block(s): 2, 5"]


def test_verify_size_change(tree: Path, built: Manifest) -> None:
    with (tree / "one-block.bin").open("ab") as handle:
        handle.write(b"!")
    assert verify_directory(tree, built) == [f"one-block.bin: size {BLOCK + 1}, expected {BLOCK}"]


def test_verify_extra_file(tree: Path, built: Manifest) -> None:
    write(tree, "a/new.txt", b"new")
    assert verify_directory(tree, built) == ["a/new.txt: not in the manifest"]


def test_verify_exec_bit_change(tree: Path, built: Manifest) -> None:
    (tree / "bin" / "run.sh").chmod(0o644)
    (tree / "config.json").chmod(0o755)
    assert verify_directory(tree, built) == [
        "bin/run.sh: executable bit differs",
        "config.json: executable bit differs",
    ]


def test_verify_unreadable_file_is_a_problem(
    tree: Path, built: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = publish._open

    def refuse(path: Path) -> int:
        if path.name == "config.json":
            raise PermissionError(13, "Permission denied", str(path))
        return original(path)

    monkeypatch.setattr(publish, "_open", refuse)
    assert verify_directory(tree, built) == ["config.json: cannot read: Permission denied"]


# ---- the command line ----------------------------------------------------------------------


def lazyfs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lazyfs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lazyfs: error: "), result.stderr
    return lines[0]


def test_cli_build_then_verify(tree: Path) -> None:
    manifest_path = tree / MANIFEST_NAME
    old_inode = manifest_path.stat().st_ino
    before = sorted(p.name for p in tree.iterdir())

    result = lazyfs("manifest", "build", tree, "--block-size", "64K")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    summary, digest_line = result.stdout.splitlines()
    assert summary.startswith(f"wrote {manifest_path}: {len(TREE) + 1} files, ")
    assert "blocks of 64.0 KiB" in summary
    match = re.fullmatch(r"manifest sha256: ([0-9a-f]{64})", digest_line)
    assert match
    raw = manifest_path.read_bytes()
    assert match.group(1) == hashlib.sha256(raw).hexdigest()
    assert list(parse_manifest(raw).files) == expected_manifest(BLOCK)
    # Written by rename (a new inode), and no temporary file left beside it.
    assert manifest_path.stat().st_ino != old_inode
    assert sorted(p.name for p in tree.iterdir()) == before

    result = lazyfs("manifest", "verify", tree)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ok: {len(TREE) + 1} files match the manifest\n"

    (tree / "a" / "b" / "sibling.txt").unlink()
    (tree / "bin" / "run.sh").chmod(0o644)
    write(tree, "extra", b"x")
    result = lazyfs("manifest", "verify", tree)
    assert result.returncode == 5
    assert result.stdout.splitlines() == [
        "a/b/sibling.txt: missing",
        "bin/run.sh: executable bit differs",
        "extra: not in the manifest",
    ]
    assert assert_one_line_error(result) == f"lazyfs: error: 3 problem(s) in {tree}"


@pytest.mark.parametrize("command", ["build", "verify"])
@pytest.mark.parametrize("kind", LOOPS)
def test_cli_symlink_loop_is_one_line_and_exit_2(tree: Path, command: str, kind: str) -> None:
    # verify finds it among the files the manifest does not list.
    assert lazyfs("manifest", "build", tree, "--block-size", "64K").returncode == 0
    make_loop(tree, kind)
    result = lazyfs("manifest", command, tree)
    line = assert_one_line_error(result)
    assert result.returncode == 2
    assert "is a symlink loop" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("build", "{missing}"), "is not a directory"),
        (("build", "{file}"), "is not a directory"),
        (("build", "{tree}", "--block-size", "100K"), "block size 102400 is not a power of two"),
        (("build", "{tree}", "--block-size", "3M"), "block size 3145728 is not a power of two"),
        (("build", "{tree}", "--block-size", "32K"), "is not a power of two from 65536"),
        (("build", "{tree}", "--block-size", "128M"), "is not a power of two from 65536"),
        (("verify", "{missing}"), "has no lazyfs-manifest.json"),
        (("verify", "{tree}"), "manifest is not valid JSON"),
    ],
)
def test_cli_bad_input_is_one_line(
    tree: Path, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    names = {"missing": tmp_path / "missing", "file": tree / "config.json", "tree": tree}
    result = lazyfs("manifest", *(arg.format(**names) for arg in args))
    assert expected in assert_one_line_error(result)
    assert result.stdout == ""
    # Nothing was written over the stale manifest.
    assert (tree / MANIFEST_NAME).read_bytes() == b"stale"
