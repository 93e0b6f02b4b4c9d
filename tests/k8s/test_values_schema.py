"""values.schema.json: strict (unknown keys are errors) and its messages name the bad value."""

from __future__ import annotations

import helm_python as helm
import pytest

from pipeline.spec import JobSpec
from tests.k8s import support

BAD_VALUES = [
    ({"paint": {"shards": 0}}, "at '/paint/shards': minimum: got 0, want 1"),
    ({"paint": {"gpusPerPod": 0}}, "at '/paint/gpusPerPod': minimum: got 0, want 1"),
    ({"paint": {"gpus": 1}}, "at '/paint': additional properties 'gpus' not allowed"),
    ({"replicaCount": 3}, "at '': additional properties 'replicaCount' not allowed"),
    ({"apiKey": {"existingSecret": ""}}, "at '/apiKey/existingSecret': minLength: got 0, want 1"),
    ({"images": {"cpu": {"pullPolicy": "Sometimes"}}}, "at '/images/cpu/pullPolicy'"),
    ({"images": {"cuda": {"digest": "sha256:abc"}}}, "at '/images/cuda/digest'"),
    ({"jobSpec": {"nmae": "typo"}}, "at '/jobSpec': additional properties 'nmae' not allowed"),
    ({"jobSpec": {"name": "Bulk_Edit"}}, "at '/jobSpec/name': 'Bulk_Edit' does not match pattern"),
    (
        {"jobSpec": {"designer": {"api_key_env": "MY-KEY"}}},
        "at '/jobSpec/designer/api_key_env': 'MY-KEY' does not match",
    ),
    ({"cronJob": {"schedule": "nightly"}}, "at '/cronJob/schedule': 'nightly' does not match pattern"),
    (
        {"cronJob": {"jobSpec": {"incremental": "yes"}}},
        "at '/cronJob/jobSpec/incremental': got string, want boolean",
    ),
    (
        {"design": {"resources": {"limits": {"memory": None}}}},
        "at '/design/resources/limits': missing property 'memory'",
    ),
    ({"networkPolicy": {"httpsEgress": [{"cidr": "everywhere"}]}}, "at '/networkPolicy/httpsEgress/0/cidr'"),
    ({"flink": {"flinkVersion": "v1_18"}}, "at '/flink/flinkVersion'"),
    ({"kueue": {"queueName": "GPU queue"}}, "at '/kueue/queueName'"),
    ({"podSecurityContext": {"runAsUser": 0}}, "at '/podSecurityContext/runAsUser': minimum: got 0, want 1"),
    ({"paint": {"tolerations": [{"key": "x", "operator": "Maybe"}]}}, "at '/paint/tolerations/0/operator'"),
    ({"submitOnInstall": "true"}, "at '/submitOnInstall': got string, want boolean"),
]


@pytest.mark.parametrize(
    ("values", "message"), BAD_VALUES, ids=[m.split("'")[1] or "top" for _, m in BAD_VALUES]
)
def test_schema_rejects_bad_values_clearly(values, message):
    with pytest.raises(helm.HelmValuesError) as caught:
        support.render(values)
    assert message in str(caught.value), str(caught.value)
    assert "values don't meet the specifications of the schema" in str(caught.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"images": {"cpu": {"tag": "latest"}}}, 'image dimflow: tag "latest" is not allowed'),
        ({"images": {"cuda": {"tag": "latest"}}}, 'image dimflow-cuda: tag "latest" is not allowed'),
        ({"paint": {"maxFailedIndexes": 9}}, "paint.maxFailedIndexes (9) must not exceed paint.shards (4)"),
    ],
)
def test_render_refuses_what_the_schema_cannot_express(values, message):
    with pytest.raises(helm.HelmRenderError) as caught:
        support.render(values)
    assert message in str(caught.value)


def test_digest_pins_the_image():
    digest = "sha256:" + "ab" * 32
    docs = support.objects(support.render({"images": {"cuda": {"digest": digest}}}))
    paint = next(j for j in support.embedded_jobs(docs) if j["metadata"]["name"] == "dimflow-paint")
    assert paint["spec"]["template"]["spec"]["containers"][0]["image"] == f"dimflow-cuda@{digest}"


def test_every_value_set_passes_the_schema():
    for values in support.VALUE_SETS.values():
        support.chart().validate_schema(support.chart().merge_values(values))


def test_schema_is_strict_everywhere():
    """Every object in the schema that lists properties forbids others (jobSpec sections excepted:
    dimflow validates those itself and refuses unknown keys with exit code 2)."""
    loose = []

    def walk(node, path):
        if isinstance(node, dict):
            if (
                "properties" in node
                and node.get("type") == "object"
                and node.get("additionalProperties") is not False
            ):
                loose.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(support.chart().schema, "")
    assert loose == ["/$defs/jobSpec/properties/designer", "/$defs/jobSpec/properties/judge"], loose


def test_schema_knows_every_job_spec_key():
    """The chart's jobSpec keys follow pipeline.spec.JobSpec (a new spec field must be added there)."""
    schema_keys = set(support.chart().schema["$defs"]["jobSpec"]["properties"])
    assert schema_keys == set(JobSpec.model_fields)
