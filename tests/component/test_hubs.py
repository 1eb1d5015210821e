"""Hub sources, listings, errors and mount entries (pure), and whole-file verification
against an in-memory source."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.cache.blocklists import BlockLists
from lazyfs.cache.store import BlockStore
from lazyfs.core import hubs as hubs
from lazyfs.core.hubs import HubFile, HubRepo, Snapshot
from lazyfs.core.manifest import MANIFEST_NAME, FileCheck, FileEntry, make_manifest
from lazyfs.errors import ManifestError, OriginUnreachable, SourceError, UsageError
from lazyfs.read.fetcher import BlockFetcher
from lazyfs.read.reader import BlockReader
from lazyfs.read.wholefile import FileIntegrityError, stream_whole_file
from tests.component.test_reader import FakeSource
from tests.fakehubs import git_blob_sha1

BS = 64 * 1024
COMMIT = "a" * 40


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def block_digests(data: bytes, block_size: int = BS) -> tuple[str, ...]:
    return tuple(sha(data[i : i + block_size]) for i in range(0, len(data), block_size))


# Sources


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://org/name", HubRepo("hf", "org/name", "main")),
        ("hf://org/name@v1.0", HubRepo("hf", "org/name", "v1.0")),
        ("hf://org/name@refs/pr/1", HubRepo("hf", "org/name", "refs/pr/1")),
        ("hf://datasets/org/data", HubRepo("hf", "org/data", "main", dataset=True)),
        ("hf://Org-1/My_model.v2@" + COMMIT, HubRepo("hf", "Org-1/My_model.v2", COMMIT)),
        ("modelscope://qwen/Qwen2-7B", HubRepo("modelscope", "qwen/Qwen2-7B", "master")),
        ("modelscope://qwen/Qwen2-7B@v1", HubRepo("modelscope", "qwen/Qwen2-7B", "v1")),
    ],
)
def test_hub_sources_parse(text: str, expected: HubRepo) -> None:
    repo = hubs.parse_hub_source(text)
    assert repo == expected
    assert hubs.parse_hub_source(repo.name) == repo


@pytest.mark.parametrize(
    "text",
    [
        "hf://name",
        "hf://a/b/c",
        "hf://org/name@",
        "hf://org/na me",
        "hf://org/../x",
        "hf://org/name@a..b",
        "hf://org/name@a,b",
        "hf://datasets/name",
        "modelscope://datasets/org/name",
        "s3://org/name",
    ],
)
def test_bad_hub_sources_are_one_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        hubs.parse_hub_source(text)
    assert "\n" not in str(caught.value)


@given(st.text(max_size=80))
def test_any_hub_source_parses_or_fails_cleanly(rest: str) -> None:
    for scheme in ("hf://", "modelscope://"):
        try:
            repo = hubs.parse_hub_source(scheme + rest)
        except UsageError:
            continue
        assert hubs.parse_hub_source(repo.name) == repo
        assert "," not in repo.name and "\n" not in repo.name


def test_endpoints_must_be_http_urls() -> None:
    assert hubs.check_endpoint("hf", "http://127.0.0.1:9/") == "http://127.0.0.1:9"
    with pytest.raises(UsageError, match="HF_ENDPOINT"):
        hubs.check_endpoint("hf", "huggingface.co")


def test_urls_name_the_commit_and_quote_paths() -> None:
    repo = HubRepo("hf", "org/name", "refs/pr/1")
    assert hubs.hf_revision_url("http://h", repo).endswith("/revision/refs%2Fpr%2F1")
    assert hubs.hf_file_url("http://h", repo, COMMIT, "a b/c#.json") == (
        f"http://h/org/name/resolve/{COMMIT}/a%20b/c%23.json"
    )
    data = HubRepo("hf", "org/d", "main", dataset=True)
    assert hubs.hf_tree_url("http://h", data, COMMIT).startswith("http://h/api/datasets/org/d/")
    ms = HubRepo("modelscope", "org/m", "master")
    assert hubs.modelscope_file_url("http://h", ms, COMMIT, "a/b c.bin") == (
        f"http://h/api/v1/models/org/m/repo?Revision={COMMIT}&FilePath=a%2Fb+c.bin"
    )


# Listings


def test_hf_tree_page_gives_lfs_sha256_and_git_blob_ids() -> None:
    page = [
        {"type": "directory", "oid": "0" * 40, "size": 0, "path": "sub"},
        {"type": "file", "oid": "b" * 40, "size": 9, "path": "config.json"},
        {
            "type": "file",
            "oid": "c" * 40,
            "size": 100,
            "path": "sub/model.safetensors",
            "lfs": {"oid": "d" * 64, "size": 100, "pointerSize": 134},
        },
    ]
    files = hubs.parse_hf_tree_page(json.dumps(page).encode(), "u")
    assert files == [
        HubFile("config.json", 9, git_sha1="b" * 40),
        HubFile("sub/model.safetensors", 100, sha256="d" * 64),
    ]
    assert files[0].check == FileCheck("git-sha1", "b" * 40)
    assert files[1].check == FileCheck("sha256", "d" * 64)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b"[1]",
        b'[{"type": "file", "path": "a"}]',
        b'[{"type": "file", "path": "a", "size": true, "oid": "' + b"b" * 40 + b'"}]',
        b'[{"type": "file", "path": "a", "size": 1, "oid": "xyz"}]',
        b'[{"type": "file", "path": "a", "size": 1, "oid": "' + b"b" * 40 + b'", "lfs": {}}]',
        b'[{"type": "file", "path": "a", "size": 1, "lfs": {"oid": "'
        + b"d" * 64
        + b'", "size": 2}}]',
    ],
)
def test_malformed_hf_listings_are_one_source_error(body: bytes) -> None:
    with pytest.raises(SourceError) as caught:
        hubs.parse_hf_tree_page(body, "http://hub/tree")
    assert "\n" not in str(caught.value)


def test_modelscope_listing_and_wrapper() -> None:
    body = {
        "Code": 200,
        "Success": True,
        "Message": "success",
        "Data": {
            "Files": [
                {"Path": "sub", "Type": "tree", "Size": 0},
                {"Path": "run.sh", "Type": "blob", "Size": 3, "Sha256": "e" * 64, "Mode": "100755"},
            ]
        },
    }
    files = hubs.parse_modelscope_files(json.dumps(body).encode(), "u")
    assert files == [HubFile("run.sh", 3, sha256="e" * 64, executable=True)]
    refused = {"Code": 10010205001, "Message": "record not found", "Success": False}
    with pytest.raises(SourceError, match="Code 10010205001: record not found"):
        hubs.parse_modelscope_files(json.dumps(refused).encode(), "u")


def test_modelscope_revisions_resolve_branches_tags_and_commits() -> None:
    def body(branches: list[dict[str, object]]) -> bytes:
        data = {"RevisionMap": {"Branches": branches, "Tags": [{"Revision": "v1"}]}}
        return json.dumps({"Code": 200, "Success": True, "Data": data}).encode()

    master = HubRepo("modelscope", "o/m", "master")
    listed = body([{"Revision": "master", "CommitId": COMMIT, "CreatedAt": 1700000000}])
    assert hubs.parse_modelscope_revision(listed, master, "u") == (COMMIT, 1700000000.0)
    unnamed = body([{"Revision": "master"}])
    assert hubs.parse_modelscope_revision(unnamed, master, "u") == (None, None)
    tag = HubRepo("modelscope", "o/m", "v1")
    assert hubs.parse_modelscope_revision(listed, tag, "u")[0] is None
    pinned = HubRepo("modelscope", "o/m", "b" * 40)
    assert hubs.parse_modelscope_revision(listed, pinned, "u")[0] == "b" * 40
    with pytest.raises(SourceError, match="revision 'dev' not found"):
        hubs.parse_modelscope_revision(listed, HubRepo("modelscope", "o/m", "dev"), "u")


def test_hf_revision_answer() -> None:
    body = json.dumps({"sha": COMMIT, "lastModified": "2024-01-02T03:04:05.000Z"}).encode()
    commit, modified = hubs.parse_hf_revision(body, "u")
    assert commit == COMMIT and modified == 1704164645.0
    with pytest.raises(SourceError, match="no commit id"):
        hubs.parse_hf_revision(b'{"sha": "main"}', "u")


@pytest.mark.parametrize(
    ("status", "code", "words"),
    [
        (401, "RepoNotFound", "not found, or private"),
        (401, None, "not found, or private"),
        (404, "RevisionNotFound", "revision 'main' not found"),
        (404, "EntryNotFound", "file not found"),
        (403, "GatedRepo", "gated"),
        (429, None, "rate-limited"),
        (500, None, "HTTP 500"),
    ],
)
def test_hf_errors_are_named(status: int, code: str | None, words: str) -> None:
    message = hubs.hf_error_message(HubRepo("hf", "o/m", "main"), status, code, "x\ny")
    assert words in message and "\n" not in message


def test_modelscope_errors_are_named() -> None:
    repo = HubRepo("modelscope", "o/m", "master")
    assert "private" in hubs.modelscope_error_message(repo, 403, b'{"Message": "no"}')
    assert "not found" in hubs.modelscope_error_message(repo, 404, b"junk")
    assert "rate-limited" in hubs.modelscope_error_message(repo, 429, b"")


def test_unsafe_listing_paths_are_refused() -> None:
    repo = HubRepo("hf", "o/m", "main")
    for bad in ("../escape", "/abs", "a//b", "a/./b"):
        snapshot = Snapshot(repo, COMMIT, (HubFile(bad, 1, git_sha1="b" * 40),))
        with pytest.raises(SourceError, match="unsafe path"):
            hubs.check_listing(snapshot)
    clash = (HubFile("a", 1, git_sha1="b" * 40), HubFile("a/b", 1, git_sha1="b" * 40))
    with pytest.raises(SourceError, match="both a file and a directory"):
        hubs.check_listing(Snapshot(repo, COMMIT, clash))


# Mount entries


WEIGHTS = os.urandom(3 * BS + 5)
CONFIG = b'{"hidden": 8}\n'


def snapshot_of(files: dict[str, bytes], lfs: set[str]) -> Snapshot:
    listed = tuple(
        HubFile(path, len(data), sha256=sha(data))
        if path in lfs
        else HubFile(path, len(data), git_sha1=git_blob_sha1(data))
        for path, data in sorted(files.items())
    )
    return Snapshot(HubRepo("hf", "o/m", "main"), COMMIT, listed)


def manifest_of(files: dict[str, bytes]) -> object:
    return make_manifest(
        BS,
        [
            FileEntry(path, len(data), False, sha(data), block_digests(data))
            for path, data in files.items()
        ],
    )


FILES = {"config.json": CONFIG, "model.safetensors": WEIGHTS}
SNAPSHOT = snapshot_of({**FILES, MANIFEST_NAME: b"{}"}, {"model.safetensors"})


def test_without_a_manifest_every_file_is_verified_whole() -> None:
    block_size, entries = hubs.mount_entries(SNAPSHOT, None, 4 * 1024 * 1024)
    assert block_size == 4 * 1024 * 1024
    assert [entry.path for entry in entries] == ["config.json", "model.safetensors"]
    assert all(entry.blocks == () and entry.check is not None for entry in entries)
    assert entries[0].check == FileCheck("git-sha1", git_blob_sha1(CONFIG))


def test_a_matching_manifest_gives_lfs_files_their_blocks() -> None:
    manifest = manifest_of(FILES)
    block_size, entries = hubs.mount_entries(SNAPSHOT, manifest, 4 * 1024 * 1024)  # type: ignore[arg-type]
    assert block_size == BS
    config, weights = entries
    assert weights.blocks == block_digests(WEIGHTS) and weights.check is None
    # A file the hub knows only by its Git blob id is still checked against the hub.
    assert config.blocks == () and config.check == FileCheck("git-sha1", git_blob_sha1(CONFIG))


def test_a_signed_manifest_gives_every_file_its_blocks_and_a_signature_stays_whole() -> None:
    """Signed, the manifest is the root of trust: a Git file is served by the signed digests,
    not by the hub's blob id, which a hostile hub could serve other same-size bytes under."""
    signed = snapshot_of({**FILES, MANIFEST_NAME: b"{}", "model.sig": b"{}"}, {"model.safetensors"})
    manifest = manifest_of(FILES)
    _, entries = hubs.mount_entries(signed, manifest, 4 * 1024 * 1024, signed=True)  # type: ignore[arg-type]
    config, weights, signature = entries
    assert config == manifest.files[0] and weights == manifest.files[1]  # type: ignore[attr-defined]
    assert signature.path == "model.sig" and signature.check is not None


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({**FILES, "extra.txt": b"x"}, '"extra.txt" is not in the repository'),
        ({"config.json": CONFIG}, '"model.safetensors" is not in the manifest'),
        (
            {**FILES, "config.json": CONFIG + b" "},
            '"config.json" is 14 bytes, the manifest says 15',
        ),
        ({**FILES, "model.safetensors": WEIGHTS[::-1]}, '"model.safetensors" has sha256'),
    ],
)
def test_a_manifest_of_another_revision_is_refused(files: dict[str, bytes], problem: str) -> None:
    with pytest.raises(ManifestError, match="manifest does not match this revision") as caught:
        hubs.mount_entries(SNAPSHOT, manifest_of(files), BS)  # type: ignore[arg-type]
    assert problem in str(caught.value)


