"""Semantic security checks over every value set: Pod Security "restricted", GPUs only where the
painter runs, resources everywhere, no secret values anywhere."""

from __future__ import annotations

import re

from tests.k8s import support
from tests.k8s.conftest import rendered

# The Flink image's own container writes under /opt/flink (its entrypoint and logs): the one
# documented exception to readOnlyRootFilesystem. Its resources come from the FlinkDeployment's
# jobManager/taskManager.resource, not from a container spec.
FLINK_MAIN = "flink-main-container"


def _pods(render):
    for doc in render.all_docs:
        for where, pod in support.pod_specs(doc):
            yield f"{render.name}: {doc['kind']}/{doc['metadata']['name']} {where}", doc, pod


def test_pod_security_restricted(every):
    count = 0
    for render in every:
        for where, _, pod in _pods(render):
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert isinstance(context["runAsUser"], int) and context["runAsUser"] > 0, where
            assert isinstance(context["runAsGroup"], int) and context["runAsGroup"] > 0, where
            assert isinstance(context["fsGroup"], int), where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for key in ("hostNetwork", "hostPID", "hostIPC"):
                assert not pod.get(key), where
            assert not any("hostPath" in v for v in pod.get("volumes", [])), where
            for container in support.containers(pod):
                sc = container["securityContext"]
                name = f"{where} container {container['name']}"
                assert sc["allowPrivilegeEscalation"] is False, name
                assert sc.get("privileged", False) is False, name
                assert sc["capabilities"] == {"drop": ["ALL"]}, name
                assert sc["runAsNonRoot"] is True, name
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
                assert sc["readOnlyRootFilesystem"] is (container["name"] != FLINK_MAIN), name
                count += 1
    assert count > 30


def test_resources_on_every_container(every):
    for render in every:
        for where, doc, pod in _pods(render):
            for container in support.containers(pod):
                if container["name"] == FLINK_MAIN:
                    assert {"cpu", "memory"} <= set(doc["spec"]["taskManager"]["resource"])
                    assert {"cpu", "memory"} <= set(doc["spec"]["jobManager"]["resource"])
                    continue
                resources = container["resources"]
                for side in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources[side]), f"{where} {container['name']} {side}"
                    # Strings only: the kubernetes Python client (dimflow submit) refuses numbers.
                    assert all(isinstance(q, str) for q in resources[side].values()), f"{where} {side}"


def test_gpus_only_where_the_painter_runs(every):
    gpu_containers = set()
    for render in every:
        gpus = render.values.get("paint", {}).get("gpusPerPod", 1)
        for where, doc, pod in _pods(render):
            for container in support.containers(pod):
                resources = container.get("resources", {})
                has_gpu = any("nvidia.com/gpu" in resources.get(side, {}) for side in ("requests", "limits"))
                paints = doc["metadata"]["name"].endswith("-paint") or container["name"] == "beam-worker-pool"
                assert has_gpu is paints, f"{where} {container['name']}"
                if has_gpu:
                    gpu_containers.add((doc["kind"], doc["metadata"]["name"], container["name"]))
                    expected = gpus if doc["kind"] == "Job" else 1
                    assert resources["limits"]["nvidia.com/gpu"] == str(expected)
                    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
                        "tolerations"
                    ]
    assert gpu_containers == {
        ("Job", "dimflow-paint", "dimflow"),
        ("Job", "dimflow-rerender-paint", "dimflow"),
        ("FlinkDeployment", "dimflow-flink", "beam-worker-pool"),
    }


def test_service_account_tokens_only_for_the_orchestrator(every):
    for render in every:
        for where, doc, pod in _pods(render):
            orchestrator = pod.get("serviceAccountName") == "dimflow-orchestrator"
            assert pod["automountServiceAccountToken"] is orchestrator, where
            if doc["kind"] != "FlinkDeployment":
                assert pod["serviceAccountName"] in ("dimflow-workload", "dimflow-orchestrator"), where
        for sa in support.by_kind(render.docs, "ServiceAccount"):
            assert sa["automountServiceAccountToken"] is False


def test_images_are_pinned_and_always_pulled(every):
    for render in every:
        for where, _, pod in _pods(render):
            for container in support.containers(pod):
                if container["name"] == FLINK_MAIN:
                    continue
                image = container["image"]
                assert re.fullmatch(r"[^:@]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image), image
                assert not image.endswith(":latest")
                assert container["imagePullPolicy"] == "Always", where
        for flink in support.by_kind(render.docs, "FlinkDeployment"):
            assert flink["spec"]["image"] == "flink:1.20.1" and flink["spec"]["imagePullPolicy"] == "Always"


def test_no_secret_values_in_any_manifest(monkeypatch):
    """The key is only ever referenced by Secret name: even with the key in the environment of the
    process that renders, it appears nowhere; no Secret object is rendered; no env var carries a
    literal value under a secret-looking name."""
    monkeypatch.setenv("OPENAI_API_KEY", support.FAKE_KEY)
    monkeypatch.setenv("DIMFLOW_API_KEY", support.FAKE_KEY)
    values = {
        **support.VALUE_SETS["all"],
        "apiKey": {"enabled": True, "existingSecret": "openai-credentials", "key": "token"},
    }
    text = support.render(values)
    assert support.FAKE_KEY not in "".join(text.values())
    docs = support.objects(text)
    jobs = support.embedded_jobs(docs)
    assert not support.by_kind(docs, "Secret")
    references = 0
    for doc in docs + jobs:
        for where, pod in support.pod_specs(doc):
            for container in support.containers(pod):
                for env in container.get("env", []):
                    if (
                        re.search(r"KEY|TOKEN|SECRET|PASSWORD", env["name"])
                        and env["name"] != "JOB_COMPLETION_INDEX"
                    ):
                        assert "value" not in env, f"{doc['metadata']['name']} {where} {env['name']}"
                        assert env["valueFrom"] == {
                            "secretKeyRef": {"name": "openai-credentials", "key": "token"}
                        }
                        references += 1
    # design + rerender-design + Flink driver + Flink SDK workers
    assert references == 4


def test_workload_env_points_caches_at_the_volume(every):
    for render in every:
        for where, _doc, pod in _pods(render):
            if pod.get("serviceAccountName") == "dimflow-orchestrator":
                continue
            for container in support.containers(pod):
                if container["name"] == FLINK_MAIN:
                    continue
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env["HF_HOME"] == "/cache/huggingface" and env["HOME"] == "/tmp", where
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                assert {"/cache", "/tmp"} <= mounts, where


def test_default_render_has_a_network_policy_for_every_pod():
    render = rendered("all")
    policies = support.by_kind(render.docs, "NetworkPolicy")
    for job in render.jobs + [support.one(render.docs, "Job", "dimflow-submit-1")]:
        labels = job["spec"]["template"]["metadata"]["labels"]
        selected = [
            p
            for p in policies
            if all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
            and all(
                labels.get(e["key"]) in e["values"]
                for e in p["spec"]["podSelector"].get("matchExpressions", [])
            )
        ]
        assert len(selected) == 1, job["metadata"]["name"]
