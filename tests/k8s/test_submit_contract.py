"""The chart and `dimflow submit` fit together: submit reads the chart's jobs ConfigMap, every API call
it makes in-cluster is allowed by the orchestrator's Role, and the Jobs it creates from the chart's
manifests are valid Kubernetes objects."""

from __future__ import annotations

import io
import re

import kubernetes_validate
import yaml
from rich.console import Console

from pipeline import cli
from pipeline.submit import Submitter, templates_from_configmap
from tests.fakes.k8s_api import FakeKubernetes
from tests.k8s import support
from tests.k8s.conftest import rendered

RUN = "20261125t030000z-abc123"
DONE = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
FAILED_INDEX = {
    "succeeded": 3,
    "failed": 1,
    "failedIndexes": "2",
    "conditions": [
        {"type": "Failed", "status": "True", "reason": "FailedIndexes", "message": "failed indexes"}
    ],
}


def _rbac(call) -> tuple[str, str, str, str | None]:
    """(apiGroup, resource, verb, name) that the API server authorizes for a recorded call."""
    patterns = [
        (r"/api/v1/namespaces/[^/]+/configmaps/([^/]+)", "", "configmaps"),
        (r"/apis/batch/v1/namespaces/[^/]+/jobs", "batch", "jobs"),
        (r"/apis/batch/v1/namespaces/[^/]+/jobs/([^/]+)/status", "batch", "jobs/status"),
        (r"/apis/batch/v1/namespaces/[^/]+/jobs/([^/]+)", "batch", "jobs"),
        (r"/api/v1/namespaces/[^/]+/pods", "", "pods"),
        (r"/api/v1/namespaces/[^/]+/pods/([^/]+)/log", "", "pods/log"),
    ]
    for pattern, group, resource in patterns:
        if m := re.fullmatch(pattern, call.path):
            name = m.group(1) if m.groups() else None
            verb = {"POST": "create", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}.get(call.method)
            verb = verb or ("get" if name else "list")
            return group, resource, verb, name
    raise AssertionError(f"unexpected API call {call.method} {call.path}")


def _allowed(role: dict, group: str, resource: str, verb: str, name: str | None) -> bool:
    for rule in role["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            if "resourceNames" not in rule or name in rule["resourceNames"]:
                return True
    return False


def test_in_cluster_submit_runs_within_the_role():
    """What the CronJob's pod does: read <fullname>-rerender-jobs, create design then paint, follow."""
    render = rendered("cron")
    role = support.one(render.docs, "Role", "dimflow-orchestrator")
    jobs_map = support.one(render.docs, "ConfigMap", "dimflow-rerender-jobs")
    fake = FakeKubernetes(
        config_maps={"dimflow-rerender-jobs": jobs_map},
        statuses={"dimflow-rerender-design": [DONE], "dimflow-rerender-paint": [FAILED_INDEX]},
        failed_pod_log="RuntimeError: CUDA out of memory",
    )
    with fake:
        from kubernetes import client

        api = fake.api_client()
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        templates = templates_from_configmap(core, support.NAMESPACE, "dimflow-rerender-jobs")
        out = io.StringIO()
        submitter = Submitter(batch, core, support.NAMESPACE, Console(file=out, width=200), poll_s=0)
        assert submitter.run(templates, RUN) == 1  # the failed paint index fails the run
    assert "CUDA out of memory" in out.getvalue()
    needed = {_rbac(call) for call in fake.calls}
    assert {(g, r, v) for g, r, v, _ in needed} >= {
        ("", "configmaps", "get"),
        ("batch", "jobs", "create"),
        ("batch", "jobs/status", "get"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
    }
    for group, resource, verb, name in needed:
        assert _allowed(role, group, resource, verb, name), (group, resource, verb, name)
    # The created Jobs are the chart's, with submit's run id and names.
    paint = fake.jobs[f"dimflow-rerender-paint-{RUN}"]
    container = paint["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "DIMFLOW_RUN_ID", "value": RUN} in container["env"]
    assert container["env"][0]["name"] == "JOB_COMPLETION_INDEX"
    assert container["command"][-4:] == ["--shard-index", "$(JOB_COMPLETION_INDEX)", "--num-shards", "4"]
    for job in fake.jobs.values():
        for version in support.KUBE_VERSIONS:
            kubernetes_validate.validate(job, version, strict=True)


def test_submit_dry_run_renders_this_chart(capsys):
    """`dimflow submit JOB.yaml --dry-run` (outside the cluster) renders helm/dimflow with the spec."""
    code = cli.main(
        ["submit", str(support.REPO / "jobs" / "bulk-edit.yaml"), "--dry-run", "--namespace", "dimflow"]
    )
    assert code == 0
    docs = [doc for doc in yaml.safe_load_all(capsys.readouterr().out) if doc]
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert names[0] == ("ConfigMap", "dimflow-spec")
    assert [kind for kind, _ in names[1:]] == ["Job", "Job"]
    assert names[1][1].startswith("dimflow-design-") and names[2][1].startswith("dimflow-paint-")
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63
        for version in support.KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
