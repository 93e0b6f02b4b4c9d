"""checkov (Kubernetes framework) on the rendered manifests, the embedded Job manifests included:
zero failed checks; every skip is annotated in the chart with its reason, and is needed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s import support
from tests.k8s.conftest import rendered

CHECKOV = support.REPO / ".venv-tools" / "bin" / "checkov"
# The skips the chart carries (checkov.io/skipN annotations, each with its reason in the chart).
ALLOWED_SKIPS = {
    "CKV_K8S_21",  # embedded Jobs: the namespace is chosen by `dimflow submit --namespace`
    "CKV_K8S_35",  # the designer SDK reads its API key from an env var (a secretKeyRef)
    "CKV_K8S_38",  # the orchestrator calls the Kubernetes API: it needs its token
    "CKV_K8S_43",  # fixed release tags + imagePullPolicy Always; digests optional (images.*.digest)
}


def _checkov() -> Path:
    if not os.access(CHECKOV, os.X_OK):
        pytest.fail(
            f"checkov is not installed at {CHECKOV.relative_to(support.REPO)}: run `make tools` "
            "(it lives in its own venv because its pins clash with ours)"
        )
    return CHECKOV


def test_missing_checkov_fails_clearly(monkeypatch):
    monkeypatch.setattr(f"{__name__}.CHECKOV", support.REPO / ".venv-tools" / "bin" / "no-such-checkov")
    with pytest.raises(pytest.fail.Exception, match="run `make tools`"):
        _checkov()


def _write(folder: Path, strip_skips: bool = False) -> int:
    """The defaults and the everything-on value set, one object per file."""
    folder.mkdir()
    count = 0
    for name in ("default", "all"):
        render = rendered(name)
        # Copies: stripping skips must not touch the session's cached render other tests read.
        docs = [copy.deepcopy(d) for d in render.docs] + [support.strip_test_marks(j) for j in render.jobs]
        for index, doc in enumerate(docs):
            if strip_skips:
                annotations = doc.get("metadata", {}).get("annotations", {})
                for key in [k for k in annotations if k.startswith("checkov.io/skip")]:
                    del annotations[key]
            path = folder / f"{name}-{index:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            count += 1
    return count


def _scan(folder: Path) -> dict:
    result = subprocess.run(
        [str(_checkov()), "-d", str(folder), "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert result.stdout.strip(), (
        f"checkov printed nothing (exit {result.returncode}):\n{result.stderr[-3000:]}"
    )
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> tuple[dict, dict, int]:
    root = tmp_path_factory.mktemp("checkov")
    count = _write(root / "chart")
    _write(root / "no-skips", strip_skips=True)
    return _scan(root / "chart"), _scan(root / "no-skips"), count


def test_checkov_has_no_failed_checks(scans):
    report, _, count = scans
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['check_name']} on {c['resource']} ({c['file_path']})"
        for c in report["results"]["failed_checks"]
    ]
    assert summary["failed"] == 0, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert (
        summary["resource_count"] >= count - 2
    )  # the FlinkDeployments are not Kubernetes kinds checkov knows
    assert summary["passed"] > 500


def test_every_skip_is_justified_and_needed(scans):
    report, unskipped, _ = scans
    skipped = report["results"]["skipped_checks"]
    assert skipped, "expected the chart's documented skips"
    for check in skipped:
        assert check["check_id"] in ALLOWED_SKIPS, check["check_id"]
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check
    # Without the annotations exactly the skipped checks fail: no skip hides anything else, none is idle.
    assert _pairs(unskipped["results"]["failed_checks"]) == _pairs(skipped)


def _pairs(checks: list[dict]) -> list[tuple[str, str]]:
    return sorted((check["check_id"], check["resource"]) for check in checks)


def test_chart_comments_every_skip():
    """Each skip annotation in the templates sits under a comment or carries its reason."""
    for path in sorted((support.CHART / "templates").glob("*")):
        for line in path.read_text().splitlines():
            if "checkov.io/skip" in line:
                check, _, reason = line.split(":", 1)[1].strip().partition("=")
                assert check in ALLOWED_SKIPS and len(reason) > 20, f"{path.name}: {line.strip()}"
