"""The fake Xet CAS (tests/fakexet.py) against the real clients it stands in front of.

The real ``hf_xet`` client fills it, the real ``huggingface_hub.snapshot_download`` reads from
it through the fake Hub, and its answers are checked independently of lazyfs's own Xet client:
reconstructions decoded with ``lazyfs.core.xorb`` give the uploaded bytes, and the
``file-chunk-hashes`` windows prove against the client's ``xetHash`` with
``lazyfs.core.xetproof``. Its knobs (expired tokens and URLs, unsigned ranges, failures, a
damaged chunk, a forged gap) are checked to do what tests built on it assume.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import huggingface_hub
import pytest

from lazyfs.core.xethash import chunk_hash, hash_from_hex
from lazyfs.core.xetproof import Subtree, WindowProofError, parse_chunk_windows, prove_windows
from lazyfs.core.xorb import decode_chunk, parse_chunks
from tests.fakehubs import TOKEN, fake_hub
from tests.fakexet import FakeXetCas, build_windows, fake_xet_cas, upload
from tests.xetuploads import SessionUploads

KIB = 1024
ZEROS_AT = 400_000  # mixed.bin: random bytes, then maximum-size chunks of zeros
REPEATED = 300_000  # repeat.bin: parts A, B, A of this size


@pytest.fixture
def cas() -> Iterator[FakeXetCas]:
    with fake_xet_cas() as server:
        yield server


@pytest.fixture(scope="module")
def contents() -> dict[str, bytes]:
    """Random bytes, a run of zeros (maximum-size chunks, deduplicated inside the file) and
    a repeat of an earlier part (a file whose xorb ranges are not contiguous)."""
    rng = random.Random(13)
    head, middle = rng.randbytes(REPEATED), rng.randbytes(REPEATED)
    return {
        "mixed.bin": rng.randbytes(ZEROS_AT) + bytes(5 * 128 * KIB) + rng.randbytes(150_000),
        "repeat.bin": head + middle + head,
        "one-chunk.bin": b"a file of one chunk",
    }


@pytest.fixture(scope="module")
def filled(
    contents: dict[str, bytes], xet_uploads: SessionUploads
) -> Iterator[tuple[FakeXetCas, dict[str, str], str]]:
    """One CAS holding ``contents``, for the tests that only read (no knob turned): the CAS,
    name -> xetHash, and a token. Uploaded by the client once per run, replayed in the other
    test processes (the test of ``SessionUploads`` below shows that gives the same CAS)."""
    with fake_xet_cas() as server:
        hashes = xet_uploads.upload(server, contents)
        token, _ = server.mint_token()
        yield server, hashes, token


# One client for the module: a new one per request (httpx.get) costs tens of milliseconds.
_HTTP = httpx.Client(timeout=30)


def _get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return _HTTP.get(url, headers=headers or {})


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _parts(response: httpx.Response, count: int) -> list[bytes]:
    """The bodies of a 206 answer: one, or the parts of a multipart/byteranges answer."""
    assert response.status_code == 206, response.text
    content_type = response.headers.get("Content-Type", "")
    if count == 1:
        assert not content_type.startswith("multipart/")
        return [response.content]
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("boundary=", 1)[1].encode()
    pieces = response.content.split(b"--" + boundary)
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n"
    bodies = []
    for piece in pieces[1:-1]:
        head, _, body = piece.partition(b"\r\n\r\n")
        assert b"Content-Range: bytes " in head
        assert body.endswith(b"\r\n")
        bodies.append(body[:-2])
    assert len(bodies) == count
    return bodies


def _fetches(answer: dict[str, Any]) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(xorb, url, [{chunks, bytes}]) for a v2 or a v1 answer."""
    if "xorbs" in answer:
        for xorb, entries in answer["xorbs"].items():
            for entry in entries:
                yield xorb, entry["url"], entry["ranges"]
    else:
        for xorb, entries in answer["fetch_info"].items():
            for entry in entries:
                yield xorb, entry["url"], [{"chunks": entry["range"], "bytes": entry["url_range"]}]


