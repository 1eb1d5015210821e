"""The hub token kept current (sources.hubtoken): a ``--token-file`` re-read when it changes,
also when Kubernetes swaps its ``..data`` symlink, and once when the hub refuses the token; a
file that cannot be read keeps the token in use. Then the hub's clients against a fake hub that
rotates its token: the listing, the file requests and the Xet token exchange each carry the
current token, and ask once more after a 401."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lazyfs.core.attempts import RetryPolicy
from lazyfs.core.hubs import HF, HubRepo
from lazyfs.errors import OriginHTTPError
from lazyfs.sources.hub import HubOrigin
from lazyfs.sources.hubsettings import read_token_file
from lazyfs.sources.hubtoken import TokenSource
from lazyfs.sources.origin import make_client
from lazyfs.sources.transport import Transport
from lazyfs.sources.xet import XetFile
from tests.fakehubs import TOKEN, FakeHub, fake_hub
from tests.fakexet import fake_xet_cas
from tests.xetclient import fetch_through_xet_source

NEW_TOKEN = "hf_fake_token_rotated_0001"
PERIOD = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watched(path: Path, clock: Clock) -> TokenSource:
    """A token source for ``path`` as a mount makes it: the token read first, then watched."""
    return TokenSource(
        read_token_file(path), path, read_token_file, check_every=PERIOD, clock=clock
    )


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_a_changed_file_is_read_at_the_first_request_after_the_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lazyfs.sources.hubtoken")
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    clock = Clock()
    tokens = watched(path, clock)
    assert tokens.current() == TOKEN
    path.write_text(NEW_TOKEN + "\n")
    clock.now += PERIOD / 2
    assert tokens.current() == TOKEN  # not looked at yet: at most one look per period
    clock.now += PERIOD / 2
    assert tokens.current() == NEW_TOKEN
    assert messages(caplog, logging.INFO) == [f"read a new hub token from --token-file {path}"]
    # Rewritten with the same token: read again, nothing to say.
    path.write_text(NEW_TOKEN)
    clock.now += PERIOD
    assert tokens.current() == NEW_TOKEN
    assert len(messages(caplog, logging.INFO)) == 1
    assert not any(TOKEN in m or NEW_TOKEN in m for m in caplog.messages)


def test_a_kubernetes_symlink_swap_is_seen_through_the_path(tmp_path: Path) -> None:
    # A projected secret volume: token -> ..data/token, ..data -> ..TIMESTAMP; a rotation
    # writes a new ..TIMESTAMP directory and renames a fresh ..data link over the old one.
    volume = tmp_path / "secret"
    volume.mkdir()
    (volume / "..2024_01_01_00_00_00.1").mkdir()
    old_file = volume / "..2024_01_01_00_00_00.1" / "token"
    old_file.write_text(TOKEN)
    (volume / "..data").symlink_to("..2024_01_01_00_00_00.1")
    (volume / "token").symlink_to("..data/token")
    clock = Clock()
    tokens = watched(volume / "token", clock)
    clock.now += PERIOD
    assert tokens.current() == TOKEN

    rotated = volume / "..2024_01_01_01_00_00.2"
    rotated.mkdir()
    same_size = NEW_TOKEN[: len(TOKEN)]
    (rotated / "token").write_text(same_size)
    # Same size and times as the old file: only the inode behind the path tells them apart.
    times = os.stat(old_file)
    os.utime(rotated / "token", ns=(times.st_atime_ns, times.st_mtime_ns))
    (volume / "..data_tmp").symlink_to(rotated.name)
    os.rename(volume / "..data_tmp", volume / "..data")
    clock.now += PERIOD
    assert tokens.current() == same_size


def test_a_file_that_cannot_be_read_keeps_the_token_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    clock = Clock()
    tokens = watched(path, clock)
    path.unlink()
    for _ in range(3):
        clock.now += PERIOD
        assert tokens.current() == TOKEN
    assert not tokens.refused(TOKEN)  # a 401 finds nothing better
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert f"cannot read --token-file {path}" in warnings[0]
    assert "token read before is kept" in warnings[0]
    # Half-written (empty), then not text: one warning each, the old token still sent.
    path.write_text("")
    clock.now += PERIOD
    assert tokens.current() == TOKEN
    path.write_bytes(b"\xff\xfe token")
    clock.now += PERIOD
    assert tokens.current() == TOKEN
    assert len(messages(caplog, logging.WARNING)) == 3
    path.write_text(NEW_TOKEN)
    clock.now += PERIOD
    assert tokens.current() == NEW_TOKEN
    assert not any(TOKEN in m or NEW_TOKEN in m for m in caplog.messages)


def test_a_refusal_reads_the_file_at_once_and_only_once(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    clock = Clock()
    tokens = watched(path, clock)
    assert not tokens.refused(TOKEN)  # unchanged: the refusal stands
    path.write_text(NEW_TOKEN)
    assert tokens.current() == TOKEN  # within the period: not looked at
    assert tokens.refused(TOKEN)
    assert tokens.current() == NEW_TOKEN
    # Requests that carried the old token and are refused later need no read: a newer
    # token is at hand (the file now holds a third, unread until the next look).
    path.write_text("hf_third_token")
    assert tokens.refused(TOKEN)
    assert tokens.current() == NEW_TOKEN
    fixed = TokenSource(TOKEN)
    clock.now += PERIOD
    assert fixed.current() == TOKEN and not fixed.refused(TOKEN)
    assert TokenSource(None).current() is None


# The hub's clients with a token source


@pytest.fixture
def hf() -> Iterator[FakeHub]:
    with fake_hub("hf") as hub:
        yield hub


def rotate(hub: FakeHub, path: Path, token: str, *, write: bool) -> None:
    hub.accepted_token = token
    if write:
        path.write_text(token)


def test_listing_probe_and_blocks_carry_the_current_token(hf: FakeHub, tmp_path: Path) -> None:
    files = {"config.json": b'{"a": 1}\n', "model.bin": random.Random(3).randbytes(100_000)}
    hf.add_repo("org/secret", files, private=True)
    path = tmp_path / "token"
    path.write_text(TOKEN)
    transport = Transport.from_environment(environ={})
    policy = RetryPolicy(attempts=1)

    async def main() -> None:
        async with make_client(policy, transport) as client:
            origin = HubOrigin(
                HubRepo(HF, "org/secret", "main"),
                hf.endpoint,
                watched(path, Clock()),
                client,
                policy,
                transport=transport,
            )
            try:
                await origin.resolve()
                rotate(hf, path, NEW_TOKEN, write=True)
                assert (await origin.resolve()).commit == origin.commit
                rotate(hf, path, "hf_fake_token_0002", write=True)
                block, _ = await origin.fetch_block("model.bin", 1000, 500)
                assert bytes(block) == files["model.bin"][1000:1500]
                rotate(hf, path, "hf_fake_token_0003", write=False)
                with pytest.raises(OriginHTTPError) as refused:
                    await origin.fetch_block("config.json", 0, 4)
                assert refused.value.status == 401
            finally:
                origin.close()

    trio.run(main)
    sent = [r.headers.get("authorization") for r in hf.seen("api")]
    # Each refusal cost one request more, never a loop.
    # Revision, tree and probe; then the revision refused.
    assert sent.count(f"Bearer {TOKEN}") == 3 + 1
    # Revision, tree and probe asked again; then the block refused.
    assert sent.count(f"Bearer {NEW_TOKEN}") == 3 + 1
    # The block asked again; then config.json refused, with nothing newer in the file.
    assert sent.count("Bearer hf_fake_token_0002") == 1 + 1
    assert "Bearer hf_fake_token_0003" not in sent


def test_the_xet_token_exchange_carries_the_current_token(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(300_000)
    with fake_xet_cas() as cas, fake_hub("hf", cas=cas) as hub:
        repo = hub.add_repo("org/secret", {"model.bin": data}, private=True)
        commit = repo.branches["main"]
        (xet_hash,) = [name for name, file in cas.files.items() if file.size == len(data)]
        path = tmp_path / "token"
        path.write_text(TOKEN)
        tokens = watched(path, Clock())
        rotate(hub, path, NEW_TOKEN, write=True)
        assert fetch_from_xet(hub, commit, xet_hash, tokens, len(data)) == data[:65536]
        rotate(hub, path, "hf_fake_token_0002", write=False)
        with pytest.raises(OriginHTTPError) as refused:
            fetch_from_xet(hub, commit, xet_hash, tokens, len(data))
        assert refused.value.status == 401
        exchanges = [
            r.headers.get("authorization") for r in hub.seen("api") if "xet-read-token" in r.path
        ]
        assert exchanges == [f"Bearer {TOKEN}", f"Bearer {NEW_TOKEN}", f"Bearer {NEW_TOKEN}"]


def fetch_from_xet(
    hub: FakeHub, commit: str, xet_hash: str, tokens: TokenSource, size: int
) -> bytes:
    """The first 64 KiB of ``model.bin`` through a fresh XetSource (a fresh CAS token)."""
    file = XetFile("model.bin", xet_hash, size)
    return fetch_through_xet_source(
        hub, "org/secret", commit, file, 0, 65536, tokens=tokens, block_size=65536
    )
