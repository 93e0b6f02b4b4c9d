"""`dimflow eval BENCHMARK --spec JOB.yaml`: run a benchmark manifest through the job (designer, painter,
judge) exactly as `dimflow run` does, then print the table papers print (``pipeline.eval``).

The spec's manifest is replaced by the benchmark and its output by a folder named after the benchmark
under the spec's output (``--output`` for another), so an eval never mixes with the spec's own runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re

from rich.console import Console

from pipeline.terminal import text

# what a benchmark's file name may keep in the output folder's name
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_COMPRESSED = (".gz", ".bz2", ".xz", ".lzma", ".zst", ".zstd", ".deflate")


def add_parser(verbs: argparse._SubParsersAction) -> None:
    evaluate = verbs.add_parser(
        "eval",
        help="run a benchmark manifest end to end (designer, painter, judge) and print per-category scores",
    )
    evaluate.add_argument(
        "benchmark",
        help="benchmark manifest (path or glob; ImgEdit-Bench / GEdit-Bench layouts read as they are)",
    )
    evaluate.add_argument("--spec", required=True, metavar="JOB.yaml", help="job spec (needs a judge)")
    evaluate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set judge.model=gpt-4.1 (repeatable)",
    )
    evaluate.add_argument(
        "--output",
        help="output root of the eval run (default: eval-<benchmark name> under the spec's output)",
    )
    formats = evaluate.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print the table as one JSON object (stdout)")
    formats.add_argument("--csv", metavar="PATH", help="also write the table as CSV here")
    evaluate.add_argument(
        "--run-id",
        default=os.environ.get("DIMFLOW_RUN_ID") or None,
        help="use this run id (default: $DIMFLOW_RUN_ID, else a new one)",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no live progress display")


def benchmark_name(benchmark: str) -> str:
    """The name of the folder an eval of ``benchmark`` writes to: its file name without extensions (a glob:
    its folder's name), in safe characters."""
    base = benchmark.rstrip("/").rsplit("/", 1)[-1]
    if any(ch in base for ch in "*?["):
        base = benchmark.rstrip("/").rsplit("/", 2)[-2] if benchmark.count("/") else "benchmark"
    lowered = base.lower()
    for suffix in _COMPRESSED:
        if lowered.endswith(suffix):
            base, lowered = base[: -len(suffix)], lowered[: -len(suffix)]
    base = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    return _UNSAFE.sub("-", base).strip("-.") or "benchmark"


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def eval_spec(spec, benchmark: str, output: str | None):
    """``spec`` with the benchmark as its manifest and the eval's own output."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.spec import JobSpec

    root = _absolute(output) if output else FileSystems.join(spec.output, f"eval-{benchmark_name(benchmark)}")
    return JobSpec.model_validate({**spec.model_dump(), "manifest": _absolute(benchmark), "output": root})


def refusal(spec) -> str | None:
    """Why ``spec`` cannot evaluate a painter, or None."""
    if spec.judge.kind == "none":
        return (
            "dimflow eval needs a judge, and the spec has judge.kind: none. Set judge.kind (openai or local) "
            "and judge.model in the spec, or add --set judge.kind=openai --set judge.model=MODEL"
        )
    if spec.stage == "design":
        return "dimflow eval paints and judges every row; the spec has stage: design (set stage: all)"
    return None


def cmd_eval(args: argparse.Namespace, beam_args: list[str], console: Console) -> int:
    from pipeline import eval as evaluation
    from pipeline.execute import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUN_FAILED, execute, labelled
    from pipeline.run import read_provenance
    from pipeline.spec import SpecError, load_spec

    try:
        spec = eval_spec(load_spec(args.spec, args.overrides), args.benchmark, args.output)
    except (SpecError, ValueError) as exc:
        console.print(labelled("error:", exc, keep_newlines=True))
        return EXIT_BAD_INPUT
    problem = refusal(spec)
    if problem:
        console.print(labelled("error:", problem))
        return EXIT_BAD_INPUT
    console.print(text(f"dimflow eval: {args.benchmark} -> {spec.output}"))
    result = execute(spec, beam_args, console, show_progress=not args.no_progress, run_id=args.run_id)
    if isinstance(result, int):
        return result
    try:
        table = evaluation.eval_table(read_provenance(spec.output, result.run_id))
    except Exception as exc:  # the run finished but its provenance cannot be read back
        console.print(labelled("error:", f"reading the eval run's provenance: {type(exc).__name__}: {exc}"))
        return EXIT_RUN_FAILED
    emit(table, args, spec, result.run_id, console)
    return EXIT_OK


def emit(table, args: argparse.Namespace, spec, run_id: str, console: Console) -> None:
    """The table as text (stderr), JSON (stdout) or CSV (a file, and the text)."""
    from pipeline import eval as evaluation

    checkpoint = spec.painter.checkpoints().get("edit") or spec.painter.checkpoints().get("t2i")
    heading = evaluation.title(
        table, args.benchmark, f"{spec.painter.kind}:{checkpoint}", f"{spec.judge.kind}:{spec.judge.model}"
    )
    note = evaluation.footnote(table, spec.judge.rubric)
    if args.json:
        data = {
            "benchmark": args.benchmark,
            "run_id": run_id,
            "output": spec.output,
            "title": heading,
            "rubric": spec.judge.rubric,
            "note": note,
            **table.as_json(),
        }
        print(json.dumps(data, sort_keys=True))
        return
    console.print(evaluation.rich_table(table, heading, note))
    if args.csv:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(args.csv, mime_type="text/csv") as handle:
            handle.write(evaluation.csv_text(table).encode("utf-8"))
        console.print(text(f"csv: {args.csv}"))
