"""``mount.lazyfs``: the helper mount(8) runs for ``mount -t lazyfs`` and /etc/fstab lines.

    mount -t lazyfs http://host/repo /mnt/models/x -o cache_dir=/var/cache/lazyfs,cache_size=20G
    http://host/repo  /mnt/models/x  lazyfs  cache_size=20G,_netdev,nofail  0 0

mount(8) calls ``mount.lazyfs SOURCE TARGET [-sfnv] [-o OPTIONS]``. Every ``lazyfs mount``
option works as ``-o name=value`` (a flag as ``-o name``; a repeatable one repeated): the names
are read from the command's own options, so a new one needs nothing here. Options meant for
mount(8) or systemd are accepted and left alone.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import click

from lazyfs.errors import UsageError

# `lazyfs mount` options with no meaning for mount(8): it expects the helper to return.
NOT_FOR_MOUNT_HELPER = frozenset({"foreground"})

# Generic mount options and ones for mount(8)/systemd: accepted, not lazyfs's business.
IGNORED = {
    "ro",
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "exec",
    "noexec",
    "sync",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "loud",
    "silent",
}


def mount_options() -> dict[str, tuple[str, bool]]:
    """``-o`` name -> (its ``lazyfs mount`` flag, whether it takes a value), for every visible
    option of ``lazyfs mount``: ``--cache-dir`` is ``cache_dir``."""
    from lazyfs.cli.mount import mount

    options = {}
    for parameter in mount.params:
        if not isinstance(parameter, click.Option) or parameter.hidden:
            continue
        flag = max(parameter.opts, key=len)
        name = flag.lstrip("-").replace("-", "_")
        if name not in NOT_FOR_MOUNT_HELPER:
            options[name] = (flag, not parameter.is_flag)
    return options


def translate(argv: list[str], table: Mapping[str, tuple[str, bool]] | None = None) -> list[str]:
    """mount.lazyfs arguments -> ``lazyfs mount`` arguments; ``table`` is ``mount_options()``."""
    known = mount_options() if table is None else table
    positional: list[str] = []
    options: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument == "-o":
            value = next(arguments, None)
            if value is None:
                raise UsageError("-o needs a value")
            options.extend(option for option in value.split(",") if option)
        elif argument.startswith("-o") and len(argument) > 2:
            options.extend(option for option in argument[2:].split(",") if option)
        elif argument in ("-s", "-f", "-n", "-v", "-r", "-w"):
            continue  # sloppy, fake, no-mtab, verbose, ro, rw: nothing for lazyfs to do
        elif argument.startswith("-"):
            raise UsageError(f"unknown option {argument}")
        else:
            positional.append(argument)
    if len(positional) != 2:
        raise UsageError("usage: mount.lazyfs URL MOUNTPOINT [-o OPTIONS]")
    flags: list[str] = []
    for option in options:
        name, has_value, value = option.partition("=")
        flag, takes_value = known.get(name, ("", False))
        if flag and takes_value and has_value:
            flags += [flag, value]
        elif flag and not takes_value and not has_value:
            flags.append(flag)
        elif name in IGNORED or name.startswith(("x-", "comment=")):
            continue
        else:
            raise UsageError(f"unknown lazyfs mount option {option!r}")
    return ["mount", positional[0], positional[1], *flags]


def main() -> None:
    from lazyfs.cli.main import main as lazyfs_main

    try:
        arguments = translate(sys.argv[1:])
    except UsageError as exc:
        print(f"mount.lazyfs: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.argv = ["lazyfs", *arguments]
    lazyfs_main()
