"""The client side of status and prefetch, sans-I/O: progress lines, names, the summary."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lazyfs.cli.client import describe_status, printable, progress_line


def test_progress_before_anything_is_done_has_no_infinite_eta() -> None:
    assert progress_line(0, 2048, 1.5) == "prefetch:   0% 0 B of 2.0 KiB, 0 B/s, ETA unknown"
    assert progress_line(1024, 2048, 2.0) == "prefetch:  50% 1.0 KiB of 2.0 KiB, 512 B/s, ETA 2s"
    assert progress_line(2048, 2048, 2.0) == "prefetch: 100% 2.0 KiB of 2.0 KiB, 1.0 KiB/s"


def test_progress_of_nothing_is_complete() -> None:
    assert progress_line(0, 0, 0.0) == "prefetch: 100% 0 B of 0 B, 0 B/s"


@given(st.integers(0, 2**50), st.integers(0, 2**50), st.floats(0, 1e6))
def test_progress_never_shows_inf_nan_or_more_than_all(
    done: int, extra: int, elapsed: float
) -> None:
    line = progress_line(done, done + extra, elapsed)
    assert "inf" not in line and "nan" not in line
    share = int(line.split("%")[0].removeprefix("prefetch:"))
    assert 0 <= share <= 100


def test_names_are_printed_without_control_characters() -> None:
    assert printable("plain/naïve é.bin") == "plain/naïve é.bin"
    assert printable("a\x1b[2Jb\nc\rd\x7fe\x9bf\u202eg") == "a\\x1b[2Jb\\nc\\rd\\x7fe\\x9bf\\u202eg"


@given(st.text())
def test_printable_names_are_one_line_of_printable_text(name: str) -> None:
    assert printable(name).isprintable()


def report(**extra: Any) -> dict[str, Any]:
    return {
        "files": [
            {"path": "a.bin", "size": 2048, "cached_bytes": 1024},
            {"path": "empty", "size": 0, "cached_bytes": 0},
        ],
        "blocks_fetched": 3,
        "bytes_fetched": 3072,
        "cache_blocks": 1,
        "cache_bytes": 1024,
        "cache_limit": 1 << 30,
        "prefetch": {"active": False, "runs": []},
        **extra,
    }


def test_status_summary_reads_as_text() -> None:
    lines = describe_status(report(new_counter=7))
    assert lines[:2] == [" 50%    2.0 KiB  a.bin", "100%        0 B  empty"]
    assert lines[2] == "cache: 1 blocks, 1.0 KiB of 1.0 GiB"
    assert lines[3].startswith(
        "reads: 0 requests, 3 blocks fetched (3.0 KiB), 0 from the disk cache"
    )
    assert lines[4].startswith("read-ahead: 0 B of 0 B in use")
    assert lines[5].startswith("failures: 0 fetched blocks did not verify")
    assert "0 skipped (slow disk)" in lines[5]
    assert lines[6] == "prefetch: none"
    assert lines[7] == "new counter: 7"
    assert not any("{" in line for line in lines)


def test_status_summary_of_prefetch_runs() -> None:
    run = {
        "id": 1,
        "files": 2,
        "bytes": 2048,
        "done_bytes": 1024,
        "errors": {},
        "not_kept": {},
        "cache_write_failures": 0,
        "cache_error": None,
        "finished": False,
        "cancelled": False,
    }
    runs = [
        run,
        {**run, "id": 2, "finished": True, "done_bytes": 2048},
        {**run, "id": 3, "finished": True, "cancelled": True},
        {**run, "id": 4, "finished": True, "not_kept": {"a.bin": 1024}},
    ]
    lines = describe_status(report(prefetch={"active": True, "runs": runs}))
    assert lines[6:] == [
        "prefetch run 1: running, 50% of 2 files, 2.0 KiB",
        "prefetch run 2: done, 2 files, 2.0 KiB cached",
        "prefetch run 3: cancelled at 50% of 2 files, 2.0 KiB",
        "prefetch run 4: finished with problems: 0 file(s) failed, 1 not kept in the cache, "
        "of 2 files, 2.0 KiB",
    ]
