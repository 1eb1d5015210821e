"""`mount -t lazyfs` and an fstab line, through the mount.lazyfs helper and mount(8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from lazyfs.cli.mount import OctalMode, mount
from lazyfs.cli.mounthelper import translate
from lazyfs.errors import UsageError
from tests.mounts import LAZYFS, publish
from tests.origins import Origin


def test_options_translate_to_lazyfs_mount_flags() -> None:
    assert translate(
        ["http://h/r", "/mnt/x", "-o", "rw,cache_dir=/c,cache_size=2G,allow_other,_netdev"]
    ) == ["mount", "http://h/r", "/mnt/x", "--cache-dir", "/c", "--cache-size", "2G",
          "--allow-other"]  # fmt: skip
    assert translate(["-s", "http://h/r", "/m", "-oprefetch,x-systemd.automount"]) == [
        "mount", "http://h/r", "/m", "--prefetch"
    ]  # fmt: skip
    assert translate(["https://h/r", "/m", "-o", "ca_file=/etc/ssl/corp-ca.pem"]) == [
        "mount", "https://h/r", "/m", "--ca-file", "/etc/ssl/corp-ca.pem"
    ]  # fmt: skip
    ownership = "uid=1000,gid=1000,file_mode=0640,subdir=onnx"
    assert translate(["http://h/r", "/m", "-o", ownership]) == [
        "mount", "http://h/r", "/m", "--uid", "1000", "--gid", "1000", "--file-mode", "0640",
        "--subdir", "onnx"
    ]  # fmt: skip
    for bad in (["http://h/r"], ["http://h/r", "/m", "-o", "colour=blue"], ["a", "b", "-z"]):
        with pytest.raises(UsageError):
            translate(bad)


def test_every_lazyfs_mount_option_works_as_dash_o() -> None:
    """Each visible option of `lazyfs mount`, given as -o, parses to what its flag parses to."""
    checked = []
    for parameter in mount.params:
        if not isinstance(parameter, click.Option) or parameter.hidden:
            continue
        flag = max(parameter.opts, key=len)
        name = flag.lstrip("-").replace("-", "_")
        if name == "foreground":
            continue
        value: str | None = "/x"
        if parameter.is_flag:
            value = None
        elif isinstance(parameter.type, click.types.IntParamType):
            value = "3"
        elif isinstance(parameter.type, click.types.FloatParamType):
            value = "2.5"
        elif isinstance(parameter.type, click.Choice):
            value = str(parameter.type.choices[0])
        elif isinstance(parameter.type, OctalMode):
            value = "0640"
        option = name if value is None else f"{name}={value}"
        translated = translate(["http://h/r", "/m", "-o", option])
        direct = ["mount", "http://h/r", "/m", flag] + ([] if value is None else [value])
        assert translated == direct, name
        with mount.make_context("mount", translated[1:]) as context:
            assert context.params[parameter.name or ""] not in (None, (), False), name
        checked.append(name)
    expected = {"mirror", "retries", "timeout", "deadline", "manifest", "token_file", "ca_file"}
    expected |= {"uid", "gid", "file_mode", "dir_mode", "subdir"}
    assert expected <= set(checked)


def test_mount_t_lazyfs_and_an_fstab_line(origin: Origin, tmp_path: Path) -> None:
    """Run in a private mount namespace whose /usr/sbin holds only our helper, so the
    system is not touched; everything, unmounting included, happens inside it."""
    (origin.root / "a.txt").write_text("through mount(8)\n")
    publish(origin.root)
    # A directory the origin serves without a manifest: mountable only with -o manifest=FILE.
    (origin.root / "bare").mkdir()
    (origin.root / "bare" / "b.txt").write_text("options reach the daemon\n")
    bare_manifest = tmp_path / "bare-manifest.json"
    built = subprocess.run(
        [*LAZYFS, "manifest", "build", str(origin.root / "bare"), "-o", str(bare_manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    helpers = tmp_path / "sbin"
    helpers.mkdir()
    (helpers / "mount.lazyfs").symlink_to(Path(sys.executable).parent / "mount.lazyfs")
    target = tmp_path / "mnt"
    target.mkdir()
    cache = tmp_path / "cache"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"{origin.url} {target} lazyfs cache_dir={cache},cache_size=100M,_netdev,nofail 0 0\n"
    )
    lazyfs = " ".join(LAZYFS)
    script = f"""
set -e
# On any failure, stop the daemon too: its mount lives only in this namespace.
trap '{lazyfs} unmount {target} >/dev/null 2>&1 || true' EXIT
mount --bind {helpers} /usr/sbin
mount -t lazyfs {origin.url} {target} -o cache_dir={cache},cache_size=100M
grep -q ' {target} fuse.lazyfs ' /proc/self/mounts
cmp {target}/a.txt {origin.root}/a.txt
{lazyfs} unmount {target}
mount -T {fstab} {target}
cmp {target}/a.txt {origin.root}/a.txt
{lazyfs} unmount {target}
# Options the daemon acts on, not only the parent: a pin it must refuse, a manifest it must use.
if mount -t lazyfs {origin.url} {target} -o cache_dir={cache},manifest_sha256={"0" * 64} \
    2>{tmp_path}/pin.err; then echo pin-ignored; exit 1; fi
grep -q 'sha256' {tmp_path}/pin.err
mount -t lazyfs {origin.url}/bare {target} \
    -o cache_dir={cache},manifest={bare_manifest},retries=2,timeout=2,deadline=5,log_level=debug
cmp {target}/b.txt {origin.root}/bare/b.txt
{lazyfs} unmount {target}
echo helper-ok
"""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "helper-ok" in result.stdout
