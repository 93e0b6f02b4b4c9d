"""The `dimflow submit` command: gather the Job manifests (chart or ConfigMap) and hand them to Submitter."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml
from rich.console import Console
from rich.text import Text

from pipeline.submit import JobTemplates, SubmitError, Submitter, instantiate, templates_from_configmap
from pipeline.terminal import printable

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def cmd_submit(args: argparse.Namespace, console: Console) -> int:
    from pipeline.run import new_run_id

    try:
        namespace = args.namespace or _default_namespace(args.in_cluster)
        run_id = new_run_id().lower()  # Job names must be lowercase
        if args.in_cluster:
            if args.spec or not args.jobs_configmap:
                raise SubmitError("--in-cluster takes no job spec and needs --jobs-configmap NAME")
            if args.dry_run:
                raise SubmitError(
                    "--dry-run renders the chart locally; it does not combine with --in-cluster"
                )
            batch, core = _clients(in_cluster=True, context=None)
            templates = templates_from_configmap(core, namespace, args.jobs_configmap)
        else:
            if not args.spec:
                raise SubmitError("give a job spec: dimflow submit JOB.yaml")
            templates = _templates_from_chart(args, namespace)
            if args.dry_run:
                _print_objects(templates, run_id)
                return EXIT_OK
            batch, core = _clients(in_cluster=False, context=args.context)
    except (SubmitError, ValueError, OSError) as exc:
        console.print(Text.assemble(("error:", "red"), " ", printable(exc, keep_newlines=True)))
        return EXIT_BAD_INPUT
    submitter = Submitter(batch, core, namespace, console, poll_s=args.poll_s, timeout_s=args.timeout_s)
    try:
        return submitter.run(templates, run_id)
    except SubmitError as exc:
        console.print(Text.assemble(("error:", "red"), " ", printable(exc, keep_newlines=True)))
        return EXIT_BAD_INPUT


def _templates_from_chart(args: argparse.Namespace, namespace: str) -> JobTemplates:
    """Validate the spec locally (errors name the field), then render the chart with it as ``jobSpec``."""
    from pipeline.chart import DEFAULT_CHART, merge_values, render_chart
    from pipeline.spec import SpecError, load_spec
    from pipeline.submit import templates_from_objects

    try:
        load_spec(args.spec)
    except SpecError as exc:
        raise SubmitError(str(exc)) from exc
    job_spec = yaml.safe_load(Path(args.spec).read_text())
    layers = [yaml.safe_load(Path(path).read_text()) or {} for path in args.values]
    values = merge_values(*layers, {"jobSpec": job_spec})
    try:
        objects = render_chart(
            args.chart or DEFAULT_CHART, release=args.release, namespace=namespace, values=values
        )
    except Exception as exc:  # the Helm SDK raises its own error types (bad values, template errors)
        raise SubmitError(f"rendering the chart failed: {type(exc).__name__}: {exc}") from exc
    templates = templates_from_objects(objects)
    # Helm merges values with the chart's default jobSpec key by key; the pods must get exactly the
    # spec that was submitted (and validated above), not a blend.
    assert templates.spec_configmap is not None
    templates.spec_configmap.setdefault("data", {})["job.yaml"] = Path(args.spec).read_text()
    return templates


def _print_objects(templates: JobTemplates, run_id: str) -> None:
    """What submit would create, in order, as one YAML stream on stdout."""
    documents = [templates.spec_configmap] if templates.spec_configmap else []
    documents += [instantiate(templates.design, run_id), instantiate(templates.paint, run_id)]
    print(yaml.safe_dump_all(documents, sort_keys=False), end="")


def _default_namespace(in_cluster: bool) -> str:
    if in_cluster and SA_NAMESPACE.exists():
        return SA_NAMESPACE.read_text().strip()
    return "default"


def _clients(*, in_cluster: bool, context: str | None):
    from kubernetes import client, config

    if in_cluster:
        config.load_incluster_config()
    else:
        # KUBECONFIG read now (the client reads it once, at import); unset: ~/.kube/config
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, context=context)
    return client.BatchV1Api(), client.CoreV1Api()
