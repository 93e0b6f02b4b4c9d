"""`dimflow submit` against a loopback fake of the Kubernetes API: order, content, waiting, exit codes."""

from __future__ import annotations

import io

import pytest
import yaml
from rich.console import Console

from pipeline.submit import (
    DESIGN_KEY,
    PAINT_KEY,
    RUN_LABEL,
    JobTemplates,
    SubmitError,
    Submitter,
    instantiate,
    templates_from_configmap,
)
from tests.fakes.k8s_api import FakeKubernetes

NS = "catalog"
RUN = "20261124t120000z-abc123"


def job(name: str, indexed: bool = False) -> dict:
    spec = {
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "dimflow"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {"name": "dimflow", "image": "dimflow:1", "env": [{"name": "A", "value": "1"}]}
                ],
            },
        }
    }
    if indexed:
        spec.update(completionMode="Indexed", completions=3, parallelism=3)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


TEMPLATES = JobTemplates(
    design=job("dimflow-design"),
    paint=job("dimflow-paint", indexed=True),
    spec_configmap={
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "dimflow-spec"},
        "data": {"job.yaml": "name: x"},
    },
)
RUNNING = {"active": 1}
DONE = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
PAINT_DONE = {"succeeded": 3, "conditions": [{"type": "Complete", "status": "True"}]}


def submitter(fake: FakeKubernetes, **kwargs) -> tuple[Submitter, io.StringIO]:
    from kubernetes import client

    api = fake.api_client()
    out = io.StringIO()
    console = Console(file=out, width=200)
    ticks = iter(range(10_000))
    return (
        Submitter(
            client.BatchV1Api(api),
            client.CoreV1Api(api),
            NS,
            console,
            poll_s=0,
            clock=lambda: float(next(ticks)),
            sleep=lambda s: None,
            **kwargs,
        ),
        out,
    )


def test_design_then_paint_in_order_with_one_run_id():
    with FakeKubernetes(
        statuses={"dimflow-design": [RUNNING, RUNNING, DONE], "dimflow-paint": [RUNNING, PAINT_DONE]}
    ) as fake:
        sub, out = submitter(fake)
        assert sub.run(TEMPLATES, RUN) == 0
    steps = [
        (
            c.method,
            c.path.removeprefix(f"/api/v1/namespaces/{NS}").removeprefix(f"/apis/batch/v1/namespaces/{NS}"),
        )
        for c in fake.calls
    ]
    design, paint = f"dimflow-design-{RUN}", f"dimflow-paint-{RUN}"
    assert steps == [
        ("PUT", "/configmaps/dimflow-spec"),  # replace (404: not there yet) ...
        ("POST", "/configmaps"),  # ... then create
        ("POST", "/jobs"),
        ("GET", f"/jobs/{design}/status"),
        ("GET", f"/jobs/{design}/status"),
        ("GET", f"/jobs/{design}/status"),
        ("POST", "/jobs"),  # the paint Job only after the design Job completed
        ("GET", f"/jobs/{paint}/status"),
        ("GET", f"/jobs/{paint}/status"),
    ]
    created = fake.jobs[paint]
    assert created["spec"]["completionMode"] == "Indexed" and created["metadata"]["labels"][RUN_LABEL] == RUN
    env = created["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "DIMFLOW_RUN_ID", "value": RUN} in env and {"name": "A", "value": "1"} in env
    assert fake.jobs[design]["spec"]["template"]["spec"]["containers"][0]["env"][-1]["value"] == RUN
    text = out.getvalue()
    assert "3 succeeded" in text and f"run {RUN} finished" in text


def test_failed_paint_index_exits_1_with_reason_and_log():
    failed = {
        "succeeded": 2,
        "failed": 1,
        "failedIndexes": "1",
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "FailedIndexes",
                "message": "Job has failed indexes",
            }
        ],
    }
    with FakeKubernetes(
        statuses={"dimflow-design": [DONE], "dimflow-paint": [RUNNING, failed]},
        failed_pod_log="Traceback ...\nRuntimeError: CUDA out of memory",
    ) as fake:
        sub, out = submitter(fake)
        assert sub.run(TEMPLATES, RUN) == 1
    text = out.getvalue()
    assert "failed indexes 1" in text and "FailedIndexes: Job has failed indexes" in text
    assert "CUDA out of memory" in text
    log_call = fake.calls[-1]
    assert log_call.path.endswith("/log") and log_call.query["container"] == ["dimflow"]


