"""Every command's --help shows an example; --version answers."""

from __future__ import annotations

import pytest

from tests.mounts import lazyfs

COMMANDS = [
    [],
    ["manifest"],
    ["manifest", "build"],
    ["manifest", "verify"],
    ["serve"],
    ["mount"],
    ["unmount"],
    ["status"],
    ["wait"],
    ["prefetch"],
    ["cache"],
    ["cache", "info"],
    ["cache", "verify"],
    ["cache", "prune"],
    ["cache", "clear"],
    ["sample"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "lazyfs")
def test_help_shows_an_example(command: list[str]) -> None:
    result = lazyfs(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "lazyfs " in result.stdout.split("Options:")[0]
    assert "Example" in result.stdout or "Publish:" in result.stdout


def test_version() -> None:
    result = lazyfs("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("lazyfs, version ")


def test_mount_help_shows_the_default_cache_size_and_dir() -> None:
    text = lazyfs("mount", "--help").stdout
    assert "50G" in text and "XDG_CACHE_HOME" in text