# Whole-file verification


def pending(path: str, data: bytes, check: FileCheck) -> FileEntry:
    return FileEntry(path, len(data), False, "", (), check)


class ShuffledSource(FakeSource):
    """Answers fetches in a random order, to prove the whole-file hash is fed in order."""

    async def fetch_block(
        self, path: str, start: int, length: int, *, no_cache: bool = False
    ) -> tuple[bytes, str]:
        await trio.sleep(random.random() / 100)
        return await super().fetch_block(path, start, length)


@pytest.mark.parametrize("size", [0, 1, BS - 1, BS, 5 * BS + 17])
def test_streaming_yields_the_block_list_of_a_matching_file(size: int) -> None:
    data = os.urandom(size)
    fetcher = BlockFetcher([ShuffledSource({"f": data}, BS)])
    kept: list[str] = []

    async def keep(digest: str, block: object) -> None:
        kept.append(digest)

    for check in (FileCheck("sha256", sha(data)), FileCheck("git-sha1", git_blob_sha1(data))):
        kept.clear()
        entry = trio.run(stream_whole_file, fetcher, pending("f", data, check), BS, keep)
        assert entry.blocks == block_digests(data) and entry.sha256 == sha(data)
        assert entry.check is None and kept == list(block_digests(data))


def test_a_corrupt_byte_fails_the_whole_file() -> None:
    data = os.urandom(4 * BS)
    source = FakeSource({"f": data}, BS)
    source.corrupt_always.add(("f", 2))
    entry = pending("f", data, FileCheck("sha256", sha(data)))
    with pytest.raises(FileIntegrityError, match="does not match the hub's sha256"):
        trio.run(stream_whole_file, BlockFetcher([source]), entry, BS)


