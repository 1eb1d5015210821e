"""Manifest v1 (lazyfs.core.manifest): round trip, every rejection of docs/manifest.md, fuzzing."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.core.blocks import block_count
from lazyfs.core.manifest import (
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    FileEntry,
    Manifest,
    make_manifest,
    manifest_digest,
    parse_manifest,
)
from lazyfs.errors import ManifestError

KIB = 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# ---- strategies ----------------------------------------------------------------------------

block_size_values = st.sampled_from([2**n for n in range(16, 27)])
digests = st.binary(min_size=32, max_size=32).map(bytes.hex)
name_chars = st.characters(
    exclude_categories=["Cs"], exclude_characters="/\\\x00", max_codepoint=0x1F600
)
names = st.text(name_chars, min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))


def tree_ok(paths: list[str]) -> bool:
    directories = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    return len(set(paths)) == len(paths) and not directories & set(paths)


@st.composite
def entries(draw: st.DrawFn, block_size: int, path: str) -> FileEntry:
    size = draw(
        st.one_of(
            st.just(0),
            st.integers(min_value=1, max_value=block_size * 4),
            st.integers(min_value=1, max_value=4).map(lambda n: n * block_size),
            st.integers(min_value=1, max_value=4).map(lambda n: n * block_size + 1),
        )
    )
    blocks = draw(
        st.lists(
            digests, min_size=block_count(size, block_size), max_size=block_count(size, block_size)
        )
    )
    return FileEntry(path, size, draw(st.booleans()), draw(digests), tuple(blocks))


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    block_size = draw(block_size_values)
    paths = draw(
        st.lists(st.lists(names, min_size=1, max_size=3).map("/".join), max_size=8).filter(tree_ok)
    )
    files = [draw(entries(block_size, path)) for path in paths]
    return Manifest(block_size, tuple(sorted(files, key=lambda e: e.path)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def assert_manifest_error(raw: bytes) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(raw)
    message = str(caught.value)
    assert message
    assert len(message.splitlines()) == 1, message
    return message


def parses_or_fails_cleanly(raw: bytes) -> None:
    try:
        result = parse_manifest(raw)
    except ManifestError as exc:
        assert str(exc)
        assert len(str(exc).splitlines()) == 1, str(exc)
    else:
        assert isinstance(result, Manifest)


# ---- round trip ----------------------------------------------------------------------------


@given(manifests())
def test_round_trip(manifest: Manifest) -> None:
    raw = manifest.to_json()
    assert parse_manifest(raw) == manifest
    assert parse_manifest(raw).to_json() == raw
    assert make_manifest(manifest.block_size, reversed(manifest.files)) == manifest
    assert raw.endswith(b"}\n") and raw.isascii()


@given(manifests(), st.randoms(use_true_random=False))
def test_layout_and_key_order_do_not_matter_to_readers(manifest: Manifest, rnd: Any) -> None:
    document = json.loads(manifest.to_json())
    items = list(document.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    rnd.shuffle(shuffled["files"])
    raw = json.dumps(shuffled, ensure_ascii=False, separators=(",", ":")).encode()
    parsed = parse_manifest(raw)
    assert sorted(parsed.files, key=lambda e: e.path) == list(manifest.files)
    assert parsed.to_json() == manifest.to_json()


def test_canonical_form() -> None:
    manifest = make_manifest(
        MIN_BLOCK_SIZE,
        [
            FileEntry("é/b", 0, False, EMPTY_SHA256, ()),
            FileEntry("B", 1, True, "a" * 64, ("a" * 64,)),
        ],
    )
    raw = manifest.to_json()
    assert (
        raw
        == (
            "{\n"
            ' "format": "lazyfs-manifest",\n'
            ' "version": 1,\n'
            ' "block_size": 65536,\n'
            ' "hash": "sha256",\n'
            ' "files": [\n'
            "  {\n"
            '   "path": "B",\n'
            '   "size": 1,\n'
            '   "executable": true,\n'
            f'   "sha256": "{"a" * 64}",\n'
            '   "blocks": [\n'
            f'    "{"a" * 64}"\n'
            "   ]\n"
            "  },\n"
            "  {\n"
            '   "path": "\\u00e9/b",\n'
            '   "size": 0,\n'
            '   "executable": false,\n'
            f'   "sha256": "{EMPTY_SHA256}",\n'
            '   "blocks": []\n'
            "  }\n"
            " ]\n"
            "}\n"
        ).encode()
    )
    assert manifest_digest(raw) == hashlib.sha256(raw).hexdigest()
    assert manifest.total_size == 1


def test_docs_example_parses_and_is_canonical() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "manifest.md").read_text()
    example = text.split("```json\n", 1)[1].split("```", 1)[0].encode()
    manifest = parse_manifest(example)
    assert manifest.to_json() == example
    assert manifest_digest(example) in text
    weights = {e.path: e for e in manifest.files}["model/weights.bin"]
    assert weights.blocks == (
        hashlib.sha256(bytes(65536)).hexdigest(),
        hashlib.sha256(bytes(70000 - 65536)).hexdigest(),
    )
    assert weights.sha256 == hashlib.sha256(bytes(70000)).hexdigest()


# ---- every rejection -----------------------------------------------------------------------

H = "0123456789abcdef" * 4
DELETE = object()


def base() -> dict[str, Any]:
    return {
        "format": "lazyfs-manifest",
        "version": 1,
        "block_size": 65536,
        "hash": "sha256",
        "files": [
            {"path": "a/b.bin", "size": 70000, "executable": False, "sha256": H, "blocks": [H, H]},
            {"path": "c", "size": 0, "executable": True, "sha256": EMPTY_SHA256, "blocks": []},
        ],
    }


def with_top(**changes: Any) -> bytes:
    document = base()
    for key, value in changes.items():
        if value is DELETE:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


def with_file(index: int = 0, **changes: Any) -> bytes:
    document = base()
    for key, value in changes.items():
        if value is DELETE:
            del document["files"][index][key]
        else:
            document["files"][index][key] = value
    return json.dumps(document).encode()


def with_paths(*paths: str) -> bytes:
    document = base()
    template = document["files"][1]
    document["files"] = [dict(copy.deepcopy(template), path=p) for p in paths]
    return json.dumps(document).encode()


VALID = json.dumps(base()).encode()

REJECTIONS: list[tuple[str, bytes, str]] = [
    # encoding and JSON
    ("non-utf8", VALID.replace(b'"c"', b'"\xff"'), "manifest is not UTF-8 (byte "),
    ("latin1", VALID.replace(b'"c"', '"é"'.encode("latin-1")), "manifest is not UTF-8"),
    ("bom", b"\xef\xbb\xbf" + VALID, "manifest is not valid JSON"),
    ("empty", b"", "manifest is not valid JSON"),
    ("truncated", VALID[:-1], "manifest is not valid JSON"),
    ("trailing-data", VALID + b"{}", "manifest is not valid JSON: Extra data"),
    ("single-quotes", VALID.replace(b'"', b"'"), "manifest is not valid JSON"),
    ("nan", VALID.replace(b"70000", b"NaN"), "manifest contains NaN, which is not JSON"),
    ("infinity", VALID.replace(b"70000", b"Infinity"), "manifest contains Infinity"),
    ("-infinity", VALID.replace(b"70000", b"-Infinity"), "manifest contains -Infinity"),
    (
        "duplicate-top-key",
        VALID.replace(b'"version": 1,', b'"version": 1, "version": 1,'),
        'manifest has the key "version" twice in one object',
    ),
    (
        "duplicate-file-key",
        VALID.replace(b'"size": 0,', b'"size": 0, "size": 0,'),
        'manifest has the key "size" twice in one object',
    ),
    ("deep-nesting", b"[" * 100_000, "manifest is nested too deeply"),
    ("huge-integer", VALID.replace(b"70000", b"7" * 5000), "manifest has a number with too many"),
    # top level
    ("top-list", b"[]", "manifest is not a JSON object"),
    ("top-string", b'"lazyfs-manifest"', "manifest is not a JSON object"),
    ("top-null", b"null", "manifest is not a JSON object"),
    ("top-number", b"1", "manifest is not a JSON object"),
    ("wrong-format", with_top(format="lazyfs"), 'manifest "format" is not "lazyfs-manifest"'),
    ("missing-format", with_top(format=DELETE), 'manifest "format" is not "lazyfs-manifest"'),
    ("unknown-version", with_top(version=2), "unknown manifest version 2 (this lazyfs reads 1)"),
    ("version-zero", with_top(version=0), "unknown manifest version 0"),
    ("version-string", with_top(version="1"), 'unknown manifest version "1"'),
    ("version-float", with_top(version=1.0), "unknown manifest version 1.0"),
    ("version-bool", with_top(version=True), "unknown manifest version true"),
    ("missing-version", with_top(version=DELETE), "unknown manifest version null"),
    ("missing-files", with_top(files=DELETE), "manifest lacks files"),
    (
        "missing-two",
        with_top(hash=DELETE, block_size=DELETE),
        "manifest lacks block_size, hash",
    ),
    ("unknown-field", with_top(extra=1), 'manifest has unknown field "extra"'),
    ("unknown-field-newline", with_top(**{"a\nb": 1}), 'manifest has unknown field "a\\nb"'),
    ("hash-md5", with_top(hash="md5"), 'unsupported hash algorithm "md5" (expected sha256)'),
    ("hash-uppercase", with_top(hash="SHA256"), "unsupported hash algorithm"),
    ("files-object", with_top(files={}), "manifest files is not a list"),
    # block size
    ("block-size-bool", with_top(block_size=True), "block_size is not an integer: true"),
    ("block-size-string", with_top(block_size="64K"), 'block_size is not an integer: "64K"'),
    ("block-size-float", with_top(block_size=65536.0), "block_size is not an integer: 65536.0"),
    ("block-size-not-pow2", with_top(block_size=100 * KIB), "block size 102400 is not a power"),
    ("block-size-3M", with_top(block_size=3 * 2**20), "block size 3145728 is not a power of two"),
    ("block-size-too-small", with_top(block_size=MIN_BLOCK_SIZE // 2), "block size 32768 is not"),
    ("block-size-too-large", with_top(block_size=MAX_BLOCK_SIZE * 2), "block size 134217728"),
    ("block-size-zero", with_top(block_size=0), "block size 0 is not"),
    ("block-size-negative", with_top(block_size=-65536), "block size -65536 is not"),
    # file objects
    ("file-not-object", with_top(files=["a"]), "files[0] is not an object"),
    ("file-missing-field", with_file(blocks=DELETE), "files[0] lacks blocks"),
    ("file-missing-all", with_top(files=[{}]), "files[0] lacks blocks, executable, path, sha256"),
    ("file-unknown-field", with_file(1, mode=420), 'files[1] has unknown field "mode"'),
    ("path-not-string", with_file(path=["a"]), "files[0].path is not a string"),
    ("size-bool", with_file(1, size=False), 'file "c": size is not an integer: false'),
    ("size-float", with_file(size=70000.0), 'file "a/b.bin": size is not an integer: 70000.0'),
    ("size-string", with_file(size="70000"), "size is not an integer"),
    ("size-null", with_file(size=None), "size is not an integer: null"),
    ("negative-size", with_file(1, size=-1), 'file "c": size -1 is negative'),
    ("executable-int", with_file(executable=1), 'file "a/b.bin": executable is not true or false'),
    ("executable-string", with_file(executable="false"), "executable is not true or false"),
    ("blocks-not-list", with_file(1, blocks=None), 'file "c": blocks is not a list'),
    (
        "too-few-blocks",
        with_file(blocks=[H]),
        'file "a/b.bin": 1 block digests for 70000 bytes, expected 2',
    ),
    ("too-many-blocks", with_file(blocks=[H, H, H]), "3 block digests for 70000 bytes, expected 2"),
    ("empty-file-with-block", with_file(1, blocks=[H]), "1 block digests for 0 bytes, expected 0"),
    ("one-byte-no-block", with_file(1, size=1), "0 block digests for 1 bytes, expected 1"),
    # digests
    (
        "sha-uppercase",
        with_file(sha256=H.upper()),
        'file "a/b.bin": sha256 is not 64 lowercase hex',
    ),
    ("sha-short", with_file(sha256=H[:63]), "sha256 is not 64 lowercase hex digits"),
    ("sha-long", with_file(sha256=H + "0"), "sha256 is not 64 lowercase hex digits"),
    ("sha-non-hex", with_file(sha256="g" * 64), "sha256 is not 64 lowercase hex digits"),
    ("sha-number", with_file(sha256=1), "sha256 is not 64 lowercase hex digits: 1"),
    ("sha-prefixed", with_file(sha256="0x" + H[:62]), "sha256 is not 64 lowercase hex digits"),
    ("block-uppercase", with_file(blocks=[H, H.upper()]), 'file "a/b.bin": block 1 is not 64'),
    ("block-short", with_file(blocks=[H[:10], H]), "block 0 is not 64 lowercase hex digits"),
    ("block-non-hex", with_file(blocks=[H, "z" * 64]), "block 1 is not 64 lowercase hex digits"),
    ("block-null", with_file(blocks=[H, None]), "block 1 is not 64 lowercase hex digits: null"),
    # paths
    ("empty-path", with_paths(""), "file path is empty"),
    ("absolute", with_paths("/etc/passwd"), 'file path "/etc/passwd" is absolute'),
    ("dotdot", with_paths("a/../b"), "file path \"a/../b\" contains '..'"),
    ("dotdot-only", with_paths(".."), "contains '..'"),
    ("dot", with_paths("./a"), "file path \"./a\" contains '.'"),
    ("dot-end", with_paths("a/."), "contains '.'"),
    ("empty-component", with_paths("a//b"), 'file path "a//b" has an empty component'),
    ("trailing-slash", with_paths("a/"), 'file path "a/" has an empty component'),
    ("nul", with_paths("a\x00b"), 'file path "a\\u0000b" contains NUL'),
    ("backslash", with_paths("a\\b"), 'file path "a\\\\b" contains a backslash'),
    ("windows-path", with_paths("C:\\x"), "contains a backslash"),
    (
        "lone-surrogate",
        VALID.replace(b'"c"', b'"\\ud800"'),
        'file path "\\ud800" is not valid UTF-8',
    ),
    ("long-name", with_paths("d/" + "n" * 256), "has a name longer than 255 bytes"),
    ("long-name-utf8", with_paths("é" * 128), "has a name longer than 255 bytes"),
    ("long-path", with_paths("/".join(["n" * 200] * 21)), "is longer than 4096 bytes"),
    ("duplicate-path", with_paths("x", "y", "x"), 'file path "x" appears twice'),
    ("file-and-directory", with_paths("a", "a/b"), '"a" is both a file and a directory'),
    ("file-and-deep-directory", with_paths("a/b/c", "a/b"), '"a/b" is both a file and a directory'),
]


def test_the_valid_base_parses() -> None:
    manifest = parse_manifest(VALID)
    assert [e.path for e in manifest.files] == ["a/b.bin", "c"]
    assert parse_manifest(with_paths("a", "ab/c", "a.b/c")).files


def test_longest_allowed_names_and_paths_parse() -> None:
    name = "n" * 255
    assert parse_manifest(with_paths(name, "é" * 127, "/".join(["m" * 200] * 20) + "/" + "m" * 76))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [pytest.param(raw, expected, id=name) for name, raw, expected in REJECTIONS],
)
def test_rejection(raw: bytes, expected: str) -> None:
    message = assert_manifest_error(raw)
    assert expected in message


def test_make_manifest_checks_like_parse() -> None:
    with pytest.raises(ManifestError, match="appears twice"):
        make_manifest(MIN_BLOCK_SIZE, [FileEntry("x", 0, False, EMPTY_SHA256, ())] * 2)
    with pytest.raises(ManifestError, match="not a power of two"):
        make_manifest(3 * MIN_BLOCK_SIZE, [])


# ---- fuzzing: a ManifestError of one line, or a Manifest; never anything else --------------


@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    parses_or_fails_cleanly(raw)


@given(json_values)
def test_fuzz_arbitrary_json_values(value: Any) -> None:
    parses_or_fails_cleanly(json.dumps(value).encode())


@given(st.dictionaries(st.sampled_from(sorted(base())) | st.text(max_size=5), json_values))
def test_fuzz_objects_with_manifest_keys(value: dict[str, Any]) -> None:
    parses_or_fails_cleanly(
        json.dumps({**value, "format": "lazyfs-manifest", "version": 1}).encode()
    )


@settings(max_examples=100)
@given(manifests(), st.data())
def test_fuzz_one_value_replaced(manifest: Manifest, data: st.DataObject) -> None:
    document = json.loads(manifest.to_json())
    # Walk to a random container in the document and replace one of its values.
    container: Any = document
    while True:
        keys = list(container) if isinstance(container, dict) else list(range(len(container)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        child = container[key]
        if isinstance(child, dict | list) and child and data.draw(st.booleans()):
            container = child
            continue
        container[key] = data.draw(json_values)
        break
    parses_or_fails_cleanly(json.dumps(document).encode())


@settings(max_examples=100)
@given(manifests(), st.data())
def test_fuzz_mutated_bytes(manifest: Manifest, data: st.DataObject) -> None:
    raw = bytearray(manifest.to_json())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            raw[position] = data.draw(st.integers(min_value=0, max_value=255))
        elif action == "delete":
            del raw[position]
        else:
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    parses_or_fails_cleanly(bytes(raw))


def deepest_loadable_nesting() -> int:
    """The deepest list nesting json.loads accepts at this stack depth."""
    low, high = 1, 100_000
    while low < high:
        middle = (low + high + 1) // 2
        try:
            json.loads("[" * middle + "]" * middle)
        except RecursionError:
            high = middle - 1
        else:
            low = middle
    return low


@pytest.mark.parametrize("field", ["version", "hash", "block_size", "sha256", "block", "size"])
def test_deeply_nested_values_in_any_field(field: str) -> None:
    # Values just shallow enough to parse are still too deep to render naively in a message.
    deepest = deepest_loadable_nesting()
    for depth in [*range(deepest - 40, deepest + 3), 100_000]:
        nested = "[" * depth + "]" * depth
        document = json.loads(VALID)
        entry = document["files"][0]
        marker = "@@NESTED@@"
        if field in ("version", "hash", "block_size"):
            document[field] = marker
        elif field == "block":
            entry["blocks"][1] = marker
        else:
            entry[field] = marker
        assert_manifest_error(json.dumps(document).replace(f'"{marker}"', nested).encode())