def _read(cas: FakeXetCas, token: str, file_hash: str, start: int, end: int, version: str) -> bytes:
    """File bytes ``[start, end)`` as a reader gets them: the reconstruction answer, the
    signed xorb ranges (no Authorization), the chunks decoded, the terms laid end to end."""
    headers = {**_auth(token), "Range": f"bytes={start}-{end - 1}"}
    response = _get(f"{cas.endpoint}/{version}/reconstructions/{file_hash}", headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    chunks: dict[tuple[str, int], bytes] = {}
    for xorb, url, ranges in _fetches(answer):
        spec = ",".join(f"{r['bytes']['start']}-{r['bytes']['end']}" for r in ranges)
        bodies = _parts(_get(url, {"Range": f"bytes={spec}"}), len(ranges))
        for descriptor, body in zip(ranges, bodies, strict=True):
            decoded = [decode_chunk(chunk) for chunk in parse_chunks(body)]
            first, last = descriptor["chunks"]["start"], descriptor["chunks"]["end"]
            assert len(decoded) == last - first
            for index, data in enumerate(decoded, first):
                chunks[(xorb, index)] = data
    pieces = []
    for term in answer["terms"]:
        run = b"".join(
            chunks[(term["hash"], index)]
            for index in range(term["range"]["start"], term["range"]["end"])
        )
        assert len(run) == term["unpacked_length"]
        pieces.append(run)
    offset = answer["offset_into_first_range"]
    return b"".join(pieces)[offset : offset + end - start]


def test_snapshot_download_gets_hf_xet_uploads_byte_identical(
    contents: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_XET_TELEMETRY_ENABLED", "false")
    files = {f"weights/{name}": data for name, data in contents.items()}
    files["model.safetensors"] = contents["mixed.bin"][:300_000]
    files["config.json"] = b'{"small": "git file"}'
    with fake_xet_cas() as cas, fake_hub("hf", cas=cas) as hub:
        repo = hub.add_repo("org/xet-model", files, private=True)
        commit = repo.branches["main"]
        listing = huggingface_hub.HfApi(endpoint=hub.endpoint, token=TOKEN).list_repo_tree(
            "org/xet-model", revision=commit, recursive=True
        )
        listed = {entry.path: getattr(entry, "xet_hash", None) for entry in listing}
        out = huggingface_hub.snapshot_download(
            "org/xet-model",
            revision=commit,
            endpoint=hub.endpoint,
            cache_dir=tmp_path / "cache",
            token=TOKEN,
        )
        for name, data in files.items():
            assert (Path(out) / name).read_bytes() == data, name
        assert listed["config.json"] is None
        assert all(listed[name] in cas.files for name in files if name != "config.json")
        assert cas.counts["reconstructions-v2"] >= 1 and cas.counts["xorb-data"] >= 1
        assert cas.data_authorizations == []
        assert hub.seen("cdn") == []  # the LFS files came through the CAS, not the CDN


def test_snapshot_download_falls_back_to_v1_reconstructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_XET_TELEMETRY_ENABLED", "false")
    data = random.Random(5).randbytes(700_000)
    with fake_xet_cas() as cas, fake_hub("hf", cas=cas) as hub:
        cas.v2_reconstructions = False
        repo = hub.add_repo("org/old-cas", {"model.safetensors": data})
        out = huggingface_hub.snapshot_download(
            "org/old-cas",
            revision=repo.branches["main"],
            endpoint=hub.endpoint,
            cache_dir=tmp_path / "cache",
        )
        assert (Path(out) / "model.safetensors").read_bytes() == data
        assert cas.statuses[("reconstructions-v2", 404)] >= 1
        assert cas.statuses[("reconstructions-v1", 200)] >= 1


def test_xet_read_token_needs_the_hub_token_for_a_private_repo(cas: FakeXetCas) -> None:
    with fake_hub("hf", cas=cas) as hub:
        repo = hub.add_repo("org/secret", {"model.safetensors": b"x" * 100}, private=True)
        route = f"{hub.endpoint}/api/models/org/secret/xet-read-token/{repo.branches['main']}"
        assert _get(route).status_code == 401
        answer = _get(route, _auth(TOKEN))
        assert answer.status_code == 200
        document = answer.json()
        assert document["casUrl"] == cas.endpoint
        assert answer.headers["X-Xet-Access-Token"] == document["accessToken"]
        assert cas.token_valid(document["accessToken"])


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_reconstructions_reassemble_any_range(
    filled: tuple[FakeXetCas, dict[str, str], str], contents: dict[str, bytes], version: str
) -> None:
    cas, hashes, token = filled
    for name, data in contents.items():
        size = len(data)
        for start, end in [(0, size), (size // 3, size // 3 + 100_000), (size - 1, size)]:
            got = _read(cas, token, hashes[name], start, end, version)
            assert got == data[start:end], (name, start, end)
    file_hash = hashes["mixed.bin"]
    past_end = {**_auth(token), "Range": f"bytes={len(contents['mixed.bin'])}-"}
    assert (
        _get(f"{cas.endpoint}/{version}/reconstructions/{file_hash}", past_end).status_code == 416
    )


def test_an_upload_saved_once_per_run_replays_into_another_cas_as_the_client_left_it(
    contents: dict[str, bytes], tmp_path: Path
) -> None:
    files = {name: contents[name] for name in ("mixed.bin", "repeat.bin")}
    # Two test processes of one run: each its own CAS, one directory between them.
    first, second = SessionUploads(tmp_path / "run"), SessionUploads(tmp_path / "run")
    with fake_xet_cas() as uploaded, fake_xet_cas() as replayed, fake_xet_cas() as other:
        hashes = first.upload(uploaded, files)
        assert uploaded.counts["xorb-upload"] >= 1 and uploaded.counts["shard-upload"] >= 1
        assert second.upload(replayed, files) == hashes
        assert replayed.counts == Counter()  # from the saved upload, not the client
        assert replayed.files == uploaded.files
        assert replayed.xorb_chunks == uploaded.xorb_chunks
        assert replayed.xorbs == uploaded.xorbs and replayed.served == uploaded.served
        token, _ = replayed.mint_token()
        for name, data in files.items():
            assert _read(replayed, token, hashes[name], 0, len(data), "v2") == data
        # Damage in one process's CAS stays there.
        replayed.corrupt(hashes["mixed.bin"], 1000)
        token, _ = uploaded.mint_token()
        assert (
            _read(uploaded, token, hashes["mixed.bin"], 0, 2000, "v2") == files["mixed.bin"][:2000]
        )
        # Other files are uploaded by the client again.
        second.upload(other, {"one-chunk.bin": contents["one-chunk.bin"]})
        assert other.counts["shard-upload"] >= 1


def test_v2_reconstructions_switched_off_answer_404(cas: FakeXetCas) -> None:
    (file_hash,) = upload(cas, {"f": b"one chunk"}).values()
    token, _ = cas.mint_token()
    cas.v2_reconstructions = False
    assert _get(f"{cas.endpoint}/v2/reconstructions/{file_hash}", _auth(token)).status_code == 404
    assert _get(f"{cas.endpoint}/v1/reconstructions/{file_hash}", _auth(token)).status_code == 200


def test_several_ranges_of_one_xorb_come_back_multipart(
    filled: tuple[FakeXetCas, dict[str, str], str], contents: dict[str, bytes]
) -> None:
    cas, hashes, token = filled
    data, file_hash = contents["repeat.bin"], hashes["repeat.bin"]
    start = 2 * REPEATED - 1  # the last byte of the middle part, then the repeated head
    sent_before = cas.counts["xorb-data"]
    answer = _get(
        f"{cas.endpoint}/v2/reconstructions/{file_hash}",
        {**_auth(token), "Range": f"bytes={start}-{len(data) - 1}"},
    ).json()
    assert any(len(ranges) > 1 for _, _, ranges in _fetches(answer))
    assert _read(cas, token, file_hash, start, len(data), "v2") == data[start:]
    assert cas.counts["xorb-data"] - sent_before == 1  # both ranges in one request


def test_file_chunk_hashes_windows_prove_against_the_xet_hash(
    filled: tuple[FakeXetCas, dict[str, str], str], contents: dict[str, bytes]
) -> None:
    cas, hashes, token = filled
    for name, data in contents.items():
        size = len(data)
        cases = [[(0, 1)], [(size // 2, size // 2 + 10)], [(size - 1, size)]]
        if size > 10_000:
            cases.append([(1000, 2000), (size - 5000, size - 4000)])
        for dirty in cases:
            header = "bytes=" + ",".join(f"{s}-{e - 1}" for s, e in dirty)
            url = f"{cas.endpoint}/v2/file-chunk-hashes/{hashes[name]}"
            response = _get(url, {**_auth(token), "X-Range-Dirty": header})
            assert response.status_code == 200, response.text
            document = response.json()
            assert document["totalChunks"] == len(cas.file_chunks(hashes[name]))
            assert document["gapVerification"] == [] or all(
                isinstance(h, str) for h in document["gapVerification"]
            )
            answer = parse_chunk_windows(response.content, name)
            for s, e in dirty:
                assert any(ws <= s and e <= we for ws, we in answer.windows)
            window_chunks = [
                _chunks_of(cas, token, hashes[name], data, ws, we) for ws, we in answer.windows
            ]
            prove_windows(answer, window_chunks, hash_from_hex(hashes[name]), size)


def _chunks_of(
    cas: FakeXetCas, token: str, file_hash: str, data: bytes, start: int, end: int
) -> list[tuple[bytes, int]]:
    """The (hash, size) of the chunks of bytes ``[start, end)``, hashed from the bytes a
    reconstruction of that window gives (cut where the CAS's chunk table says)."""
    window = _read(cas, token, file_hash, start, end, "v2")
    assert window == data[start:end]
    chunks, position = [], 0
    for _, size in cas.file_chunks(file_hash):
        if start <= position < end:
            chunks.append((chunk_hash(window[position - start : position - start + size]), size))
        position += size
    return chunks


def test_a_forged_gap_fails_the_proof_and_an_old_cas_has_no_chunk_hashes(
    cas: FakeXetCas, contents: dict[str, bytes]
) -> None:
    data = contents["repeat.bin"]
    (file_hash,) = upload(cas, {"repeat.bin": data}).values()
    token, _ = cas.mint_token()
    url = f"{cas.endpoint}/v2/file-chunk-hashes/{file_hash}"
    headers = {**_auth(token), "X-Range-Dirty": f"bytes={len(data) // 2}-{len(data) // 2}"}
    for how in ("hash", "size"):
        cas.forge_gap = how
        response = _get(url, headers)
        answer = parse_chunk_windows(response.content, "forged")
        ((start, end),) = answer.windows
        chunks = _chunks_of(cas, token, file_hash, data, start, end)
        with pytest.raises(WindowProofError):
            prove_windows(answer, [chunks], hash_from_hex(file_hash), len(data))
    cas.forge_gap = None
    cas.file_chunk_hashes = False
    assert _get(url, headers).status_code == 404


def test_tokens_are_checked_and_expire(cas: FakeXetCas, contents: dict[str, bytes]) -> None:
    (file_hash,) = upload(cas, {"f": contents["one-chunk.bin"]}).values()
    url = f"{cas.endpoint}/v2/reconstructions/{file_hash}"
    token, _ = cas.mint_token()
    assert _get(url).status_code == 401
    assert _get(url, _auth("xet_not_minted_here")).status_code == 401
    assert _get(url, _auth(token)).status_code == 200
    cas.expire_tokens()
    assert _get(url, _auth(token)).status_code == 401
    short, _ = cas.mint_token(ttl=-1)
    assert _get(url, _auth(short)).status_code == 401
    fresh, _ = cas.mint_token()
    assert _get(url, _auth(fresh)).status_code == 200
    assert cas.statuses[("reconstructions-v2", 401)] == 4


def test_data_urls_are_signed_for_their_ranges_and_expire(
    cas: FakeXetCas, contents: dict[str, bytes]
) -> None:
    data = contents["mixed.bin"]
    (file_hash,) = upload(cas, {"mixed.bin": data}).values()
    token, _ = cas.mint_token()
    middle = len(data) // 2
    answer = _get(
        f"{cas.endpoint}/v2/reconstructions/{file_hash}",
        {**_auth(token), "Range": f"bytes={middle}-{middle + 200_000}"},
    ).json()
    ((_, url, ranges),) = list(_fetches(answer))
    ((first, last),) = [(r["bytes"]["start"], r["bytes"]["end"]) for r in ranges]
    signed = f"bytes={first}-{last}"
    assert _get(url, {"Range": f"bytes={first}-{last + 1}"}).status_code == 403
    assert _get(url, {"Range": f"bytes=0-{last}"}).status_code == 403
    assert _get(url).status_code == 403
    assert _get(url.replace("sig=", "sig=0"), {"Range": signed}).status_code == 403
    sent_before = cas.xorb_bytes_sent
    assert _get(url, {"Range": signed}).status_code == 206
    assert cas.xorb_bytes_sent - sent_before == last - first + 1
    assert cas.data_authorizations == []
    assert _get(url, {"Range": signed, **_auth(token)}).status_code == 206
    assert cas.data_authorizations == [f"Bearer {token}"]
    cas.expire_urls()
    assert _get(url, {"Range": signed}).status_code == 403


def test_failures_are_injected_then_answers_resume(
    cas: FakeXetCas, contents: dict[str, bytes]
) -> None:
    (file_hash,) = upload(cas, {"f": contents["one-chunk.bin"]}).values()
    token, _ = cas.mint_token()
    url = f"{cas.endpoint}/v2/reconstructions/{file_hash}"
    cas.fail(429, times=2, retry_after="1")
    cas.fail(503, kinds=["file-chunk-hashes"])
    first = _get(url, _auth(token))
    assert (first.status_code, first.headers.get("Retry-After")) == (429, "1")
    assert _get(url, _auth(token)).status_code == 429
    assert _get(url, _auth(token)).status_code == 200
    chunk_hashes = f"{cas.endpoint}/v2/file-chunk-hashes/{file_hash}"
    dirty = {**_auth(token), "X-Range-Dirty": "bytes=0-0"}
    assert _get(chunk_hashes, dirty).status_code == 503
    assert _get(chunk_hashes, dirty).status_code == 200


def test_a_corrupted_chunk_serves_one_different_byte_until_healed(
    cas: FakeXetCas, contents: dict[str, bytes]
) -> None:
    data = contents["mixed.bin"]
    (file_hash,) = upload(cas, {"mixed.bin": data}).values()
    token, _ = cas.mint_token()
    offset = ZEROS_AT // 2 + 12_345
    cas.corrupt(file_hash, offset)
    served = _read(cas, token, file_hash, 0, len(data), "v2")
    assert len(served) == len(data)
    assert _differences(served, data) == [offset]
    assert hashlib.sha256(served).hexdigest() != hashlib.sha256(data).hexdigest()
    cas.heal()
    assert _read(cas, token, file_hash, 0, len(data), "v2") == data
    # A compressed chunk (zeros) is encoded again and still decodes, to the flipped byte.
    in_zeros = ZEROS_AT + 1000
    cas.corrupt(file_hash, in_zeros)
    served = _read(cas, token, file_hash, 0, len(data), "v2")
    assert len(served) == len(data) and served[in_zeros] == 0xFF


def _differences(a: bytes, b: bytes) -> list[int]:
    """Where two equally long byte strings differ (compared a block at a time, then bytewise)."""
    found = []
    for block in range(0, len(a), 4096):
        if a[block : block + 4096] != b[block : block + 4096]:
            end = min(block + 4096, len(a))
            found += [i for i in range(block, end) if a[i] != b[i]]
    return found


# xet-core's own cases for its window builder (chunk_window_builder.rs): chunks of a stable
# size (16 KiB) close a window two chunks after the dirty range, maximum-size ones never do.
STABLE = 16 * KIB


def _same_size_chunks(count: int, size: int) -> list[tuple[bytes, int]]:
    return [(bytes([n]) * 32, size) for n in range(count)]


@pytest.mark.parametrize(
    ("count", "size", "dirty", "windows"),
    [
        (6, STABLE, [(1, STABLE + 1)], [(0, 4 * STABLE)]),
        (8, STABLE, [(1, STABLE + 1), (3 * STABLE + 7, 3 * STABLE + 42)], [(0, 6 * STABLE)]),
        (6, STABLE, [(4 * STABLE, 6 * STABLE)], [(4 * STABLE, 6 * STABLE)]),
        (
            20,
            STABLE,
            [(0, STABLE), (14 * STABLE, 15 * STABLE)],
            [(0, 3 * STABLE), (14 * STABLE, 17 * STABLE)],
        ),
        (4, 128 * KIB, [(0, 128 * KIB)], [(0, 4 * 128 * KIB)]),
    ],
)
def test_windows_are_built_as_xet_core_builds_them(
    count: int, size: int, dirty: list[tuple[int, int]], windows: list[tuple[int, int]]
) -> None:
    chunks = _same_size_chunks(count, size)
    built, gaps = build_windows(chunks, count * size, dirty)
    assert built == windows
    assert len(gaps) == len(windows) + 1
    gap_bytes = sum(sum(s for _, s in run) for _, run, _ in gaps if run is not None)
    assert gap_bytes + sum(e - s for s, e in built) == count * size
    assert gaps[0][0] and gaps[-1][2]  # the first gap starts the file, the last one ends it


def test_tails_read_off_the_tree_are_the_subtrees_built_whole() -> None:
    from tests.fakexet import TreeLevels
    from tests.pure.test_xetproof import make_chunks

    for seed, count in ((1, 1), (2, 7), (3, 300), (4, 2500)):
        chunks = make_chunks(seed, count)
        levels = TreeLevels.of(chunks)
        for low in {0, 1, count // 3, count // 2, count - 2, count - 1} - {-1}:
            if 0 <= low < count:
                built = Subtree.from_chunks(False, chunks[low:], True)
                assert levels.trailing_gap(low) == built, (seed, count, low)
