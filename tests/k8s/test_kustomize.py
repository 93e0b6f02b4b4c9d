"""k8s/base and the gke-gpu overlay are generated from the chart (k8s/render_base.py): they match a
fresh render, and base + overlay patches give what the chart renders with the GKE values."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import yaml

from tests.k8s import support

K8S = support.REPO / "k8s"


@pytest.fixture(scope="module")
def render_base():
    spec = importlib.util.spec_from_file_location("render_base", K8S / "render_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(render_base) -> dict[str, str]:
    return render_base.build()


def _load(path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_generated_files_are_up_to_date(generated, render_base):
    stale = [
        path
        for path, text in generated.items()
        if not (K8S / path).is_file() or (K8S / path).read_text() != text
    ]
    assert not stale, (
        f"{stale} differ from the chart: run `.venv/bin/python k8s/render_base.py` (make k8s-base)"
    )
    assert render_base.main(["--check"]) == 0


def test_kustomizations_list_exactly_the_files():
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    files = sorted(p.name for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(base["resources"]) == files
    overlay = yaml.safe_load((K8S / "overlays" / "gke-gpu" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../../base"]
    patches = sorted(p.name for p in (K8S / "overlays" / "gke-gpu").glob("*-patch.yaml"))
    assert sorted(p["path"] for p in overlay["patches"]) == patches
    assert base["namespace"] == overlay["namespace"] == support.NAMESPACE


def _base_objects() -> dict[tuple[str, str], dict]:
    docs = [
        doc
        for path in sorted((K8S / "base").glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in _load(path)
    ]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_base_is_the_chart_defaults(render_base):
    chart = {
        (d["kind"], d["metadata"]["name"]): render_base.as_kustomize(d)
        for d in support.objects(support.render())
    }
    assert _base_objects() == chart
    for obj in chart.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize"
        assert "helm.sh/chart" not in obj["metadata"]["labels"]


def _strategic_merge(target, patch):
    """Strategic merge as kustomize applies these patches: maps merge, lists (no merge keys here) replace."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(target)
        for key, value in patch.items():
            merged[key] = _strategic_merge(target[key], value) if key in target else value
        return merged
    return copy.deepcopy(patch)


def test_overlay_is_the_chart_with_gke_values(render_base):
    objects = _base_objects()
    for path in sorted((K8S / "overlays" / "gke-gpu").glob("*-patch.yaml")):
        (patch,) = _load(path)
        key = (patch["kind"], patch["metadata"]["name"])
        assert key in objects, f"{path.name} patches nothing in the base"
        objects[key] = _strategic_merge(objects[key], patch)
    chart = {
        (d["kind"], d["metadata"]["name"]): render_base.as_kustomize(d)
        for d in support.objects(support.render(render_base.GKE_GPU_VALUES))
    }
    assert objects == chart
    paint = yaml.safe_load(objects[("ConfigMap", "dimflow-jobs")]["data"]["paint-job.yaml"])
    pod = paint["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
