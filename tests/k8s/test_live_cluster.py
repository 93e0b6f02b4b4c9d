"""Opt-in: server-side dry-run create of the rendered objects on a real cluster.

    DIMFLOW_LIVE_K8S=1 [DIMFLOW_LIVE_K8S_NAMESPACE=dimflow-test] .venv/bin/python -m pytest tests/k8s -k live

Uses the kubeconfig from the environment (KUBECONFIG or ~/.kube/config). Nothing is persisted
(dryRun=All); the namespace must exist. The FlinkDeployment is tried only where its CRD is installed.
"""

from __future__ import annotations

import os

import pytest

from tests.k8s import support

pytestmark = pytest.mark.skipif(
    os.environ.get("DIMFLOW_LIVE_K8S") != "1",
    reason="live cluster test: set DIMFLOW_LIVE_K8S=1 (uses your kubeconfig)",
)


def test_server_side_dry_run_create():
    from kubernetes import client, config, dynamic
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    config.load_kube_config()
    namespace = os.environ.get("DIMFLOW_LIVE_K8S_NAMESPACE", "default")
    api = dynamic.DynamicClient(client.ApiClient())
    text = support.chart().render(support.VALUE_SETS["all"], name="dimflow-livetest", namespace=namespace)
    docs = support.objects(text)
    docs += [support.strip_test_marks(job) for job in support.embedded_jobs(docs)]
    created, errors = [], []
    for doc in docs:
        try:
            resource = api.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        except ResourceNotFoundError:
            assert doc["kind"] == "FlinkDeployment", doc["kind"]
            continue
        try:
            resource.create(
                body=doc, namespace=namespace, dry_run="All", query_params=[("fieldValidation", "Strict")]
            )
            created.append(f"{doc['kind']}/{doc['metadata']['name']}")
        except ApiException as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.status} {exc.body}")
    assert not errors, "\n".join(errors)
    assert len(created) >= 15
