"""`dimflow submit`: run a job on Kubernetes as a design Job, then an Indexed paint Job.

The Job manifests come from the Helm chart (rendered locally, or read from the chart's jobs ConfigMap
when running in the cluster, as the CronJob does), so the chart stays the one description of the
objects; this module only orders them: the CPU design Job runs to completion first, so the GPU pods
never idle waiting on the designer, then the paint Job's shards run. Both Jobs of a submission share
one run id (``DIMFLOW_RUN_ID``), so the blueprint table and the provenance land under the same
``run={run_id}``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from pipeline.terminal import printable

DESIGN_KEY, PAINT_KEY, SPEC_KEY = "design-job.yaml", "paint-job.yaml", "job.yaml"
CONTAINER = "dimflow"
RUN_LABEL = "dimflow.io/run-id"
LOG_LINES = 30


class SubmitError(RuntimeError):
    """The submission itself cannot go on (bad templates, API refusal); exit code 2."""


@dataclass(frozen=True)
class JobTemplates:
    design: dict[str, Any]
    paint: dict[str, Any]
    spec_configmap: dict[str, Any] | None = None  # created/replaced before the Jobs when given


@dataclass(frozen=True)
class JobOutcome:
    name: str
    succeeded: bool
    summary: str  # one line: counts, or the failure reason


def templates_from_configmap(core: Any, namespace: str, name: str) -> JobTemplates:
    """The Job manifests the chart stored in ConfigMap ``name`` (the in-cluster path)."""
    import yaml

    config_map = core.read_namespaced_config_map(name, namespace)
    data = config_map.data or {}
    missing = [key for key in (DESIGN_KEY, PAINT_KEY) if key not in data]
    if missing:
        raise SubmitError(
            f"ConfigMap {namespace}/{name} lacks key(s) {missing}; was it made by the dimflow chart?"
        )
    return JobTemplates(design=yaml.safe_load(data[DESIGN_KEY]), paint=yaml.safe_load(data[PAINT_KEY]))


def templates_from_objects(objects: list[dict[str, Any]]) -> JobTemplates:
    """Pick the spec ConfigMap and the Job manifests out of the chart's rendered objects."""
    import yaml

    spec_map = jobs_map = None
    for obj in objects:
        data = obj.get("data") or {}
        if obj.get("kind") != "ConfigMap":
            continue
        if DESIGN_KEY in data and PAINT_KEY in data and jobs_map is None:
            jobs_map = obj
        elif SPEC_KEY in data and spec_map is None:
            spec_map = obj
    if jobs_map is None or spec_map is None:
        raise SubmitError(
            f"the chart rendered no ConfigMap with {DESIGN_KEY}/{PAINT_KEY} and one with {SPEC_KEY}; "
            "is this the dimflow chart?"
        )
    data = jobs_map["data"]
    return JobTemplates(
        design=yaml.safe_load(data[DESIGN_KEY]),
        paint=yaml.safe_load(data[PAINT_KEY]),
        spec_configmap=spec_map,
    )


def instantiate(template: dict[str, Any], run_id: str) -> dict[str, Any]:
    """A Job for this submission: unique name, run-id label, and ``DIMFLOW_RUN_ID`` in its container."""
    job = copy.deepcopy(template)
    if job.get("kind") != "Job":
        raise SubmitError(f"expected a Job manifest, got kind={job.get('kind')!r}")
    metadata = job.setdefault("metadata", {})
    base = metadata.pop("generateName", None) or metadata.get("name")
    if not base:
        raise SubmitError("Job manifest has no metadata.name")
    metadata["name"] = f"{base.rstrip('-')}-{run_id}"[:63].rstrip("-.")
    metadata.setdefault("labels", {})[RUN_LABEL] = run_id
    pod = job["spec"]["template"]
    pod.setdefault("metadata", {}).setdefault("labels", {})[RUN_LABEL] = run_id
    containers = [c for c in pod["spec"]["containers"] if c.get("name") == CONTAINER]
    if not containers:
        raise SubmitError(f"Job {base} has no container named {CONTAINER!r}")
    for container in containers:
        env = [e for e in container.get("env", []) if e.get("name") != "DIMFLOW_RUN_ID"]
        container["env"] = [*env, {"name": "DIMFLOW_RUN_ID", "value": run_id}]
    return job


