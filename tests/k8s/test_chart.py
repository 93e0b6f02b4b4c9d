"""The chart's objects and the contracts other parts rely on: ConfigMap names and keys, the Job
manifests' container name, commands and env (``dimflow submit`` and the pipeline's shard flags)."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from pipeline.spec import load_spec
from tests.k8s import support
from tests.k8s.conftest import rendered

LINT_WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


@pytest.mark.parametrize("name", sorted(support.VALUE_SETS))
def test_helm_lint_strict_is_clean(name):
    """`helm lint --strict` through the SDK (same linter as the CLI), for every Kubernetes version."""
    for version in support.KUBE_VERSIONS:
        report = helm.lint(
            support.CHART,
            support.VALUE_SETS[name],
            strict=True,
            namespace=support.NAMESPACE,
            kube_version=f"v{version}.0",
        )
        problems = [m for m in report["messages"] if m["severity"] >= LINT_WARNING]
        assert not problems and not report["errors"], f"{name} on {version}: {report}"


def test_lint_reports_bad_values():
    report = helm.lint(support.CHART, {"paint": {"shards": 0}}, strict=True)
    assert any("/paint/shards" in error for error in report["errors"]), report


def test_default_install_objects(default):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in default.docs)
    assert kinds == [
        ("ConfigMap", "dimflow-jobs"),
        ("ConfigMap", "dimflow-spec"),
        ("NetworkPolicy", "dimflow-orchestrator"),
        ("NetworkPolicy", "dimflow-workload"),
        ("Role", "dimflow-orchestrator"),
        ("RoleBinding", "dimflow-orchestrator"),
        ("ServiceAccount", "dimflow-orchestrator"),
        ("ServiceAccount", "dimflow-workload"),
    ]
    # Nothing runs on a default install; every object is namespaced in the release namespace.
    assert all(d["metadata"]["namespace"] == support.NAMESPACE for d in default.docs)


def test_no_cluster_wide_objects(every):
    for render in every:
        kinds = {d["kind"] for d in render.all_docs}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Namespace", "Secret"}, render.name


def test_spec_configmap_holds_the_job_spec(default, tmp_path):
    cm = support.one(default.docs, "ConfigMap", "dimflow-spec")
    assert list(cm["data"]) == ["job.yaml"]
    data = yaml.safe_load(cm["data"]["job.yaml"])
    assert data == support.chart().values["jobSpec"]
    path = tmp_path / "job.yaml"
    path.write_text(cm["data"]["job.yaml"])
    assert load_spec(path) == load_spec(support.REPO / "jobs" / "bulk-edit.yaml")


def test_jobs_configmap_holds_design_and_paint(default):
    cm = support.one(default.docs, "ConfigMap", "dimflow-jobs")
    assert sorted(cm["data"]) == ["design-job.yaml", "paint-job.yaml"]
    design = yaml.safe_load(cm["data"]["design-job.yaml"])
    paint = yaml.safe_load(cm["data"]["paint-job.yaml"])
    assert (design["kind"], design["metadata"]["name"]) == ("Job", "dimflow-design")
    assert (paint["kind"], paint["metadata"]["name"]) == ("Job", "dimflow-paint")
    # Namespace-agnostic: `dimflow submit --namespace` places them.
    assert "namespace" not in design["metadata"] and "namespace" not in paint["metadata"]


def _container(job):
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["dimflow"]
    return pod, pod["containers"][0]


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def test_design_job(default):
    design = next(j for j in default.jobs if j["metadata"]["name"] == "dimflow-design")
    pod, container = _container(design)
    assert container["command"] == [
        "dimflow",
        "run",
        "/etc/dimflow/job.yaml",
        "--stage",
        "design",
        "--no-progress",
    ]
    assert container["image"] == "dimflow:0.1.0" and container["imagePullPolicy"] == "Always"
    env = _env(container)
    assert env["OPENAI_API_KEY"] == {
        "name": "OPENAI_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "dimflow-api-key", "key": "api-key"}},
    }
    assert env["HF_HOME"]["value"] == "/cache/huggingface"
    assert design["spec"]["backoffLimit"] == 2
    assert "completionMode" not in design["spec"]
    assert pod["serviceAccountName"] == "dimflow-workload" and pod["restartPolicy"] == "Never"
    assert "nodeSelector" not in pod and "tolerations" not in pod
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/etc/dimflow": "spec", "/cache": "cache", "/tmp": "tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["spec"]["configMap"]["name"] == "dimflow-spec"
    assert volumes["cache"]["emptyDir"] == {"sizeLimit": "64Gi"}


def test_paint_job(default):
    paint = next(j for j in default.jobs if j["metadata"]["name"] == "dimflow-paint")
    spec = paint["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    assert spec["backoffLimitPerIndex"] == 2 and spec["maxFailedIndexes"] == 4
    assert "backoffLimit" not in spec  # with backoffLimitPerIndex the per-index limit governs
    assert spec["podFailurePolicy"] == {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "dimflow", "operator": "In", "values": [2]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }
    assert spec["activeDeadlineSeconds"] == 172800 and spec["ttlSecondsAfterFinished"] == 604800
    pod, container = _container(paint)
    assert container["command"] == [
        "dimflow",
        "run",
        "/etc/dimflow/job.yaml",
        "--stage",
        "paint",
        "--no-progress",
        "--shard-index",
        "$(JOB_COMPLETION_INDEX)",
        "--num-shards",
        "4",
    ]
    assert container["image"] == "dimflow-cuda:0.1.0"
    env = _env(container)
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert env["DIMFLOW_RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/controller-uid']"
    )
    # $(VAR) in a command only expands variables defined before it in env.
    assert list(env).index("JOB_COMPLETION_INDEX") == 0
    assert "OPENAI_API_KEY" not in env  # the painter never calls the designer
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_gpu_pool_values():
    render = rendered("gpu")
    paint = next(j for j in render.jobs if j["metadata"]["name"] == "dimflow-paint")
    spec = paint["spec"]
    assert (spec["completions"], spec["parallelism"], spec["maxFailedIndexes"]) == (8, 4, 2)
    pod, container = _container(paint)
    assert container["command"][-2:] == ["--num-shards", "8"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    ]
    assert pod["priorityClassName"] == "batch-gpu"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"] == {
        "name": "cache",
        "persistentVolumeClaim": {"claimName": "dimflow-model-cache"},
    }
    design = next(j for j in render.jobs if j["metadata"]["name"] == "dimflow-design")
    design_pod, _ = _container(design)
    assert design_pod["nodeSelector"] == {"cloud.google.com/gke-nodepool": "cpu-pool"}
    sa = support.one(render.docs, "ServiceAccount", "dimflow-workload")
    assert sa["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "dimflow@example.iam.gserviceaccount.com"
    }
    policy = support.one(render.docs, "NetworkPolicy", "dimflow-workload")
    peers = [
        peer["ipBlock"]["cidr"]
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        if "ipBlock" in peer
    ]
    assert "169.254.169.252/32" in peers


def test_kueue_label_and_suspend(default):
    for job in rendered("kueue").jobs:
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert job["spec"]["suspend"] is True
    for job in default.jobs:
        assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
        assert "suspend" not in job["spec"]


def test_secret_off_removes_the_key_env():
    render = rendered("no-secret")
    assert '"secretKeyRef"' not in support.canonical(render.all_docs)
    assert "CKV_K8S_35" not in "".join(render.text.values())  # no skip without the env var it excuses
    for job in render.jobs:
        _, container = _container(job)
        assert "OPENAI_API_KEY" not in _env(container)


def test_api_key_env_follows_the_spec():
    values = {
        "jobSpec": {"designer": {"api_key_env": "AZURE_OPENAI_API_KEY"}},
        "apiKey": {"existingSecret": "azure"},
    }
    docs = support.objects(support.render(values))
    design = next(j for j in support.embedded_jobs(docs) if j["metadata"]["name"] == "dimflow-design")
    env = _env(_container(design)[1])
    assert env["AZURE_OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "azure"
    assert "OPENAI_API_KEY" not in env


def test_cronjob_rerender():
    render = rendered("cron")
    cron = support.one(render.docs, "CronJob", "dimflow-rerender")
    spec = cron["spec"]
    assert spec["schedule"] == "0 3 * * *" and spec["timeZone"] == "Etc/UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == 3600
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 3)
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "dimflow-orchestrator"
    assert pod["containers"][0]["command"] == [
        "dimflow",
        "submit",
        "--in-cluster",
        "--jobs-configmap",
        "dimflow-rerender-jobs",
        "--namespace",
        "dimflow",
    ]
    spec_cm = support.one(render.docs, "ConfigMap", "dimflow-rerender-spec")
    assert yaml.safe_load(spec_cm["data"]["job.yaml"]) == yaml.safe_load(
        (support.REPO / "jobs" / "catalog-rerender.yaml").read_text()
    )
    names = sorted(j["metadata"]["name"] for j in render.jobs)
    assert names == ["dimflow-design", "dimflow-paint", "dimflow-rerender-design", "dimflow-rerender-paint"]
    for job in render.jobs:
        if job["metadata"]["name"].startswith("dimflow-rerender-"):
            volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
            assert volumes["spec"]["configMap"]["name"] == "dimflow-rerender-spec"
    role = support.one(render.docs, "Role", "dimflow-orchestrator")
    assert role["rules"][-1]["resourceNames"] == [
        "dimflow-spec",
        "dimflow-jobs",
        "dimflow-rerender-spec",
        "dimflow-rerender-jobs",
    ]


def test_submit_on_install():
    render = rendered("submit")
    job = support.one(render.docs, "Job", "dimflow-submit-1")
    pod, container = _container(job)
    assert container["command"] == [
        "dimflow",
        "submit",
        "--in-cluster",
        "--jobs-configmap",
        "dimflow-jobs",
        "--namespace",
        "dimflow",
    ]
    assert pod["serviceAccountName"] == "dimflow-orchestrator"
    assert pod["automountServiceAccountToken"] is True
    assert job["spec"]["backoffLimit"] == 0
    assert "dimflow-submit-1" in render.text["dimflow/templates/NOTES.txt"]


def test_orchestrator_rbac_is_least_privilege(default):
    role = support.one(default.docs, "Role", "dimflow-orchestrator")
    assert role["rules"] == [
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        },
        {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["dimflow-spec", "dimflow-jobs"],
            "verbs": ["get"],
        },
    ]
    binding = support.one(default.docs, "RoleBinding", "dimflow-orchestrator")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "dimflow-orchestrator",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "dimflow-orchestrator", "namespace": "dimflow"}
    ]
    workload = support.one(default.docs, "ServiceAccount", "dimflow-workload")
    assert workload["automountServiceAccountToken"] is False


def _selects(selector, labels):
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_network_policies(default):
    workload = support.one(default.docs, "NetworkPolicy", "dimflow-workload")["spec"]
    orchestrator = support.one(default.docs, "NetworkPolicy", "dimflow-orchestrator")["spec"]
    for spec in (workload, orchestrator):
        assert spec["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in spec  # no ingress at all
        dns = spec["egress"][0]
        assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
        assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert workload["egress"][1] == {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    assert len(workload["egress"]) == 2
    assert orchestrator["egress"][1]["ports"] == [
        {"protocol": "TCP", "port": 443},
        {"protocol": "TCP", "port": 6443},
    ]
    # The policies select exactly the pods they are meant for.
    for job in rendered("all").jobs:
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert _selects(workload["podSelector"], labels), job["metadata"]["name"]
        assert not _selects(orchestrator["podSelector"], labels)
    submit = support.one(rendered("all").docs, "Job", "dimflow-submit-1")
    labels = submit["spec"]["template"]["metadata"]["labels"]
    assert _selects(orchestrator["podSelector"], labels) and not _selects(workload["podSelector"], labels)
    assert not any(
        d["kind"] == "NetworkPolicy"
        for d in support.objects(support.render({"networkPolicy": {"enabled": False}}))
    )


def test_flink_deployment():
    render = rendered("flink")
    flink = support.one(render.docs, "FlinkDeployment", "dimflow-flink")
    assert flink["apiVersion"] == "flink.apache.org/v1beta1"
    spec = flink["spec"]
    assert spec["flinkVersion"] == "v1_20" and spec["mode"] == "standalone"
    assert spec["flinkConfiguration"]["taskmanager.numberOfTaskSlots"] == "1"
    tm = spec["taskManager"]["podTemplate"]["spec"]
    sidecar = next(c for c in tm["containers"] if c["name"] == "beam-worker-pool")
    assert sidecar["command"] == [
        "python",
        "-m",
        "apache_beam.runners.worker.worker_pool_main",
        "--service_port=50000",
    ]
    assert sidecar["ports"] == [{"name": "beam-pool", "containerPort": 50000, "protocol": "TCP"}]
    assert sidecar["image"] == "dimflow-cuda:0.1.0"
    assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == "1"
    driver = support.one(render.docs, "Job", "dimflow-flink-driver-1")
    _, container = _container(driver)
    command = container["command"]
    assert command[:7] == [
        "dimflow",
        "run",
        "/etc/dimflow/job.yaml",
        "--no-progress",
        "--set",
        "runner.name=FlinkRunner",
        "--",
    ]
    assert {
        "--flink_master=dimflow-flink-rest:8081",
        "--flink_version=1.20",
        "--environment_type=EXTERNAL",
        "--environment_config=localhost:50000",
        "--flink_submit_uber_jar",
    } <= set(command)


def test_flink_version_is_one_beam_knows():
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    schema_versions = support.chart().schema["properties"]["flink"]["properties"]["flinkVersion"]["enum"]
    beam_versions = {v.replace(".", "_") for v in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS}
    assert {v.removeprefix("v") for v in schema_versions} <= beam_versions


def test_standard_labels(every):
    required = {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/part-of",
        "app.kubernetes.io/component",
    }
    for render in every:
        for doc in render.all_docs:
            labels = doc["metadata"]["labels"]
            assert required <= set(labels), (render.name, doc["kind"], doc["metadata"]["name"])
            embedded = doc in render.jobs
            assert labels["app.kubernetes.io/managed-by"] == ("dimflow-submit" if embedded else "Helm")
            assert ("helm.sh/chart" in labels) is not embedded


def test_long_release_names_fit():
    """Release names up to Helm's 53 characters give names within Kubernetes' limits."""
    name = "a" * 53
    text = support.chart().render(
        {"cronJob": {"enabled": True}, "submitOnInstall": True}, name=name, namespace="ns"
    )
    docs = support.objects(text)
    for doc in docs + support.embedded_jobs(docs):
        # Jobs: 63 less room for a run suffix of up to 15 characters that `dimflow submit` may append.
        limit = {"Job": 63 - 15, "CronJob": 52}.get(doc["kind"], 63)
        assert len(doc["metadata"]["name"]) <= limit, doc["metadata"]["name"]
        for value in doc["metadata"]["labels"].values():
            assert len(value) <= 63


def test_an_openai_judge_gets_its_key_in_the_paint_pods_only():
    """The judge runs after painting, in the paint pods: they get the judge's key variable from the Secret;
    design pods (no judge there) get only the designer's. Without a judge, paint pods get no key."""
    values = {
        "jobSpec": {
            "designer": {"kind": "none"},
            "judge": {"kind": "openai", "model": "gpt-4o", "api_key_env": "JUDGE_API_KEY"},
            "quality": {"min_overall": 0.6, "max_paints": 3},
        },
        "apiKey": {"existingSecret": "judge-credentials"},
    }
    jobs = {j["metadata"]["name"]: j for j in support.embedded_jobs(support.objects(support.render(values)))}
    paint_env = _env(_container(jobs["dimflow-paint"])[1])
    assert paint_env["JUDGE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "judge-credentials"
    assert "JUDGE_API_KEY" not in _env(_container(jobs["dimflow-design"])[1])

    values["jobSpec"]["judge"] = {"kind": "none"}
    values["jobSpec"]["quality"] = {}
    jobs = {j["metadata"]["name"]: j for j in support.embedded_jobs(support.objects(support.render(values)))}
    assert not [name for name in _env(_container(jobs["dimflow-paint"])[1]) if name.endswith("API_KEY")]