def test_failed_design_never_creates_the_paint_job():
    failed = {
        "failed": 1,
        "conditions": [
            {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 2"}
        ],
    }
    with FakeKubernetes(statuses={"dimflow-design": [failed]}) as fake:
        sub, out = submitter(fake)
        assert sub.run(TEMPLATES, RUN) == 1
    assert list(fake.jobs) == [f"dimflow-design-{RUN}"]
    assert "PodFailurePolicy: exit code 2" in out.getvalue() and "paint Job was not created" in out.getvalue()


def test_timeout_stops_waiting():
    with FakeKubernetes(statuses={"dimflow-design": [RUNNING]}) as fake:
        sub, out = submitter(fake, timeout_s=5)
        assert sub.run(TEMPLATES, RUN) == 1
    polls = [c for c in fake.calls if c.path.endswith("/status")]
    assert 5 <= len(polls) <= 8  # bounded by the (fake) clock, not endless
    assert "timed out after 5 s" in out.getvalue()


def test_templates_from_the_charts_configmap():
    data = {DESIGN_KEY: yaml.safe_dump(job("rel-design")), PAINT_KEY: yaml.safe_dump(job("rel-paint", True))}
    with FakeKubernetes(config_maps={"rel-jobs": {"metadata": {"name": "rel-jobs"}, "data": data}}) as fake:
        from kubernetes import client

        core = client.CoreV1Api(fake.api_client())
        templates = templates_from_configmap(core, NS, "rel-jobs")
        assert templates.paint["spec"]["completionMode"] == "Indexed" and templates.spec_configmap is None
        fake.config_maps["bad"] = {"metadata": {"name": "bad"}, "data": {DESIGN_KEY: "{}"}}
        with pytest.raises(SubmitError, match=r"lacks key\(s\) \['paint-job.yaml'\]"):
            templates_from_configmap(core, NS, "bad")


def test_instantiate_checks_the_manifest():
    with pytest.raises(SubmitError, match="no container named 'dimflow'"):
        bad = job("x")
        bad["spec"]["template"]["spec"]["containers"][0]["name"] = "other"
        instantiate(bad, RUN)
    with pytest.raises(SubmitError, match="expected a Job"):
        instantiate({"kind": "Pod"}, RUN)
    long = instantiate(job("d" * 60), RUN)
    assert len(long["metadata"]["name"]) <= 63


def test_cli_submit_renders_the_chart_and_exits_with_the_runs_outcome(tmp_path, monkeypatch, capsys):
    """`dimflow submit JOB.yaml` from a laptop: kubeconfig -> loopback fake API, manifests from helm/dimflow."""
    from pathlib import Path

    from pipeline import cli

    job = Path(__file__).resolve().parents[1] / "jobs" / "bulk-edit.yaml"
    failed = {
        "failed": 2,
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    }
    for paint_status, expected in ((PAINT_DONE, 0), (failed, 1)):
        with FakeKubernetes(
            statuses={"dimflow-design": [RUNNING, DONE], "dimflow-paint": [RUNNING, paint_status]}
        ) as fake:
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "clusters": [{"name": "fake", "cluster": {"server": fake.host}}],
                        "users": [{"name": "me", "user": {"token": "t"}}],
                        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
                        "current-context": "fake",
                    }
                )
            )
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
            code = cli.main(["submit", str(job), "--namespace", NS, "--poll-s", "0"])
        assert code == expected, capsys.readouterr().err
        methods = [(c.method, c.path.rsplit("/", 1)[-1]) for c in fake.calls]
        assert methods[:2] == [("PUT", "dimflow-spec"), ("POST", "configmaps")]  # the submitted spec first
        spec_map = fake.config_maps["dimflow-spec"]
        assert spec_map["data"]["job.yaml"] == job.read_text()  # exactly the submitted spec, not a merge
        design, paint = sorted(fake.jobs)
        assert design.startswith("dimflow-design-") and paint.startswith("dimflow-paint-")
        assert design.removeprefix("dimflow-design-") == paint.removeprefix("dimflow-paint-")  # one run id
        assert fake.jobs[paint]["spec"]["completionMode"] == "Indexed"
        text = capsys.readouterr().err
        assert ("finished" in text) if expected == 0 else ("BackoffLimitExceeded" in text)