def test_a_failed_fetch_fails_the_stream() -> None:
    data = os.urandom(4 * BS)
    source = FakeSource({"f": data}, BS)
    source.errors[("f", 3)] = SourceError("HTTP 503")
    entry = pending("f", data, FileCheck("sha256", sha(data)))
    with pytest.raises(SourceError, match="HTTP 503"):
        trio.run(stream_whole_file, BlockFetcher([source]), entry, BS)


def test_a_whole_file_read_retries_a_failed_fetch_and_counts_it(tmp_path: Path) -> None:
    """Whole-file streams go through the reader's fetcher: a transport error is retried like
    any block's, and the traffic is counted."""
    data = os.urandom(4 * BS)
    source = FakeSource({"f": data}, BS)
    source.errors_once[("f", 2)] = OriginUnreachable("http://origin.test/repo/f: reset")
    store = BlockStore(tmp_path / "blocks", 1 << 30)
    entry = pending("f", data, FileCheck("sha256", sha(data)))
    reader = BlockReader(source, store, BS)
    try:
        assert bytes(trio.run(reader.read, entry, 0, 4 * BS)) == data
    finally:
        store.close()
    assert source.fetches(("f", 2)) == 2
    assert (reader.counters.blocks_fetched, reader.counters.bytes_fetched) == (4, 4 * BS)
    assert reader.fetcher.counters.retries == 1


