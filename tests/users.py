"""A normal user for one test: made with useradd, able to open /dev/fuse, running this venv's
lazyfs, and gone afterwards with everything it started and mounted.

Why a user of its own rather than ``nobody``: ``nobody`` has no home to hold a cache, and
other programs run as it (nginx's workers do by default), so "every process of the user"
would not be ours to stop. A fresh name's uid is ours alone for the test's duration.

The test runs as root; everything it does to the machine (the account, /dev/fuse's group) is
undone in ``finally``, one such test at a time (a lock), since the device is shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.processes import alive, force_unmount
from tests.waiting import wait_until

FUSE_DEVICE = Path("/dev/fuse")
FUSERMOUNT = Path("/usr/bin/fusermount3")
LOCK = Path(tempfile.gettempdir()) / "lazyfs-unprivileged-user-test.lock"
LOCK_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0


@dataclass
class User:
    """An unprivileged account and what runs as it: commands get a clean environment, as a
    login would give (HOME, PATH, a runtime dir), and nothing of the test's."""

    name: str
    uid: int
    gid: int
    home: Path
    groups: list[int] = field(default_factory=list)  # /dev/fuse's group, when it needs one
    python: list[str] = field(default_factory=list)
    made: list[Path] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(self.home / "run"),  # what pam_systemd gives a login
        }

    def run(self, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command as this user; never raises on a non-zero exit."""
        return subprocess.run(
            [str(arg) for arg in args],
            user=self.uid,
            group=self.gid,
            extra_groups=self.groups,
            env=self.environment(),
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def lazyfs(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """The project's CLI, run by this user."""
        return self.run(*self.python, "-m", "lazyfs", *args)

    def make_dir(self, name: str) -> Path:
        """A directory of the user's own in its home (a mount point, say); cleanup unmounts
        whatever is still mounted on it."""
        path = self.home / name
        path.mkdir(mode=0o700)
        os.chown(path, self.uid, self.gid)
        self.made.append(path)
        return path

    def processes(self) -> list[int]:
        """Pids of the live processes running as this user."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            # The real uid: /proc/PID's owner is root for a process that is not dumpable.
            real_uid = next(line for line in status.splitlines() if line.startswith("Uid:"))
            if int(real_uid.split()[1]) == self.uid and alive(int(entry)):
                found.append(int(entry))
        return found


def check_fusermount_is_setuid() -> None:
    """A user mounts through fusermount3, which must be setuid root (the fuse3 package installs
    it so). Without it no user can mount on this machine: the test fails, never skips."""
    try:
        info = FUSERMOUNT.stat()
    except FileNotFoundError:
        pytest.fail(f"{FUSERMOUNT} is missing: install the fuse3 package (scripts/install)")
    if info.st_uid != 0 or not info.st_mode & stat.S_ISUID:
        pytest.fail(f"{FUSERMOUNT} is not setuid root (mode {stat.filemode(info.st_mode)})")


@contextlib.contextmanager
def unprivileged_user() -> Iterator[User]:
    """A fresh user with a home of its own, /dev/fuse open to it and a Python that runs this
    venv's lazyfs; on the way out, its processes stopped, its mounts gone, the account
    deleted and /dev/fuse as it was."""
    if os.geteuid() != 0:
        pytest.fail("making a user for the test needs root")
    with _one_at_a_time():
        # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, closed to the user.
        base = Path(tempfile.mkdtemp(prefix="lazyfs-user-"))
        base.chmod(0o755)
        user = None
        try:
            user = _add_user(base / "home")
            with _fuse_device_open_to(user):
                (user.home / "run").mkdir(mode=0o700)
                os.chown(user.home / "run", user.uid, user.gid)
                user.python = _python_for(user, base)
                yield user
        finally:
            problems = [] if user is None else _remove_user(user)
            shutil.rmtree(base, ignore_errors=True)
            if problems:
                raise AssertionError("; ".join(problems))


@contextlib.contextmanager
def _one_at_a_time() -> Iterator[None]:
    with open(LOCK, "a") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test held {LOCK} for {LOCK_TIMEOUT:.0f}s")
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _add_user(home: Path) -> User:
    name = f"lazyfs-{secrets.token_hex(4)}"
    # No home made by useradd (ours is in the test's directory), no login shell, no lastlog.
    command = ["useradd", "--user-group", "--no-create-home", "--no-log-init"]
    command += ["--home-dir", str(home), "--shell", "/usr/sbin/nologin", name]
    subprocess.run(command, check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    user = User(name, entry.pw_uid, entry.pw_gid, home)
    try:
        home.mkdir(mode=0o700)
        os.chown(home, user.uid, user.gid)
    except BaseException:
        _remove_user(user)
        raise
    return user


@contextlib.contextmanager
def _fuse_device_open_to(user: User) -> Iterator[None]:
    """/dev/fuse readable and writable by ``user``: as it is if everyone may (distributions
    ship it 0666); through its group if its group may; else (a container's 0600) given to the
    user's own group for the test, which takes nothing from anyone, and handed back after."""
    info = FUSE_DEVICE.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o006 == 0o006:
        yield
        return
    if mode & 0o060 == 0o060:
        user.groups = [info.st_gid]
        yield
        return
    os.chown(FUSE_DEVICE, -1, user.gid)
    try:
        FUSE_DEVICE.chmod(mode | 0o060)
        yield
    finally:
        os.chown(FUSE_DEVICE, -1, info.st_gid)
        FUSE_DEVICE.chmod(mode)


def _python_for(user: User, base: Path) -> list[str]:
    """The interpreter the user runs lazyfs with: this venv's, if the user can run it.

    A venv made from an interpreter in a home the user cannot enter (pyenv's, in a 0700
    /root) cannot be run by anyone else. Opening that home, or copying the interpreter (a
    gigabyte), would change more than the test needs: instead the user gets a venv of its own
    made from the system's interpreter of the same version, which loads this venv's packages
    (the same code, and extension modules built for this ABI)."""
    if _runs_lazyfs(user, [sys.executable]):
        return [sys.executable]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if system is None:
        pytest.fail(f"{sys.executable} is closed to other users and there is no {version}")
    venv = base / "venv"
    site_packages = venv / "lib" / version / "site-packages"
    site_packages.mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(system)
    (venv / "pyvenv.cfg").write_text(f"home = {Path(system).parent}\n")
    # addsitedir rather than a path line: the venv's own .pth files (the editable install of
    # lazyfs) are read too.
    ours = sysconfig.get_path("purelib")
    (site_packages / "this-venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    python = [str(venv / "bin" / "python")]
    if not _runs_lazyfs(user, python):
        checked = user.run(*python, "-c", "import lazyfs")
        pytest.fail(f"{user.name} cannot import lazyfs with {system}: {checked.stderr}")
    return python


def _runs_lazyfs(user: User, python: list[str]) -> bool:
    try:
        return user.run(*python, "-c", "import lazyfs").returncode == 0
    except PermissionError:
        return False  # the interpreter's path is closed to the user


def _remove_user(user: User) -> list[str]:
    """Stop what runs as the user (a daemon unmounts on SIGTERM), detach what is still
    mounted, delete the account. Returns what could not be undone."""
    problems = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in user.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if wait_until(lambda: not user.processes(), timeout=STOP_TIMEOUT):
            break
    for path in reversed(user.made):
        force_unmount(path)
    deleted = subprocess.run(["userdel", user.name], capture_output=True, text=True, check=False)
    if deleted.returncode != 0:
        problems.append(f"userdel {user.name}: {deleted.stderr.strip()}")
    return problems
