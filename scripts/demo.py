"""The demo behind scripts/demo. Every step runs the real `lazyfs` CLI, as a user would."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

LAZYFS = [sys.executable, "-m", "lazyfs"]
MIB = 1024 * 1024


def run(*args: str) -> str:
    print(f"$ lazyfs {' '.join(args)}", flush=True)
    result = subprocess.run([*LAZYFS, *args], capture_output=True, text=True, check=False)
    output = (result.stdout + result.stderr).strip()
    if output:
        print(f"  {output}".replace("\n", "\n  "), flush=True)
    if result.returncode != 0:
        sys.exit(result.returncode)
    return result.stdout


def bytes_served(access_log: Path) -> tuple[int, int]:
    """(requests, body bytes) the origin served, from its own access log."""
    lines = access_log.read_text().splitlines() if access_log.exists() else []
    return len(lines), sum(int(line.split()[3]) for line in lines)


def read_with_progress(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    done, started = 0, time.monotonic()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
            done += len(chunk)
            rate = done / max(time.monotonic() - started, 1e-6) / MIB
            percent = 100 * done // max(size, 1)
            print(
                f"\r  {path.name}: {percent:3d}% {done / MIB:7.1f} MiB {rate:6.0f} MiB/s",
                end="",
                flush=True,
            )
    print(flush=True)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="256M", help="size of the sample weights file")
    options = parser.parse_args()
    work = Path(os.environ.get("LAZYFS_DEMO_DIR", "/tmp/lazyfs-demo"))
    repo, mountpoint, cache = work / "repo", work / "mnt", work / "cache"
    access_log = work / "access.log"
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(cache, ignore_errors=True)  # a cold cache, so the demo shows real fetches
    access_log.unlink(missing_ok=True)
    mountpoint.mkdir(exist_ok=True)

    print("1. Generate a sample model repository and publish its block manifest")
    if not (repo / "lazyfs-manifest.json").exists():
        run("sample", str(repo), "--size", options.size)
        run("manifest", "build", str(repo))
    manifest = json.loads((repo / "lazyfs-manifest.json").read_text())

    print("2. Serve it with the embedded server")
    server = subprocess.Popen(
        [*LAZYFS, "serve", str(repo), "--port", "0", "--access-log", str(access_log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    mounted = False
    try:
        assert server.stdout is not None
        banner = server.stdout.readline().strip()
        print(f"  {banner}")
        url = banner.rsplit(" ", 1)[-1].rstrip("/")

        print("3. Mount it")
        run("mount", url, str(mountpoint), "--cache-dir", str(cache))
        mounted = True
        print(f"  $ ls {mountpoint}\n  " + "  ".join(sorted(os.listdir(mountpoint))))

        print("4. Load one tensor from the middle of the weights, lazily")
        from safetensors import safe_open

        weights = mountpoint / "model.safetensors"
        size = weights.stat().st_size
        started = time.monotonic()
        with safe_open(str(weights), "numpy") as tensors:
            names = list(tensors.keys())
            name = names[len(names) // 2]
            tensor = tensors.get_tensor(name)
        elapsed = time.monotonic() - started
        requests, served = bytes_served(access_log)
        print(
            f"  {name}: shape {list(tensor.shape)}, dtype {tensor.dtype}, "
            f"loaded in {elapsed * 1000:.0f} ms"
        )
        print(
            f"  fetched {served / MIB:.1f} MiB in {requests} requests "
            f"(manifest included) of a {size / MIB:.0f} MiB file: "
            f"{100 * served / size:.1f}%"
        )

        print("5. Read everything; every block is verified before it is served")
        for entry in manifest["files"]:
            digest = read_with_progress(mountpoint / entry["path"], entry["size"])
            if digest != entry["sha256"]:
                sys.exit(f"demo: {entry['path']} read back wrong")
        requests, served = bytes_served(access_log)
        print(
            f"  all {len(manifest['files'])} files match their sha256; "
            f"{served / MIB:.1f} MiB fetched in {requests} requests"
        )
    finally:
        if mounted:
            run("unmount", str(mountpoint))
        server.terminate()
        server.wait(timeout=30)
    print("done: unmounted; verified blocks stay cached in", cache)


if __name__ == "__main__":
    main()