def test_block_lists_round_trip_and_damage_is_ignored(tmp_path: Path) -> None:
    data = os.urandom(2 * BS + 1)
    entry = pending("f", data, FileCheck("sha256", sha(data)))
    lists = BlockLists(tmp_path / "verified")
    assert lists.load(entry, BS) is None
    verified = trio.run(stream_whole_file, BlockFetcher([FakeSource({"f": data}, BS)]), entry, BS)
    lists.store(entry, verified, BS)
    loaded = lists.load(entry, BS)
    assert loaded is not None and loaded.blocks == verified.blocks
    (stored,) = (tmp_path / "verified").iterdir()
    assert stored.stat().st_mode & 0o777 == 0o600
    document = json.loads(stored.read_text())
    document["blocks"][0] = "0" * 64
    stored.write_text(json.dumps(document))
    assert lists.load(entry, BS) is None


def test_reader_verifies_once_then_reads_blocks(tmp_path: Path) -> None:
    data = os.urandom(5 * BS)
    source = FakeSource({"f": data}, BS)
    store = BlockStore(tmp_path / "blocks", 1 << 30)
    entry = pending("f", data, FileCheck("sha256", sha(data)))
    reader = BlockReader(source, store, BS, block_lists=BlockLists(tmp_path / "verified"))

    async def main() -> list[bytes]:
        results: list[bytes] = []

        async def read(offset: int) -> None:
            results.append(bytes(await reader.read(entry, offset, 100)))

        async with trio.open_nursery() as nursery:
            for offset in (0, BS, 3 * BS + 7):
                nursery.start_soon(read, offset)
        return results

    results = trio.run(main)
    assert sorted(results) == sorted(data[o : o + 100] for o in (0, BS, 3 * BS + 7))
    assert len(source.calls) == 5  # one stream, shared by the three readers
    assert reader.whole_files.known(entry).blocks == block_digests(data)
    # A new reader (a remount) finds the block list and the cached blocks.
    again = BlockReader(source, store, BS, block_lists=BlockLists(tmp_path / "verified"))
    assert bytes(trio.run(again.read, entry, 2 * BS, 10)) == data[2 * BS : 2 * BS + 10]
    assert len(source.calls) == 5
    store.close()


