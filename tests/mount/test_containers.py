"""The container image's pieces, without a Docker engine or a cluster (neither runs here):
the entrypoint script runs for real against a real origin; the Dockerfile and the
Kubernetes manifests in docs/kubernetes.md are parsed and checked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mounts import force_unmount, is_mounted, publish
from tests.origins import Origin
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "scripts" / "container" / "entrypoint"
DOCKERFILE = REPO / "scripts" / "container" / "Dockerfile"


def manifests() -> list[dict[str, Any]]:
    text = (REPO / "docs" / "kubernetes.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    return [yaml.safe_load(block) for block in blocks]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [document for document in manifests() if document["kind"] == kind]


def mounts_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {mount["name"]: mount for mount in container.get("volumeMounts", [])}


def test_daemonset_mounts_on_the_host_with_bidirectional_propagation() -> None:
    (daemonset,) = by_kind("DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert container["securityContext"]["privileged"] is True
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["LAZYFS_URL"].startswith("http")
    mounted = mounts_of(container)
    models = mounted["models"]
    assert models["mountPropagation"] == "Bidirectional"
    assert env["LAZYFS_MOUNTPOINT"].startswith(models["mountPath"] + "/")
    assert volumes["models"]["hostPath"]["path"] == "/mnt/models"
    assert volumes["fuse"]["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    assert mounted["fuse"]["mountPath"] == "/dev/fuse"
    assert "hostPath" in volumes["cache"]  # blocks outlive the pod
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:3] == ["lazyfs", "wait", env["LAZYFS_MOUNTPOINT"]]


def test_reader_pod_sees_the_node_mount() -> None:
    pods = [pod for pod in by_kind("Pod") if not pod["spec"].get("initContainers")]
    (pod,) = pods
    (container,) = pod["spec"]["containers"]
    mount = mounts_of(container)["models"]
    assert mount["mountPropagation"] == "HostToContainer" and mount["readOnly"] is True
    (volume,) = pod["spec"]["volumes"]
    assert volume["hostPath"]["path"] == "/mnt/models"
    assert container["securityContext"]["runAsUser"] != 0  # readable thanks to --allow-other


def test_sidecar_shares_its_mount_with_the_application() -> None:
    (pod,) = [pod for pod in by_kind("Pod") if pod["spec"].get("initContainers")]
    (sidecar,) = pod["spec"]["initContainers"]
    (application,) = pod["spec"]["containers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: starts first, lives on
    assert sidecar["securityContext"]["privileged"] is True
    assert mounts_of(sidecar)["models"]["mountPropagation"] == "Bidirectional"
    assert mounts_of(application)["models"]["mountPropagation"] == "HostToContainer"
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes["models"]
    hook = " ".join(sidecar["lifecycle"]["postStart"]["exec"]["command"])
    assert "lazyfs wait" in hook


def test_dockerfile_copies_what_exists_and_runs_the_entrypoint() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), source
    assert 'ENTRYPOINT ["lazyfs-entrypoint"]' in lines
    assert any("scripts/container/entrypoint /usr/local/bin/lazyfs-entrypoint" in line
               for line in lines)  # fmt: skip
    assert any(line.startswith("FROM python:3.11") for line in lines)
    assert os.access(ENTRYPOINT, os.X_OK)


def entrypoint_environment(origin: Origin, target: Path, cache: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}",
        LAZYFS_URL=origin.url,
        LAZYFS_MOUNTPOINT=str(target),
        LAZYFS_CACHE_DIR=str(cache),
        LAZYFS_CACHE_SIZE="100M",
        LAZYFS_OPTIONS="--log-level info --prefetch",
    )
    return environment


def test_entrypoint_mounts_serves_and_unmounts_on_sigterm(origin: Origin, tmp_path: Path) -> None:
    (origin.root / "config.json").write_text('{"model_type": "llama"}\n')
    publish(origin.root)
    target = tmp_path / "models" / "llama"  # created by the entrypoint
    environment = entrypoint_environment(origin, target, tmp_path / "cache")
    daemon = subprocess.Popen(
        [str(ENTRYPOINT)], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert wait_until(lambda: is_mounted(target), 30), "the entrypoint did not mount"
        assert (target / "config.json").read_text() == '{"model_type": "llama"}\n'
        waited = subprocess.run(
            [str(ENTRYPOINT), "wait", str(target), "--timeout", "30"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert waited.returncode == 0, waited.stderr
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        assert not is_mounted(target)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        force_unmount(target)


def test_entrypoint_without_a_url_says_so(tmp_path: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "LAZYFS_URL"}
    result = subprocess.run(
        [str(ENTRYPOINT)], env=environment, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
    assert "set LAZYFS_URL" in result.stderr


@pytest.mark.parametrize(
    "document", manifests(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}"
)
def test_every_manifest_names_an_image_and_a_namespace(document: dict[str, Any]) -> None:
    assert document["metadata"]["namespace"] == "models"
    text = yaml.safe_dump(document)
    assert "image:" in text
