"""Hub listings kept for offline mounts: the document round-trips, damage never yields another
listing, and HF_HUB_OFFLINE is read as huggingface_hub reads it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.hubs import HubFile, HubRepo, Snapshot, offline_setting
from lazyfs.core.listings import (
    CachedListing,
    decode_listing,
    document_checksum,
    encode_listing,
    listing_key,
    listing_keys,
)
from lazyfs.errors import CacheError

ENDPOINT = "https://huggingface.co"
COMMIT = "a" * 40
hex40 = st.binary(min_size=20, max_size=20).map(bytes.hex)
hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)


@st.composite
def hub_files(draw: st.DrawFn) -> HubFile:
    path = draw(st.text(min_size=1, max_size=30))
    size = draw(st.integers(0, 2**50))
    if draw(st.booleans()):
        return HubFile(path, size, sha256=draw(hex64), xet_hash=draw(st.none() | hex64))
    return HubFile(path, size, git_sha1=draw(hex40), executable=draw(st.booleans()))


listings = st.builds(
    lambda repo, commit, files, modified, resolved_at: CachedListing(
        Snapshot(repo, commit, tuple(files), modified), resolved_at
    ),
    st.builds(
        HubRepo,
        st.sampled_from(["hf", "modelscope"]),
        st.sampled_from(["org/model", "org/other"]),
        st.sampled_from(["main", "refs/pr/3", "v1.0"]),
        st.booleans(),
    ),
    hex40,
    st.lists(hub_files(), max_size=8),
    st.none() | st.floats(0, 4e9),
    st.floats(0, 4e9),
)


@given(listings)
def test_a_kept_listing_reads_back_as_it_was(listing: CachedListing) -> None:
    raw = encode_listing(listing, ENDPOINT)
    assert decode_listing(raw, listing.snapshot.repo, ENDPOINT) == listing
    # The commit's own name finds it too.
    pinned = HubRepo(
        listing.snapshot.repo.hub,
        listing.snapshot.repo.repo_id,
        listing.snapshot.commit,
        listing.snapshot.repo.dataset,
    )
    assert decode_listing(raw, pinned, ENDPOINT).snapshot.commit == listing.snapshot.commit


@given(listings, st.data())
def test_a_damaged_listing_is_refused_never_read_as_another(
    listing: CachedListing, data: st.DataObject
) -> None:
    raw = bytearray(encode_listing(listing, ENDPOINT))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode_listing(bytes(raw), listing.snapshot.repo, ENDPOINT)
    except CacheError:
        return
    assert decoded == listing  # a change JSON does not see (1e+20 and 1E+20)


def test_a_listing_of_another_repository_revision_or_hub_is_refused() -> None:
    repo = HubRepo("hf", "org/model", "main")
    files = (HubFile("a.bin", 3, sha256="b" * 64),)
    raw = encode_listing(CachedListing(Snapshot(repo, COMMIT, files, None), 1.0), ENDPOINT)
    for other, endpoint, words in [
        (HubRepo("hf", "org/other", "main"), ENDPOINT, "another repository"),
        (HubRepo("hf", "org/model", "main", dataset=True), ENDPOINT, "another repository"),
        (HubRepo("modelscope", "org/model", "main"), ENDPOINT, "another repository"),
        (repo, "https://hf-mirror.example", "another repository"),
        (HubRepo("hf", "org/model", "dev"), ENDPOINT, "another revision"),
    ]:
        with pytest.raises(CacheError, match=words):
            decode_listing(raw, other, endpoint)


def test_forged_entries_are_refused_even_with_a_fresh_checksum() -> None:
    repo = HubRepo("hf", "org/model", "main")
    good = json.loads(
        encode_listing(
            CachedListing(Snapshot(repo, COMMIT, (HubFile("a", 1, git_sha1="c" * 40),)), 1.0),
            ENDPOINT,
        )
    )
    for entry, words in [
        (["a", -1, None, "c" * 40, False, None], "size"),
        (["a", 1, None, None, False, None], "no digest"),
        (["a", 1, "short", None, False, None], "malformed digest"),
        (["a", 1, None, "c" * 40, "yes", None], "executable"),
        (["a", 1, None, "c" * 40, False, "x" * 64], "xet hash"),
        (["a", 1, None], "malformed file entry"),
    ]:
        forged = encode_listing(CachedListing(Snapshot(repo, COMMIT, ()), 1.0), ENDPOINT)
        document = json.loads(forged)
        document.pop("check")
        document["files"] = [entry]
        document["check"] = document_checksum(document)
        with pytest.raises(CacheError, match=words):
            decode_listing(json.dumps(document).encode(), repo, ENDPOINT)
    assert decode_listing(json.dumps(good).encode(), repo, ENDPOINT).snapshot.files


def test_a_listing_is_kept_under_its_revision_and_its_commit() -> None:
    repo = HubRepo("hf", "org/model", "refs/pr/3")
    keys = listing_keys(Snapshot(repo, COMMIT, ()), ENDPOINT)
    assert keys == (listing_key(repo, ENDPOINT, "refs/pr/3"), listing_key(repo, ENDPOINT, COMMIT))
    assert all(key.isalnum() for key in keys)
    pinned = HubRepo("hf", "org/model", COMMIT)
    assert listing_keys(Snapshot(pinned, COMMIT, ()), ENDPOINT) == keys[1:]


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, None),
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE"),
        ({"HF_HUB_OFFLINE": "yes"}, "HF_HUB_OFFLINE"),
        ({"HF_HUB_OFFLINE": "On"}, "HF_HUB_OFFLINE"),
        ({"HF_HUB_OFFLINE": "TRUE"}, "HF_HUB_OFFLINE"),
        ({"HF_HUB_OFFLINE": "0"}, None),
        ({"HF_HUB_OFFLINE": "false"}, None),
        ({"HF_HUB_OFFLINE": " 1"}, None),  # huggingface_hub does not strip it either
        ({"TRANSFORMERS_OFFLINE": "1"}, "TRANSFORMERS_OFFLINE"),
        ({"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "1"}, "TRANSFORMERS_OFFLINE"),
        ({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}, None),
    ],
)
def test_hf_hub_offline_is_read_as_huggingface_hub_reads_it(
    environment: dict[str, str], expected: str | None
) -> None:
    assert offline_setting("hf", environment) == expected
    assert offline_setting("modelscope", environment) is None


@given(st.dictionaries(st.sampled_from(["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]), st.text()))
def test_hf_hub_offline_agrees_with_huggingface_hub(environment: dict[str, str]) -> None:
    from huggingface_hub.constants import _is_true

    value = environment.get("HF_HUB_OFFLINE") or environment.get("TRANSFORMERS_OFFLINE")
    assert (offline_setting("hf", environment) is not None) == _is_true(value)
