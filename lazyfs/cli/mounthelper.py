"""``mount.lazyfs``: the helper mount(8) runs for ``mount -t lazyfs`` and /etc/fstab lines.

    mount -t lazyfs http://host/repo /mnt/models/x -o cache_dir=/var/cache/lazyfs,cache_size=20G
    http://host/repo  /mnt/models/x  lazyfs  cache_size=20G,_netdev,nofail  0 0

mount(8) calls ``mount.lazyfs SOURCE TARGET [-sfnv] [-o OPTIONS]``. lazyfs's own options map to
``lazyfs mount`` flags; options meant for mount(8) or systemd are accepted and left alone.
"""

from __future__ import annotations

import sys

from lazyfs.errors import UsageError

# option name -> lazyfs mount flag; None: a flag without a value
VALUE_OPTIONS = {
    "cache_dir": "--cache-dir",
    "cache_size": "--cache-size",
    "manifest_sha256": "--manifest-sha256",
    "metrics": "--metrics",
    "log_file": "--log-file",
    "log_level": "--log-level",
    "prefetch_path": "--prefetch-path",
    "ca_file": "--ca-file",
}
FLAG_OPTIONS = {"allow_other": "--allow-other", "prefetch": "--prefetch"}
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


def translate(argv: list[str]) -> list[str]:
    """mount.lazyfs arguments -> ``lazyfs mount`` arguments (pure)."""
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
        if name in VALUE_OPTIONS and has_value:
            flags += [VALUE_OPTIONS[name], value]
        elif name in FLAG_OPTIONS and not has_value:
            flags.append(FLAG_OPTIONS[name])
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
