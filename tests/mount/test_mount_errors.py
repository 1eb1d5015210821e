"""Every way a mount can fail says why in one line and exits non-zero; nothing stays mounted."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from lazyfs.core.manifest import MANIFEST_NAME, manifest_digest
from lazyfs.daemon.runtime import pid_file
from tests.faultproxy import Faults, fault_proxy
from tests.mounts import LAZYFS, Mounter, is_mounted, lazyfs, publish
from tests.origins import Origin
from tests.waiting import wait_until


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lazyfs: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def published(origin: Origin) -> Origin:
    (origin.root / "a.txt").write_text("a\n")
    publish(origin.root)
    return origin


def test_unreachable_url(mounter: Mounter) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    target, result = mounter.mount(url, "--retries", "1", expect_ok=False)
    assert_one_line_error(result, "cannot fetch the manifest")
    assert not is_mounted(target)


def test_no_manifest(origin: Origin, mounter: Mounter) -> None:
    (origin.root / "a.txt").write_text("a\n")
    target, result = mounter.mount(origin.url, expect_ok=False)
    assert_one_line_error(result, "no manifest at", "404")
    assert not is_mounted(target)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"format": "lazyfs-manifest", "version": 99}', "unknown manifest version 99"),
        (
            b'{"format": "lazyfs-manifest", "version": 1, "block_size": 65536, "hash": "sha256",'
            b' "files": [{"path": "../escape", "size": 0, "executable": false,'
            b' "sha256": "' + b"0" * 64 + b'", "blocks": []}]}',
            "contains '..'",
        ),
    ],
)
def test_invalid_manifest(
    published: Origin, mounter: Mounter, content: bytes, fragment: str
) -> None:
    (published.root / MANIFEST_NAME).write_bytes(content)
    target, result = mounter.mount(published.url, expect_ok=False)
    assert_one_line_error(result, fragment)
    assert not is_mounted(target)


def test_pin_mismatch_and_match(published: Origin, mounter: Mounter) -> None:
    raw = (published.root / MANIFEST_NAME).read_bytes()
    target, result = mounter.mount(published.url, "--manifest-sha256", "0" * 64, expect_ok=False)
    assert_one_line_error(result, "does not match --manifest-sha256")
    assert not is_mounted(target)
    target, result = mounter.mount(
        published.url, "--manifest-sha256", manifest_digest(raw), mountpoint=target
    )
    assert (target / "a.txt").read_text() == "a\n"


def test_bad_mount_points(published: Origin, mounter: Mounter, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    _, result = mounter.mount(published.url, mountpoint=missing, expect_ok=False)
    assert_one_line_error(result, "does not exist")

    a_file = tmp_path / "file"
    a_file.write_text("x")
    _, result = mounter.mount(published.url, mountpoint=a_file, expect_ok=False)
    assert_one_line_error(result, "is not a directory")

    not_empty = tmp_path / "not-empty"
    not_empty.mkdir()
    (not_empty / "x").write_text("x")
    _, result = mounter.mount(published.url, mountpoint=not_empty, expect_ok=False)
    assert_one_line_error(result, "is not empty")

    target, _ = mounter.mount(published.url)
    _, result = mounter.mount(published.url, mountpoint=target, expect_ok=False)
    assert_one_line_error(result, "already mounted")
    assert (target / "a.txt").read_text() == "a\n"


def test_no_fuse_device(published: Origin, tmp_path: Path) -> None:
    """In a private mount namespace whose /dev has no fuse node."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for this test")
    target = tmp_path / "mnt"
    target.mkdir()
    command = " ".join(
        [
            "mount -t tmpfs tmpfs /dev &&",
            *LAZYFS,
            "mount",
            published.url,
            str(target),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_one_line_error(result, "/dev/fuse")
    assert not is_mounted(target)


def test_bad_arguments() -> None:
    result = lazyfs("mount", "ftp://example", "/tmp")
    assert_one_line_error(result, "http://")
    result = lazyfs("mount", "http://127.0.0.1:1", "/tmp", "--manifest-sha256", "xyz")
    assert_one_line_error(result, "--manifest-sha256")
    result = lazyfs("mount", "http://127.0.0.1:1", "/tmp", "--cache-size", "lots")
    assert result.returncode == 2
    assert "not a size" in result.stderr


def test_unmount_of_something_not_mounted(tmp_path: Path) -> None:
    assert_one_line_error(lazyfs("unmount", tmp_path), "is not mounted")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://[::1", "not a valid URL"),
        ("http://", "with a host"),
        ("http://127.0.0.1:99999", "not a valid URL"),
        ("ftp://127.0.0.1/x", "http:// or https://"),
        ("http://127.0.0.1/x?token=1", "query"),
    ],
)
def test_bad_urls_are_refused_before_anything_starts(
    url: str, fragment: str, tmp_path: Path
) -> None:
    assert_one_line_error(lazyfs("mount", url, tmp_path), fragment)


