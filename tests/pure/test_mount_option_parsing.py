"""The parsing behind ``lazyfs mount``'s ownership and subfolder options, pure: octal modes,
executables' x bits, ``--subdir`` paths, the folder a subfolder mount shows, and the path
form of hub sources (``hf://ORG/NAME@REV/path/in/repo``)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.hubs import split_hub_path
from lazyfs.core.manifest import FileEntry, Manifest, make_manifest
from lazyfs.core.namespace import Tree, check_subdir, files_under
from lazyfs.core.ownership import Ownership, parse_mode
from lazyfs.core.selection import select_entries
from lazyfs.errors import UsageError

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
modes = st.integers(0, 0o777)


@given(modes, st.sampled_from(["{:o}", "0{:o}", "0o{:o}", "{:04o}"]))
def test_a_mode_reads_back_in_every_spelling(mode: int, spelling: str) -> None:
    assert parse_mode(spelling.format(mode)) == mode


@pytest.mark.parametrize("bad", ["", "8", "0x1ff", "1000", "04755", "rw-r--r--", "-1", "0o"])
def test_what_is_not_a_plain_octal_mode_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_mode(bad)


@given(modes)
def test_executables_get_x_exactly_where_the_mode_gives_r(mode: int) -> None:
    shown = Ownership(1000, 1000, file_mode=mode)
    assert shown.file_permissions(False) == mode
    executable = shown.file_permissions(True)
    assert executable & ~0o111 == mode & ~0o111  # r and w bits are the mode's
    for reader, runner in ((0o400, 0o100), (0o040, 0o010), (0o004, 0o001)):
        assert bool(executable & runner) == bool(mode & (reader | runner))
    # The defaults are what mounts always showed: 0444 files, 0555 executables and folders.
    assert Ownership(0, 0).file_permissions(True) == Ownership(0, 0).dir_mode == 0o555


@pytest.mark.parametrize(
    ("given_path", "checked"), [("onnx", "onnx"), ("a/b/", "a/b"), ("a.b/..c", "a.b/..c")]
)
def test_a_subdir_is_a_relative_folder_path(given_path: str, checked: str) -> None:
    assert check_subdir(given_path) == checked


@pytest.mark.parametrize("bad", ["", "/", "/etc", "../x", "a/../b", "a//b", "./a", "a/.", "a\nb"])
def test_a_subdir_that_escapes_or_is_not_plain_is_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        check_subdir(bad)


def manifest_of(*paths: str) -> Manifest:
    return make_manifest(64 * 1024, [FileEntry(p, 0, False, EMPTY_SHA256, ()) for p in paths])


def test_a_subfolder_mount_shows_the_folder_and_fetches_by_repository_path() -> None:
    manifest = manifest_of("config.json", "onnx/model.onnx", "onnx/sub/a.bin", "onnxx/b")
    scoped = files_under(manifest, "onnx")
    tree = Tree(scoped, "onnx")
    assert sorted(tree.files()) == ["model.onnx", "sub/a.bin"]
    assert [name for name, _ in tree.nodes[1].listing] == ["model.onnx", "sub"]
    model = tree.lookup(1, "model.onnx")
    assert model is not None and model.entry is not None
    assert model.entry.path == "onnx/model.onnx"  # what the origin is asked for
    chosen, unknown = select_entries(tree.files(), ["sub", "nothing"])
    assert [entry.path for entry in chosen] == ["onnx/sub/a.bin"] and unknown == ["nothing"]
    assert sorted(Tree(files_under(manifest, "onnx/sub"), "onnx/sub").files()) == ["a.bin"]


@pytest.mark.parametrize(("folder", "why"), [("config.json", "is a file"), ("onn", "no such")])
def test_a_subdir_the_repository_has_no_folder_for_is_refused(folder: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        files_under(manifest_of("config.json", "onnx/model.onnx"), folder)


repo_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True)
segments = st.from_regex(r"[A-Za-z0-9._-]{1,8}", fullmatch=True)
paths_in_repo = st.lists(segments, max_size=3).map("/".join)


@given(
    st.sampled_from(["hf://", "hf://datasets/", "modelscope://"]),
    repo_names,
    repo_names,
    st.sampled_from(["", "@main", "@v1.0", "@refs/pr/3", "@refs/convert/parquet", "@a%2Fb"]),
    paths_in_repo,
)
def test_the_hub_path_form_splits_as_hffilesystem_reads_it(
    prefix: str, org: str, name: str, revision: str, path: str
) -> None:
    source, folder = split_hub_path(f"{prefix}{org}/{name}{revision}/{path}")
    assert folder == path
    assert source == f"{prefix}{org}/{name}{revision.replace('%2F', '/')}"
    # Without a path the source is as given (a slashed revision, decoded, included).
    assert split_hub_path(f"{prefix}{org}/{name}{revision}")[1] == ""


def test_the_revision_ends_at_the_first_slash_unless_it_is_a_pr_or_conversion() -> None:
    assert split_hub_path("hf://o/n@feature/x/onnx") == ("hf://o/n@feature", "x/onnx")
    assert split_hub_path("hf://o/n@refs/pr/12/onnx") == ("hf://o/n@refs/pr/12", "onnx")
    assert split_hub_path("hf://o/n@refs/pr/1x/onnx") == ("hf://o/n@refs", "pr/1x/onnx")
    assert split_hub_path("http://h/repo/a") == ("http://h/repo/a", "")
