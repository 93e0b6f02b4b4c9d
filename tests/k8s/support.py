"""Render the Helm chart offline with helm-python-sdk (Helm's Go SDK) and pick the objects apart.

The chart's design and paint Job manifests are not installed as objects: they live as YAML text in
the jobs ConfigMaps, and ``dimflow submit`` creates them. ``embedded_jobs`` parses them back so every
check that applies to installed objects applies to them too.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "dimflow"
# The Flink Kubernetes Operator's FlinkDeployment CRD (its file helm/flink-kubernetes-operator/crds/
# flinkdeployments.flink.apache.org-v1.yml) is not part of this repository: point DIMFLOW_FLINK_CRD at a
# copy to validate the rendered FlinkDeployment against it; without one those checks are skipped.
CRD_ENV = "DIMFLOW_FLINK_CRD"


def flink_crd_path() -> Path | None:
    """The CRD file named by $DIMFLOW_FLINK_CRD, or None when the variable is unset."""
    value = os.environ.get(CRD_ENV, "").strip()
    return Path(value).expanduser() if value else None


RELEASE = "dimflow"
NAMESPACE = "dimflow"
KUBE_VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34")

# A fake key that appears nowhere in the chart or values: if it ever shows up in a rendered
# manifest, a secret value leaked into it.
FAKE_KEY = "sk-dimflow-FAKE-2f9c4e1ab7d3-never-render-me"

GPU_VALUES: dict[str, Any] = {
    "paint": {
        "shards": 8,
        "parallelism": 4,
        "gpusPerPod": 2,
        "maxFailedIndexes": 2,
        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "tolerations": [
            {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        ],
        "priorityClassName": "batch-gpu",
    },
    "design": {"nodeSelector": {"cloud.google.com/gke-nodepool": "cpu-pool"}},
    "modelCache": {"existingClaim": "dimflow-model-cache"},
    "networkPolicy": {"gkeMetadataServer": True},
    "serviceAccount": {
        "workload": {
            "annotations": {"iam.gke.io/gcp-service-account": "dimflow@example.iam.gserviceaccount.com"}
        }
    },
    "imagePullSecrets": [{"name": "registry-credentials"}],
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": GPU_VALUES,
    "kueue": {"kueue": {"queueName": "gpu-queue"}},
    "flink": {"flink": {"enabled": True}},
    "no-secret": {"apiKey": {"enabled": False}, "jobSpec": {"designer": {"kind": "none"}}},
    "cron": {"cronJob": {"enabled": True}},
    "submit": {"submitOnInstall": True},
    # Everything at once (the set checkov scans besides the defaults).
    "all": {
        **GPU_VALUES,
        "kueue": {"queueName": "gpu-queue"},
        "flink": {"enabled": True},
        "cronJob": {"enabled": True},
        "submitOnInstall": True,
    },
}


@functools.lru_cache(maxsize=1)
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template RELEASE helm/dimflow -n NAMESPACE`."""
    return chart().render(copy.deepcopy(values) if values else None, name=RELEASE, namespace=namespace)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every object of a render (NOTES.txt left out), in template order."""
    docs: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(rendered[path]) if doc)
    return docs


def embedded_jobs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Job manifests held as text in the jobs ConfigMaps (``*-job.yaml`` keys)."""
    jobs = []
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-jobs"):
            for key in sorted(doc["data"]):
                job = yaml.safe_load(doc["data"][key])
                job.setdefault("metadata", {}).setdefault("annotations", {})["dimflow.test/source"] = (
                    f"{doc['metadata']['name']}/{key}"
                )
                jobs.append(job)
    return jobs


def strip_test_marks(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj.get("metadata", {}).get("annotations", {}).pop("dimflow.test/source", None)
    return obj


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod template in an object (Job, CronJob, FlinkDeployment)."""
    kind = doc["kind"]
    spec = doc.get("spec", {})
    if kind == "Job":
        return [("template", spec["template"]["spec"])]
    if kind == "CronJob":
        return [("jobTemplate", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "FlinkDeployment":
        found = [("podTemplate", spec["podTemplate"]["spec"])] if "podTemplate" in spec else []
        for part in ("jobManager", "taskManager"):
            template = spec.get(part, {}).get("podTemplate")
            if template:
                found.append((f"{part}.podTemplate", template["spec"]))
        return found
    return []


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod.get("containers", []))


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