def job_state(status: Any) -> tuple[str, str]:
    """('running' | 'complete' | 'failed', one-line summary) from a V1JobStatus."""
    conditions = {c.type: c for c in (status.conditions or []) if c.status == "True"}
    counts = f"{status.succeeded or 0} succeeded, {status.failed or 0} failed, {status.active or 0} active"
    if status.failed_indexes:
        counts += f", failed indexes {status.failed_indexes}"
    if "Failed" in conditions:
        failed = conditions["Failed"]
        return "failed", f"{counts}; {failed.reason or 'Failed'}: {failed.message or 'no message'}"
    if "Complete" in conditions:
        return "complete", counts
    return "running", counts


class Submitter:
    """Creates the submission's objects in order and waits for each Job, polling its status."""

    def __init__(
        self,
        batch: Any,
        core: Any,
        namespace: str,
        console: Console,
        *,
        poll_s: float = 5.0,
        timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.batch = batch
        self.core = core
        self.namespace = namespace
        self.console = console
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._sleep = sleep

    def run(self, templates: JobTemplates, run_id: str) -> int:
        """0 when both Jobs complete, 1 when one fails or times out (the paint Job is then not created)."""
        if templates.spec_configmap is not None:
            self.apply_config_map(templates.spec_configmap)
        for stage, template in (("design", templates.design), ("paint", templates.paint)):
            job = instantiate(template, run_id)
            name = job["metadata"]["name"]
            self.create_job(job)
            self.console.print(f"{stage}: created Job {self.namespace}/{name}", highlight=False)
            outcome = self.wait(name, stage)
            if not outcome.succeeded:
                self.console.print(
                    f"[red]{stage} Job {name} failed:[/red] {outcome.summary}", highlight=False
                )
                self.show_failed_logs(name)
                if stage == "design":
                    self.console.print("the paint Job was not created (no GPU time spent)", highlight=False)
                return 1
            self.console.print(f"{stage}: Job {name} complete ({outcome.summary})", highlight=False)
        self.console.print(f"run {run_id} finished", highlight=False)
        return 0

    def apply_config_map(self, config_map: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        name = config_map["metadata"]["name"]
        try:
            self.core.replace_namespaced_config_map(name, self.namespace, config_map)
        except ApiException as exc:
            if exc.status != 404:
                raise SubmitError(f"cannot replace ConfigMap {name}: {exc.status} {exc.reason}") from exc
            self.core.create_namespaced_config_map(self.namespace, config_map)

    def create_job(self, job: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.create_namespaced_job(self.namespace, job)
        except ApiException as exc:
            raise SubmitError(
                f"cannot create Job {job['metadata']['name']}: {exc.status} {exc.reason} {exc.body or ''}".strip()
            ) from exc

    def wait(self, name: str, stage: str) -> JobOutcome:
        """Poll until the Job completes or fails; print a line whenever its counts change."""
        started = self._clock()
        last = ""
        while True:
            status = self.batch.read_namespaced_job_status(name, self.namespace).status
            state, summary = job_state(status)
            if summary != last:
                self.console.print(f"{stage}: {summary}", highlight=False)
                last = summary
            if state != "running":
                return JobOutcome(name, state == "complete", summary)
            if self.timeout_s is not None and self._clock() - started > self.timeout_s:
                return JobOutcome(name, False, f"timed out after {self.timeout_s:.0f} s ({summary})")
            self._sleep(self.poll_s)

    def show_failed_logs(self, job_name: str) -> None:
        """The last lines of one failed pod's log: usually the error that matters."""
        from kubernetes.client.exceptions import ApiException

        try:
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}"
            ).items
            failed = [p for p in pods if p.status and p.status.phase == "Failed"]
            if not failed:
                return
            pod = failed[0].metadata.name
            log = self.core.read_namespaced_pod_log(
                pod, self.namespace, container=CONTAINER, tail_lines=LOG_LINES
            )
        except ApiException as exc:
            self.console.print(f"(could not read pod logs: {exc.status} {exc.reason})", highlight=False)
            return
        self.console.print(f"last {LOG_LINES} log lines of pod {pod}:", highlight=False)
        self.console.print(printable(log, keep_newlines=True), highlight=False, markup=False)
