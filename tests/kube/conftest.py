"""The real control plane: a kube-apiserver with embedded etcd, once per session.

BINDHA_TEST_KUBECONFIG points the tests at any other cluster instead (each test
still gets a namespace of its own, deleted afterwards).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from harness.testplane import TestPlane, build_binary
from tests.conftest import require


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    external = os.environ.get("BINDHA_TEST_KUBECONFIG")
    if external:
        yield Path(external)
        return
    plane = start_plane(tmp_path_factory.mktemp("testplane"))
    yield plane.kubeconfig
    plane.stop()


def start_plane(workdir: Path) -> TestPlane:
    """A real kube-apiserver with its etcd in ``workdir``; a missing part fails under CI."""
    require(Path("/usr/bin/openssl").exists() or bool(os.environ.get("BINDHA_TESTPLANE_BIN")),
            "openssl is needed to make the apiserver's service-account key")
    try:
        binary = build_binary()
    except Exception as exc:  # the build's own output is on stderr already
        require(False, f"the test control plane could not be built: {exc}")
        raise
    plane = TestPlane(binary=binary, workdir=workdir)
    plane.start()
    return plane


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def lab(request, tmp_path, api_client, kubeconfig, namespace, address_pool, key_files):
    """Master pods as processes on loopback addresses over one shared directory; with
    ``BINDHA_TEST_VOLUME=cephfs`` over the Ceph lab's CephFS instead, each master pod on
    a ceph-fuse of its own and the test's reads through one more (scripts/test-cephfs)."""
    from harness.pods import MasterLab, all_named

    made = MasterLab(root=tmp_path, api=api_client, kubeconfig=kubeconfig,
                     namespace=namespace, address_pool=address_pool, key_files=key_files)
    mounts: list[Any] = []
    if os.environ.get("BINDHA_TEST_VOLUME") == "cephfs":
        ceph = request.getfixturevalue("ceph_lab")
        mounts.append(ceph.mount(f"{namespace}-observer", made.shared))
        for entry in made.shared.iterdir():  # the CephFS root, shared by every test
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

        def pod_volume(name: str) -> Path:
            mounts.append(ceph.mount(f"{namespace}-{name}", tmp_path / f"{name}.dyn"))
            return mounts[-1].mountpoint
        made.pod_volume = pod_volume
    try:
        yield made
    finally:
        for mount in mounts:  # a frozen client must run again to stop its pod
            with contextlib.suppress(ProcessLookupError):
                os.kill(mount.pid, signal.SIGCONT)
        made.stop()
        for mount in reversed(mounts):
            mount.unmount()
    assert all_named(tmp_path) == [], "a named outlived the test's supervisors"


@pytest.fixture
def namespace(api_client: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, so tests never see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def built_tool(env_var: str, script: str) -> str:
    """A test tool from ``env_var``, or built (cached) by ``scripts/<script>``."""
    binary = os.environ.get(env_var)
    if not binary:
        path = Path(__file__).resolve().parents[2] / "scripts" / script
        try:
            binary = subprocess.run([str(path)], capture_output=True, text=True,
                                    timeout=1800, check=True).stdout.strip()
        except (subprocess.CalledProcessError, OSError) as exc:
            require(False, f"{script} could not build its tool: {exc}")
    return str(binary)


@pytest.fixture(scope="session")
def kustomize() -> str:
    return built_tool("BINDHA_KUSTOMIZE_BIN", "build-kustomize.sh")


@pytest.fixture(scope="session")
def helm() -> str:
    return built_tool("BINDHA_HELM_BIN", "build-helm.sh")
