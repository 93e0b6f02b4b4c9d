"""Every rendered object, and the Job manifests embedded in the jobs ConfigMaps, against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors) for each
supported Kubernetes version; the FlinkDeployment against the operator's CRD."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s import support
from tests.k8s.conftest import rendered


def _unique_objects() -> list[dict]:
    """All objects of all value sets (embedded Jobs included), each distinct one once."""
    seen: dict[str, dict] = {}
    for name in sorted(support.VALUE_SETS):
        render = rendered(name)
        for doc in render.docs + [support.strip_test_marks(job) for job in render.jobs]:
            seen.setdefault(support.canonical(doc), doc)
    return list(seen.values())


def _describe(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("version", support.KUBE_VERSIONS)
def test_objects_are_valid_kubernetes(version):
    errors = []
    checked = 0
    for doc in _unique_objects():
        if doc["kind"] == "FlinkDeployment":
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.absolute_path)
            errors.append(f"{_describe(doc)} at {path}: {exc.message}")
    assert not errors, "\n".join(errors)
    kinds_checked = {doc["kind"] for doc in _unique_objects()} - {"FlinkDeployment"}
    assert kinds_checked == {
        "ConfigMap",
        "CronJob",
        "Job",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    assert checked > 20


def test_strict_validation_catches_unknown_fields():
    """The validator really is strict: a misspelt field in a Job's pod spec is an error."""
    job = copy.deepcopy(next(j for j in rendered("default").jobs if j["metadata"]["name"] == "dimflow-paint"))
    job = support.strip_test_marks(job)
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(job, "1.34", strict=True)


@pytest.fixture(scope="module")
def flink_crd_schema() -> dict:
    path = support.flink_crd_path()
    if path is None:
        pytest.skip(
            f"no FlinkDeployment CRD to validate against: set {support.CRD_ENV} to the Flink Kubernetes "
            "Operator's flinkdeployments.flink.apache.org-v1.yml (README, Tests)"
        )
    assert path.is_file(), f"{support.CRD_ENV}={path}: no such file"
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


def _unknown_fields(obj, schema, path="") -> list[str]:
    """Fields the API server would prune: not in ``properties`` of a schema that neither preserves
    unknown fields nor allows additional properties (structural-schema pruning, done by hand)."""
    found = []
    if isinstance(obj, dict) and isinstance(schema, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        props = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                found += _unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(additional, dict):
                found += _unknown_fields(value, additional, f"{path}.{key}")
            elif additional is not True and not (path == "" and key in ("apiVersion", "kind", "metadata")):
                found.append(f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema, dict) and "items" in schema:
        for index, value in enumerate(obj):
            found += _unknown_fields(value, schema["items"], f"{path}[{index}]")
    return found


def _flink_deployments():
    return [d for d in rendered("flink").docs + rendered("all").docs if d["kind"] == "FlinkDeployment"]


def test_flink_deployment_matches_the_crd(flink_crd_schema):
    deployments = _flink_deployments()
    assert len(deployments) == 2
    for deployment in deployments:
        jsonschema.Draft7Validator(flink_crd_schema).validate(deployment)
        assert _unknown_fields(deployment, flink_crd_schema) == []


def test_flink_crd_check_catches_mistakes(flink_crd_schema):
    deployment = copy.deepcopy(_flink_deployments()[0])
    deployment["spec"]["flinkVersion"] = "v9_9"
    with pytest.raises(jsonschema.ValidationError, match="v9_9"):
        jsonschema.Draft7Validator(flink_crd_schema).validate(deployment)
    deployment = copy.deepcopy(_flink_deployments()[0])
    deployment["spec"]["taskManager"]["replica"] = 2
    assert _unknown_fields(deployment, flink_crd_schema) == [".spec.taskManager.replica"]


@pytest.mark.parametrize("version", support.KUBE_VERSIONS)
def test_flink_pod_templates_are_valid_pods(version):
    """The FlinkDeployment's pod templates are core PodTemplateSpecs: validate them strictly too."""
    for deployment in _flink_deployments():
        for where, _ in support.pod_specs(deployment):
            template = deployment["spec"]
            for part in where.split(".")[:-1]:
                template = template[part]
            template = template["podTemplate"]
            kubernetes_validate.validate(
                {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
                version,
                strict=True,
            )