def test_click_usage_errors_are_one_line_too() -> None:
    assert_one_line_error(lazyfs("serve", "/tmp", "--port", "99999"), "--port")
    assert_one_line_error(lazyfs("no-such-command"), "No such command")


def test_unwritable_log_file(published: Origin, mounter: Mounter) -> None:
    target, result = mounter.mount(
        published.url, "--log-file", "/proc/no/such/dir/x.log", expect_ok=False
    )
    assert_one_line_error(result, "cannot write the log file")
    assert not is_mounted(target)


def test_an_existing_shared_cache_dir_keeps_its_mode(
    published: Origin, mounter: Mounter, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    target, _ = mounter.mount(published.url, cache_dir=shared)
    assert (target / "a.txt").read_text() == "a\n"
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert (shared / "blocks").stat().st_mode & 0o777 == 0o700


def test_trailing_slash_names_the_same_repository(published: Origin, mounter: Mounter) -> None:
    target, _ = mounter.mount(published.url)
    assert (target / "a.txt").read_text() == "a\n"
    mounter.unmount(target)
    published.stop()
    # --retries 1: the manifest comes from the cache once the origin fails to answer.
    target, _ = mounter.mount(published.url + "/", "--retries", "1", mountpoint=target)
    assert (target / "a.txt").read_text() == "a\n"


def test_a_dead_mount_is_named_and_cleaned_up(published: Origin, mounter: Mounter) -> None:
    """After kill -9 of the daemon: a clear message, then unmount, then a new mount."""
    from lazyfs.daemon.runtime import pid_file

    target, _ = mounter.mount(published.url)
    os.kill(int(pid_file(target).read_text()), signal.SIGKILL)
    assert wait_until(lambda: not _daemon_alive(target), 10)
    _, result = mounter.mount(published.url, mountpoint=target, expect_ok=False)
    assert_one_line_error(result, "dead lazyfs mount", "lazyfs unmount")
    mounter.unmount(target)
    target, _ = mounter.mount(published.url, mountpoint=target)
    assert (target / "a.txt").read_text() == "a\n"


def _daemon_alive(target: Path) -> bool:
    from lazyfs.daemon.runtime import pid_file

    try:
        pid = int(pid_file(target).read_text())
    except FileNotFoundError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def make_unusable_cache_dir(kind: str, base: Path) -> tuple[Path, str]:
    """A cache dir lazyfs cannot use, and the shell commands that finish making it (run in a
    private mount namespace, so a read-only file system there vanishes with the process)."""
    a_file = base / "a-file"
    a_file.write_text("x")
    cache = base / "cache"
    finish = "true"
    if kind == "a file":
        cache = a_file
    elif kind == "under a file":
        cache = a_file / "cache"
    elif kind == "blocks is a file":
        cache.mkdir()
        (cache / "blocks").write_text("x")
    elif kind == "read-only, empty":
        cache.mkdir()
        finish = f"mount -t tmpfs -o ro tmpfs {cache}"
    elif kind == "read-only, made before":
        cache.mkdir()
        subdirectories = " ".join(str(cache / sub) for sub in ("blocks", "manifests", "logs"))
        finish = f"mount -t tmpfs tmpfs {cache} && mkdir {subdirectories}"
        finish += f" && mount -o remount,ro {cache}"
    return cache, finish


# The origin is never asked anything here: one kind of origin is enough.
@pytest.mark.parametrize("origin", ["lazyfs"], indirect=True)
@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
@pytest.mark.parametrize(
    "kind",
    ["a file", "under a file", "blocks is a file", "read-only, empty", "read-only, made before"],
)
def test_an_unusable_cache_dir_is_a_cache_failure(
    published: Origin, mounter: Mounter, tmp_path: Path, kind: str, foreground: bool
) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for this test")
    cache, finish = make_unusable_cache_dir(kind, tmp_path)
    target = mounter.new_mountpoint()
    command = [*LAZYFS, "mount", published.url, str(target), "--cache-dir", str(cache)]
    if foreground:
        command.append("--foreground")
    script = f"{finish} && exec {shlex.join(command)}"
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_one_line_error(result, f"cannot use cache dir {cache}: ")
    assert result.returncode == 6
    assert not is_mounted(target)
    # Nothing was asked of the origin: the cache is checked first.
    assert [r.path for r in published.requests()] == []


@pytest.mark.parametrize("origin", ["lazyfs"], indirect=True)
def test_a_trickling_origin_is_named_when_the_mount_gives_up(
    published: Origin, mounter: Mounter
) -> None:
    """Every byte comes within --timeout, the whole never within --deadline."""
    with fault_proxy(published.url, Faults(drip=1.0, drip_seconds=0.05)) as proxy:
        target, result = mounter.mount(
            proxy.url, "--timeout", "0.5", "--deadline", "1", expect_ok=False
        )
    manifest_url = f"{proxy.url}/{MANIFEST_NAME}"
    assert_one_line_error(
        result,
        f"cannot fetch the manifest: GET {manifest_url}: gave up after 1s: "
        "attempt 1 had no complete answer by then",
    )
    assert result.returncode == 3
    assert not is_mounted(target)


@pytest.mark.parametrize("planted", ["cache-dir-named-lazyfs", "lazyfs.py"])
def test_the_daemon_does_not_import_from_the_working_directory(
    published: Origin, mounter: Mounter, tmp_path: Path, planted: str
) -> None:
    """`lazyfs mount` run from ~/.cache (the default cache dir is a directory named lazyfs
    there) or from a directory holding a lazyfs.py: the daemon imports the installed lazyfs,
    never what lies in the working directory (which would run as the mounting user)."""
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    marker = tmp_path / "planted-code-ran"
    cache_dir = mounter.cache_dir()
    if planted == "lazyfs.py":
        (workdir / "lazyfs.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    else:
        cache_dir = workdir / "lazyfs"
    target, result = mounter.mount(published.url, cache_dir=cache_dir, cwd=workdir)
    assert "mounted" in result.stdout
    assert (target / "a.txt").read_text() == "a\n"
    pid = int(pid_file(target).read_text())
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    mounter.unmount(target)
    assert not marker.exists()


def test_the_daemon_does_not_import_what_lies_where_python_m_lazyfs_ran(
    published: Origin, mounter: Mounter, tmp_path: Path
) -> None:
    """`python -m lazyfs mount` puts the working directory first on sys.path; the daemon,
    forked from it, must not import a trio.py (or any module it loads later) from there."""
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    marker = tmp_path / "planted-code-ran"
    (workdir / "trio.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    target = mounter.new_mountpoint()
    command = [*LAZYFS, "mount", published.url, str(target), "--cache-dir"]
    result = subprocess.run(
        [*command, str(mounter.cache_dir())],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=workdir,
        check=False,
    )
    if result.returncode == 0:
        mounter.mounted.append(target)
    assert result.returncode == 0, result.stderr
    assert (target / "a.txt").read_text() == "a\n"
    assert not marker.exists()
