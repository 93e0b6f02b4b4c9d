"""The ``dimflow`` command line: ``run`` a job, ``validate`` a manifest, ``status`` and ``report`` of outputs,
``eval`` a painter on a benchmark, ``submit`` to Kubernetes.

Exit codes: 0 the run finished (rows may still have failed: see the summary and provenance),
1 the run itself failed, 2 bad spec, manifest path or arguments (nothing was processed).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from rich.console import Console
from rich.table import Table

from pipeline import interrupt
from pipeline.execute import (  # noqa: F401 - tiny_warning, TINY_MODELS: part of this module's API
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_RUN_FAILED,
    TINY_MODELS,
    execute,
    labelled,
    tiny_warning,
)
from pipeline.terminal import text
from transforms.records import STATUSES


def _split_beam_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1 :]
    return argv, []


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dimflow", description="Bulk image editing with DIM-4.6B on Beam.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run a job spec (arguments after -- go to Beam)")
    run.add_argument("spec", help="job spec YAML, e.g. jobs/demo.yaml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set painter.steps=10 (repeatable)",
    )
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    run.add_argument(
        "--shard-index",
        type=int,
        help="this process's shard (default: $JOB_COMPLETION_INDEX, set by Kubernetes Indexed Jobs)",
    )
    run.add_argument("--num-shards", type=int, help="how many shards (default: $DIMFLOW_NUM_SHARDS)")
    run.add_argument(
        "--run-id",
        default=os.environ.get("DIMFLOW_RUN_ID") or None,
        help="use this run id (shards of one job must share it; default: $DIMFLOW_RUN_ID, else a new one)",
    )
    run.add_argument(
        "--stage",
        choices=("all", "design", "paint"),
        help="run only the design half (writes the blueprint table) or only the paint half (reads it); "
        "same as --set stage=...",
    )

    submit = verbs.add_parser(
        "submit", help="run a job on Kubernetes: the design Job (CPU), then the Indexed paint Job (GPU)"
    )
    submit.add_argument("spec", nargs="?", help="job spec YAML (not with --in-cluster)")
    submit.add_argument("--release", default="dimflow", help="Helm release name the chart is rendered with")
    submit.add_argument("--namespace", help="namespace (default: the pod's own in-cluster, else 'default')")
    submit.add_argument("--chart", help="chart folder (default: helm/dimflow of this checkout)")
    submit.add_argument(
        "-f", "--values", action="append", default=[], metavar="FILE", help="chart values file (repeatable)"
    )
    submit.add_argument(
        "--dry-run", action="store_true", help="print the objects it would create; no API calls"
    )
    submit.add_argument(
        "--in-cluster",
        action="store_true",
        help="use the pod's service account and read the Jobs from --jobs-configmap (what the CronJob does)",
    )
    submit.add_argument("--jobs-configmap", help="ConfigMap holding design-job.yaml and paint-job.yaml")
    submit.add_argument("--context", help="kubeconfig context (default: the current one)")
    submit.add_argument("--poll-s", type=float, default=10.0, help="seconds between Job status reads")
    submit.add_argument("--timeout-s", type=float, help="give up waiting on a Job after this many seconds")

    status = verbs.add_parser("status", help="the latest state of every id across all runs under an output")
    status.add_argument("output", help="the job's output root (local or gs://)")
    status.add_argument("--status", choices=STATUSES, help="list only ids in this state")
    status.add_argument("--show", type=int, default=20, help="list at most this many ids")
    status.add_argument("--parquet", metavar="PATH", help="also write the whole latest-per-id table here")

    report = verbs.add_parser("report", help="what a run did: status, failures, throughput, latency, cost")
    report.add_argument("output", help="the job's output root (local or gs://)")
    report.add_argument("--run", dest="run_id", help="run id (default: the newest run)")
    report.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    report.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report here")
    report.add_argument("--max-pairs", type=int, default=48, help="before/after pairs per HTML page")
    report.add_argument("--page", type=int, default=1, help="which page of before/after pairs")
    report.add_argument(
        "--sort",
        choices=("id", "score"),
        default="id",
        help="order of the HTML cards: by id (default), or by judge_overall, worst first (unjudged last)",
    )

    from pipeline.eval_cli import add_parser as add_eval_parser

    add_eval_parser(verbs)

    validate = verbs.add_parser(
        "validate", help="check a manifest without running any model (same reading, limits and rules as run)"
    )
    validate.add_argument(
        "manifest", nargs="?", help="manifest path or glob (local or gs://); default: the --spec's manifest"
    )
    validate.add_argument(
        "--spec",
        metavar="JOB.yaml",
        help="take the manifest (when not given) and every limits.* from this job spec",
    )
    validate.add_argument(
        "--max-instruction-chars",
        type=int,
        help="override limits.max_instruction_chars (default: the spec's, else 4000)",
    )
    validate.add_argument("--show", type=int, default=50, help="list at most this many problems")
    return parser


def _cmd_run(args: argparse.Namespace, beam_args: list[str], console: Console) -> int:
    from pipeline.spec import SpecError, load_spec
    from transforms.shards import shard_from_env

    try:
        overrides = list(args.overrides) + ([f"stage={args.stage}"] if args.stage else [])
        spec = load_spec(args.spec, overrides)
    except SpecError as exc:
        console.print(labelled("error:", exc, keep_newlines=True))
        return EXIT_BAD_INPUT
    try:
        shard = shard_from_env(args.shard_index, args.num_shards)
    except ValueError as exc:
        console.print(labelled("error:", exc, keep_newlines=True))
        return EXIT_BAD_INPUT
    result = execute(
        spec, beam_args, console, show_progress=not args.no_progress, run_id=args.run_id, shard=shard
    )
    return result if isinstance(result, int) else EXIT_OK


def _validate_inputs(args: argparse.Namespace):
    """(manifest, LimitsSpec, the job's row check) from --spec / the positional manifest /
    --max-instruction-chars; with --spec, rows are also checked as the job will (painter checkpoints for
    their mode, sources outside the output).

    SpecError (a ValueError) when they do not make a usable pair.
    """
    from pipeline.spec import LimitsSpec, SpecError, load_spec

    job_check = None
    if args.spec:
        from pipeline.edit import job_row_problem

        spec = load_spec(args.spec)
        manifest, limits = args.manifest or spec.manifest, spec.limits
        job_check = functools.partial(
            job_row_problem, checkpoints=spec.painter.checkpoints(), output=spec.output
        )
    elif args.manifest:
        manifest, limits = args.manifest, LimitsSpec()
    else:
        raise SpecError("validate needs a manifest path or glob, or --spec JOB.yaml")
    if args.max_instruction_chars is not None:
        try:
            limits = LimitsSpec.model_validate(
                {**limits.model_dump(), "max_instruction_chars": args.max_instruction_chars}
            )
        except ValueError as exc:  # pydantic's ValidationError
            raise SpecError(f"--max-instruction-chars: {exc.errors()[0]['msg']}") from None
    return manifest, limits, job_check


def _cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from pipeline.preflight import check_manifest
    from transforms.manifest import validate_manifest

    try:
        manifest, limits, job_check = _validate_inputs(args)
        check_manifest(manifest, limits.manifest_limits(), limits.fetch_timeout_s)  # bounded, on storage
        report = validate_manifest(manifest, limits.manifest_limits(), job_check, max_problems=args.show)
    except (ValueError, FileNotFoundError, OSError) as exc:
        console.print(labelled("error:", exc, keep_newlines=True))
        return EXIT_BAD_INPUT
    console.print(
        text(f"{manifest}: {report.rows} rows, {report.valid} valid, {report.failed} with problems")
    )
    if report.problems:
        table = Table(title="problems", title_justify="left")
        for column in ("row", "id", "field", "message"):
            table.add_column(column, overflow="fold")
        for problem in report.problems[: args.show]:
            table.add_row(text(problem.ref), text(problem.id), text(problem.field), text(problem.message))
        console.print(table)
        if report.problem_count > len(report.problems):
            console.print(text(f"... and {report.problem_count - len(report.problems)} more"))
    return EXIT_OK if report.failed == 0 else EXIT_BAD_INPUT


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    import json

    from pipeline.progress import summary_table
    from pipeline.report import build_report, license_line

    try:
        report, run_table = build_report(args.output, args.run_id)
    except (OSError, ValueError) as exc:
        console.print(labelled("error:", exc))
        return EXIT_BAD_INPUT
    _warn_skipped(console, [f"{s['path']}: {s['reason']}" for s in report.skipped_files])
    if args.html:
        from apache_beam.io.filesystems import FileSystems

        from pipeline.report_html import render_html

        page = render_html(report, run_table, max_pairs=args.max_pairs, page=args.page, sort=args.sort)
        with FileSystems.create(args.html, mime_type="text/html") as handle:
            handle.write(page.encode("utf-8"))
    if args.json:
        print(json.dumps(report.as_json(), sort_keys=True))
        return EXIT_OK
    console.print(summary_table(f"run {report.run_id}", report.by_status, report.wall_s))
    figures = Table(title="figures", title_justify="left")
    figures.add_column("")
    figures.add_column("design", justify="right")
    figures.add_column("paint", justify="right")
    for label, key in (("rows", "rows"), ("rows / wall hour", "rows_per_hour"), ("busy seconds", "busy_s")):
        figures.add_row(label, *(_fmt(report.stages[s][key]) for s in ("design", "paint")))
    for q in ("p50", "p90", "p99", "max"):
        figures.add_row(f"latency {q} (s)", *(_fmt(report.latency_s[s][q]) for s in ("design", "paint")))
    console.print(figures)
    cost = "n/a (no price for a designer in the spec)" if report.cost is None else f"${report.cost:,.4f}"
    console.print(
        f"rows/hour {_fmt(report.rows_per_hour)}; designer tokens {report.tokens_in:,} in / {report.tokens_out:,} out, "
        f"estimated cost {cost}; retried rows {report.retried_rows:,} ({report.retries:,} retries); "
        f"skipped {report.by_status['skipped']:,}",
        highlight=False,
    )
    if report.painter_licenses:
        licenses = Table(title="painter licenses", title_justify="left")
        for column in ("license", "use", "rows"):
            licenses.add_column(column, overflow="fold")
        for entry in report.painter_licenses:
            name, use = license_line(entry)
            licenses.add_row(text(name), use, f"{entry['rows']:,}")
        console.print(licenses)
    if report.failures_by_kind:
        kinds = Table(title="failures by stage and kind", title_justify="left")
        for column in ("stage", "error kind", "rows"):
            kinds.add_column(column, overflow="fold")
        for kind in report.failures_by_kind[:20]:
            kinds.add_row(text(kind["stage"]), text(kind["kind"]), f"{kind['rows']:,}")
        console.print(kinds)
    if report.judge:
        _print_judge(report.judge, console)
    if report.previous:
        prev = report.previous
        console.print(
            text(
                f"previous run {prev['run_id']}: {prev['rows']:,} rows ("
                + ", ".join(f"{n:,} {status}" for status, n in prev["by_status"].items())
                + f"), {_fmt(prev['rows_per_hour'])} rows/hour"
            )
        )
    if args.html:
        console.print(text(f"html report: {args.html}"))
    return EXIT_OK


def _print_judge(judge: dict, console: Console) -> None:
    """The judge's part of `dimflow report` (pipeline/report_judge.py) as text."""
    from pipeline.eval import NO_CATEGORY
    from pipeline.report_judge import bar_lines

    cost = "n/a (no price for a judge in the spec)" if judge["cost"] is None else f"${judge['cost']:,.4f}"
    console.print(
        text(
            f"judge {', '.join(judge['judges']) or '-'}: {judge['judged_rows']:,} rows judged, "
            f"{judge['judge_errors']:,} judge errors, {judge['judge_calls']:,} calls; tokens "
            f"{judge['tokens_in']:,} in / {judge['tokens_out']:,} out, estimated cost {cost}"
        )
    )
    console.print(text("judge_overall distribution (judged rows):"))
    for line in bar_lines(judge["histogram"]):
        console.print(text(line), soft_wrap=True)
    means = Table(title="mean scores (judged rows; criteria 0-10, overall 0-1)", title_justify="left")
    for column in (
        "category",
        "judged",
        "instruction following",
        "visual quality",
        "preservation",
        "overall",
    ):
        means.add_column(column, justify="left" if column == "category" else "right", overflow="fold")
    for line in judge["by_category"]:
        means.add_row(
            text(line["category"] or NO_CATEGORY),
            f"{line['judged']:,} / {line['rows']:,}",
            *(_fmt(line[name]) for name in ("instruction_following", "visual_quality", "preservation")),
            _score(line["judge_overall"]),
        )
    if judge["by_category"]:
        means.add_section()
    overall = judge["means"]
    means.add_row(
        "all rows",
        f"{judge['judged_rows']:,}",
        *(_fmt(overall[name]) for name in ("instruction_following", "visual_quality", "preservation")),
        _score(overall["judge_overall"]),
    )
    console.print(means)
    paints = ", ".join(f"{n} paint(s): {rows:,} rows" for n, rows in judge["paints_per_row"].items())
    console.print(text(f"paints per row: {paints or '-'}"))
    if judge["rejected_rows"]:
        shown = judge["rejected_ids"]
        more = judge["rejected_rows"] - len(shown)
        console.print(
            text(
                f"rejected rows to review ({judge['rejected_rows']:,}): {', '.join(shown)}"
                + (f" ... and {more:,} more (dimflow status OUTPUT --status rejected)" if more else "")
            )
        )


def _score(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _warn_skipped(console: Console, lines: list[str]) -> None:
    """One warning line per file that was not read (the figures are of the rest)."""
    for line in lines:
        console.print(labelled("warning:", f"skipped {line}", style="yellow"), soft_wrap=True)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def _cmd_status(args: argparse.Namespace, console: Console) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.status import read_latest

    skipped: list = []
    try:
        latest = read_latest(args.output, skipped=skipped)
    except (OSError, ValueError) as exc:
        console.print(labelled("error:", exc))
        return EXIT_BAD_INPUT
    _warn_skipped(console, [str(item) for item in skipped])
    if latest.num_rows == 0:
        console.print(text(f"no provenance under {args.output}"))
        return EXIT_BAD_INPUT
    counts = {s: int(pc.sum(pc.equal(latest.column("status"), s)).as_py() or 0) for s in STATUSES}
    current = latest.num_rows - latest.column("current_output_uri").null_count
    console.print(
        text(
            f"{args.output}: {latest.num_rows} ids; latest state: {counts['ok']} ok, {counts['skipped']} "
            f"skipped (already rendered), "
            + (  # only where there are some: outputs of jobs without a judge never have any
                f"{counts['rejected']} rejected (below quality.min_overall: review their images), "
                if counts["rejected"]
                else ""
            )
            + f"{counts['failed']} failed; {current} have a current image"
        )
    )
    shown = latest if not args.status else latest.filter(pc.equal(latest.column("status"), args.status))
    table = Table(
        title=f"ids{f' ({args.status})' if args.status else ''}, first {args.show}", title_justify="left"
    )
    for column in ("id", "status", "run", "current image / image to review / error"):
        table.add_column(column, overflow="fold")
    for row in shown.slice(0, args.show).to_pylist():
        if row["status"] == "failed":
            detail = f"{row['error_stage']}: {row['error']}"
        elif row["status"] == "rejected":  # its image is not the id's current one: it awaits a person
            detail = f"to review: {row['latest_output_uri']}"
        else:
            detail = row["current_output_uri"]
        table.add_row(text(row["id"]), text(row["status"]), text(row["run_id"]), text(detail))
    console.print(table)
    if args.parquet:
        pq.write_table(latest, args.parquet)
        console.print(text(f"wrote {latest.num_rows} rows to {args.parquet}"))
    return EXIT_OK


def _console() -> Console:
    """A stderr console; when stderr is a log file or pipe, lines are not wrapped at 80 columns."""
    if sys.stderr.isatty():
        return Console(stderr=True)
    return Console(stderr=True, width=int(os.environ.get("COLUMNS", "200")), soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    own, beam_args = _split_beam_args(argv)
    args = _parser().parse_args(own)
    console = _console()
    if args.verb == "run":
        return _cmd_run(args, beam_args, console)
    if args.verb == "eval":
        from pipeline.eval_cli import cmd_eval

        return cmd_eval(args, beam_args, console)
    if args.verb == "report" and not beam_args:
        return _cmd_report(args, console)
    if args.verb == "status" and not beam_args:
        return _cmd_status(args, console)
    if args.verb == "submit" and not beam_args:
        from pipeline.submit_cli import cmd_submit

        return cmd_submit(args, console)
    if beam_args:
        console.print(labelled("error:", "arguments after -- are only for 'run'"))
        return EXIT_BAD_INPUT
    return _cmd_validate(args, console)


def console_main() -> int:
    """The ``dimflow`` command: ``main`` with Ctrl-C / SIGTERM handled as one line and exit 130 / 143."""
    interrupt.install(
        "stopped. What was finished is kept (images, the design journal); rerun the same command to "
        "complete the job (with incremental: true, rendered rows are skipped)."
    )
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