def test_a_planted_block_list_and_blocks_are_never_served(tmp_path: Path) -> None:
    """The cache is not trusted: a list and blocks written into it by someone else are
    checked against the hub's digest, found out, and replaced from the hub."""
    data = os.urandom(3 * BS)
    evil = os.urandom(3 * BS)
    source = FakeSource({"f": data}, BS)
    store = BlockStore(tmp_path / "blocks", 1 << 30)
    entry = pending("f", data, FileCheck("sha256", sha(data)))
    lists = BlockLists(tmp_path / "verified")
    forged = FileEntry("f", len(evil), False, sha(evil), block_digests(evil))
    lists.store(entry, forged, BS)
    for digest, start in zip(forged.blocks, range(0, len(evil), BS), strict=True):
        store.put(digest, evil[start : start + BS])
    reader = BlockReader(source, store, BS, block_lists=lists)
    assert bytes(trio.run(reader.read, entry, 0, 3 * BS)) == data
    assert len(source.calls) == 3
    loaded = lists.load(entry, BS)
    assert loaded is not None and loaded.blocks == block_digests(data)
    store.close()


def test_a_cancelled_verification_hands_over_to_a_waiting_reader(tmp_path: Path) -> None:
    data = os.urandom(2 * BS)
    source = FakeSource({"f": data}, BS)
    source.gate_all = trio.Event()
    store = BlockStore(tmp_path / "blocks", 1 << 30)
    entry = pending("f", data, FileCheck("sha256", sha(data)))
    reader = BlockReader(source, store, BS)

    async def main() -> bytes:
        async with trio.open_nursery() as nursery:
            first = trio.CancelScope()

            async def cancelled_reader() -> None:
                with first:
                    await reader.read(entry, 0, 10)

            nursery.start_soon(cancelled_reader)
            await trio.testing.wait_all_tasks_blocked()
            waiter: list[bytes] = []

            async def waiting_reader() -> None:
                waiter.append(bytes(await reader.read(entry, BS, 10)))

            nursery.start_soon(waiting_reader)
            await trio.testing.wait_all_tasks_blocked()
            first.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert source.gate_all is not None
            source.gate_all.set()
        return waiter[0]

    assert trio.run(main) == data[BS : BS + 10]
    store.close()


def test_listing_sizes_and_modes_are_bounded_and_read_both_ways() -> None:
    huge = [{"type": "file", "path": "a", "size": 2**63, "oid": "b" * 40}]
    with pytest.raises(SourceError, match="lacks a path or size"):
        hubs.parse_hf_tree_page(json.dumps(huge).encode(), "u")

    def mode(value: object) -> bool:
        item = {"Path": "x", "Type": "blob", "Size": 1, "Sha256": "e" * 64, "Mode": value}
        body = {"Code": 200, "Success": True, "Data": {"Files": [item]}}
        return hubs.parse_modelscope_files(json.dumps(body).encode(), "u")[0].executable

    assert mode("100755") and mode("33261") and mode(33261)
    assert not mode("100644") and not mode("33188") and not mode(None) and not mode("rwx")


def test_hub_messages_stay_on_one_line() -> None:
    refused = {"Code": "1\n2", "Message": "line one\nline two\r\x1b[31m", "Success": False}
    with pytest.raises(SourceError) as caught:
        hubs.parse_modelscope_files(json.dumps(refused).encode(), "u")
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)
    odd = [{"type": "file", "path": "a\nb", "size": 1, "oid": "xyz"}]
    with pytest.raises(SourceError) as caught:
        hubs.parse_hf_tree_page(json.dumps(odd).encode(), "u")
    assert "\n" not in str(caught.value)
