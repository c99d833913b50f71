"""The Helm chart (charts/bindha-rwx): one source of truth with the manifests. Its base/
is a copy of manifests/base (scripts/sync-chart.sh), with the defaults it renders the
same objects as `kustomize build manifests/base`, with the Octavia values those of
overlays/cephfs, and what it renders with other values is accepted by the apiserver
(server-side dry run). helm is built from the Go module proxy (scripts/build-helm.sh)."""

from __future__ import annotations

import filecmp
import os
import subprocess
from pathlib import Path

import yaml

import bindha_rwx
from tests.kube.test_manifests import MANIFESTS, build, dry_run

CHART = MANIFESTS.parent / "charts" / "bindha-rwx"


def template(helm: str, *args: str, namespace: str = "default") -> list[dict]:
    out = subprocess.run([helm, "template", "bind", str(CHART), "--namespace", namespace,
                          *args], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "HELM_CACHE_HOME": "/tmp/helm-cache",
                              "HELM_CONFIG_HOME": "/tmp/helm-config",
                              "HELM_DATA_HOME": "/tmp/helm-data"}).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_name(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def as_kustomize_labels(objects: list[dict]) -> list[dict]:
    """The chart's objects with the two labels that must differ from kustomize's put
    back: managed-by is Helm on every object and pod template, helm.sh/chart on the
    objects only (a chart bump alone must roll no pod)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels.pop("helm.sh/chart") == f"{chart['name']}-{chart['version']}", obj
        assert labels["app.kubernetes.io/managed-by"] == "Helm", obj
        labels["app.kubernetes.io/managed-by"] = "kustomize"
        pod = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels")
        if pod is not None:
            assert "helm.sh/chart" not in pod and pod["app.kubernetes.io/managed-by"] == "Helm"
            pod["app.kubernetes.io/managed-by"] = "kustomize"
    return objects


def test_the_chart_carries_the_manifests_as_they_are():
    copied = sorted(p.name for p in (CHART / "base").glob("*.yaml"))
    source = sorted(p.name for p in (MANIFESTS / "base").glob("*.yaml")
                    if p.name != "kustomization.yaml")
    assert copied == source, "run scripts/sync-chart.sh"
    for name in source:
        assert filecmp.cmp(CHART / "base" / name, MANIFESTS / "base" / name, shallow=False), \
            f"charts/bindha-rwx/base/{name} differs from manifests/base: run scripts/sync-chart.sh"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == bindha_rwx.__version__


def test_the_defaults_render_what_kustomize_renders(helm, kustomize):
    assert by_name(as_kustomize_labels(template(helm))) == by_name(build(kustomize, "base"))


def test_the_octavia_values_render_the_cephfs_overlay(helm, kustomize):
    rendered = template(helm, "--set", "storage.storageClassName=cephfs",
                        "--set", "octavia.enabled=true")
    assert by_name(as_kustomize_labels(rendered)) == \
        by_name(build(kustomize, "overlays/cephfs"))


def test_values_reach_the_objects_and_the_apiserver_accepts_them(helm, api_client, namespace):
    values = Path("/tmp") / f"bindha-values-{namespace}.yaml"
    values.write_text(yaml.safe_dump({
        "image": {"repository": "registry.example.com/dns/bindha-rwx", "tag": "0.1.0-rc1"},
        "masters": {"replicas": 5}, "tsig": {"existingSecret": "my-keys"},
        "storage": {"storageClassName": "csi-manila-nfs", "size": "3Gi"},
        "topologySpread": {"whenUnsatisfiable": "DoNotSchedule"},
        "octavia": {"enabled": True, "portId": "3f1c5a52-0d6e-4c7b-9b8e-6c1a2b3c4d5e"},
        "service": {"loadBalancerSourceRanges": ["192.0.2.0/24"]},
        "config": {"cluster": "bind", "zones": []}}))
    try:
        objects = by_name(template(helm, "-f", str(values), namespace=namespace))
    finally:
        values.unlink()
    master = objects[("StatefulSet", "bind-master")]
    spec = master["spec"]["template"]["spec"]
    assert master["spec"]["replicas"] == 5
    assert spec["containers"][0]["image"] == "registry.example.com/dns/bindha-rwx:0.1.0-rc1"
    assert [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v] == ["my-keys"]
    assert spec["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "DoNotSchedule"
    pvc = objects[("PersistentVolumeClaim", "bind-dyn")]["spec"]
    assert pvc["storageClassName"] == "csi-manila-nfs"
    assert pvc["resources"]["requests"]["storage"] == "3Gi"
    lb = objects[("Service", "bind-dns")]
    assert lb["metadata"]["annotations"]["loadbalancer.openstack.org/port-id"].startswith("3f1c")
    assert lb["spec"]["loadBalancerSourceRanges"] == ["192.0.2.0/24"]
    assert yaml.safe_load(objects[("ConfigMap", "bind-config")]["data"]["config.yaml"]) == \
        {"cluster": "bind", "zones": []}
    binding = objects[("ClusterRoleBinding", "bindha-rwx-node-reader")]
    assert {s["namespace"] for s in binding["subjects"]} == {namespace}
    dry_run(api_client, namespace, [o for o in objects.values() if o["kind"] not in
                                    ("ClusterRole", "ClusterRoleBinding")], "the chart")


def test_helm_lint_passes(helm):
    linted = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr
