"""Run a job end to end: options, run id, the Beam pipeline, exact counts, and the run record."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import glob
import heapq
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from rich.console import Console
from rich.text import Text

from pipeline import edit, interrupt, preflight
from pipeline.preflight import PreflightError
from pipeline.progress import LiveProgress, ProgressListener, ReportProgress
from pipeline.spec import JobSpec
from pipeline.terminal import printable, text
from transforms.blueprints import blueprint_files
from transforms.chunks import empty_chunk, plan_chunks
from transforms.designer.registry import make_provider
from transforms.history import build_history_index
from transforms.incremental import provenance_files
from transforms.judge.base import JudgeProvider
from transforms.painter.handler import checkpoint_fingerprint, replica_names, resolve_devices
from transforms.provenance import versions_json
from transforms.schema import BLUEPRINT_SCHEMA, PROVENANCE_SCHEMA, STATUSES
from transforms.shards import Shard
from transforms.storage import is_remote, write_atomic
from transforms.tables import (
    PartFileError,
    SkippedFile,
    list_run_table,
    log_skipped,
    new_attempt,
    read_part_files,
    remove_older_attempts,
)

LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner"}
# The embedded runner's options that decide how many bundles run at once (and where).
BUNDLE_OPTIONS = ("direct_running_mode", "direct_num_workers")


@dataclass(frozen=True)
class RunResult:
    run_id: str
    counts: dict[str, int]
    elapsed_s: float
    table_dir: str  # provenance (or, for a design run, blueprints) of this run
    run_record: str
    images_dir: str
    stage: str = "all"
    # The first failed rows (manifest order), so the console can show what went wrong without a query.
    failures: list[dict[str, Any]] = field(default_factory=list)


def new_run_id() -> str:
    """Sortable and unique: UTC time plus 6 random hex digits."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_id(run_id: str) -> str:
    """A given run id names folders (``run={run_id}``): keep it to safe characters."""
    if not RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id must match {RUN_ID.pattern} (it names output folders), got {run_id!r}")
    return run_id


def pipeline_options(spec: JobSpec, beam_args: list[str]) -> PipelineOptions:
    """The spec's runner section as Beam flags; extra ``-- beam args`` from the command line win."""
    args = [f"--runner={spec.runner.name}"]
    for key, value in spec.runner.options.items():
        if isinstance(value, bool):
            args.append(f"--{key}" if value else f"--no_{key}")
        else:
            args.append(f"--{key}={value}")
    return PipelineOptions(args + list(beam_args))


def painter_thread_args(spec: JobSpec, beam_args: list[str], console: Console) -> list[str]:
    """On the embedded runners, the Beam args that give each painter replica a bundle thread to feed it.

    ``painter.device`` is resolved here, on the machine that runs the job (the pod that got the GPUs), so
    a device that is not there refuses the job before any work. With N > 1 replicas the run uses Beam's
    multi-threading mode with N workers: RunInference shares one loaded model (the N replicas) between
    the bundle threads of a process, and each thread's paint calls take an idle replica (see
    ``transforms.painter.handler``). Options the user set (``runner.options`` or ``-- beam args``) win.
    Distributed runners place work themselves, and a design run paints nothing: no args.
    """
    if spec.runner.name not in LOCAL_RUNNERS or spec.stage == "design":
        return []
    try:
        replicas = replica_names(resolve_devices(spec.painter.device))
    except ValueError as exc:
        raise PreflightError(f"painter.device: {exc}") from exc
    if len(replicas) < 2:
        return []
    named = f"painter.device {spec.painter.device!r}: {len(replicas)} replicas ({', '.join(replicas)})"
    given = [name for name in BUNDLE_OPTIONS if name in spec.runner.options or _names_arg(beam_args, name)]
    if given:
        console.print(
            text(f"{named}; {' and '.join(given)} set by you decide how many bundles paint at once")
        )
        return []
    args = ["--direct_running_mode=multi_threading", f"--direct_num_workers={len(replicas)}"]
    console.print(text(f"{named}; one bundle thread each: {' '.join(args)}"))
    return args


def _names_arg(beam_args: list[str], name: str) -> bool:
    """Is option ``name`` among the Beam args (``--name=value`` or ``--name value``)?"""
    return any(arg.lstrip("-").split("=", 1)[0] == name for arg in beam_args if arg.startswith("--"))


def job_keys(spec: JobSpec, judge: JudgeProvider | None = None) -> edit.JobKeys:
    """Resolve what names outputs before the run starts (the checkpoint hash needs no model load), and the
    license of each mode's checkpoint (refused first when ``painter.require_commercial_license`` is not met).

    A design run paints nothing: it needs no painter weights (its pods may have none) and has no render
    keys. Otherwise each checkpoint is also checked against the job's sampling settings, so a setting the
    painter cannot paint (a resolution off its latent grid) refuses the job instead of failing every row.
    With a judge, its ``config()`` (from ``judge``, the provider the preflight built, else built here) goes
    into the quality keys; a design run judges nothing.
    """
    # First the licenses (no weights needed): a job refused for its painter's license downloads nothing.
    licenses = preflight.check_painter_license(spec)
    designer = make_provider(spec.designer.model_dump())
    fingerprints = {}
    if spec.stage != "design":
        params = edit.paint_params(spec)
        for mode, checkpoint in spec.painter.checkpoints().items():
            try:
                fingerprints[mode] = checkpoint_fingerprint(checkpoint, mode, params, spec.painter.kind)
            except ValueError as exc:
                field = "checkpoint" if mode == "edit" else "t2i_checkpoint"
                raise PreflightError(f"painter ({field} {checkpoint!r}): {exc}") from exc
    judge_config = None
    if spec.stage != "design":
        if judge is None:
            make_judge = edit.judge_factory(spec)
            judge = make_judge() if make_judge is not None else None
        judge_config = judge.config() if judge is not None else None
    return edit.JobKeys(
        designer_config=designer.config(),
        painter_config=edit.painter_config(spec),
        checkpoint_sha256=fingerprints,
        default_seed=spec.painter.seed,
        painter_licenses=licenses,
        judge_config=judge_config,
        min_overall=spec.quality.min_overall,
        max_paints=spec.quality.max_paints,
        output_size=spec.painter.output_size,
        mask_config=edit.mask_config(spec),
    )


def _reads_blueprints(spec: JobSpec) -> bool:
    return spec.stage == "paint" or (spec.designer.cache and spec.designer.kind != "none")


def read_provenance(
    output: str, run_id: str | None = None, *, skipped: list[SkippedFile] | None = None
) -> pa.Table:
    """All provenance rows under ``output`` (or one run's), through Beam filesystems (local or gs://)."""
    return read_run_table(output, "provenance", PROVENANCE_SCHEMA, run_id, skipped=skipped)


def read_blueprints(
    output: str, run_id: str | None = None, *, skipped: list[SkippedFile] | None = None
) -> pa.Table:
    """All blueprint-table rows under ``output`` (or one run's)."""
    return read_run_table(output, "blueprints", BLUEPRINT_SCHEMA, run_id, skipped=skipped)


def read_run_table(
    output: str,
    table: str,
    schema: pa.Schema,
    run_id: str | None = None,
    part: str | None = None,
    *,
    skipped: list[SkippedFile] | None = None,
) -> pa.Table:
    """Rows of ``table`` (provenance | blueprints) of one run or all; ``part`` limits it to one shard's files.

    Each (run, part) contributes its newest complete write attempt only, so a rerun of a run id never
    counts a row twice. Files left out (older or incomplete attempts, damaged files, foreign names)
    are appended to ``skipped`` with the reason, or logged as warnings when no list is given.
    """
    listing = list_run_table(output, table, run_id, part)
    rows, damaged = read_part_files(listing.files, schema)
    left_out = [*listing.ignored, *damaged]
    if skipped is None:
        log_skipped(left_out, table)
    else:
        skipped.extend(left_out)
    return rows


def own_attempt_files(output: str, table: str, run_id: str, part: str, attempt: str) -> list[str]:
    """The files this run just wrote to ``table``; ``PartFileError`` naming the folder if they are not
    all there (never a silent fall-back to an earlier attempt's rows)."""
    listing = list_run_table(output, table, run_id, part)
    chosen = listing.chosen_for(run_id, part)
    if chosen is None or chosen.tag != attempt:
        folder = FileSystems.join(output, table, f"run={run_id}")
        own = [str(s) for s in listing.ignored if attempt in s.path]
        raise PartFileError(
            f"{folder}: the {table} files this run wrote ({part}-{attempt}-*.parquet) are missing or "
            f"incomplete; {'; '.join(own[:5]) if own else 'none found'}"
        )
    return [f.path for f in chosen.files]


def write_run_record(spec: JobSpec, run_id: str, record: dict) -> str:
    uri = FileSystems.join(spec.output, "runs", f"{run_id}.json")
    data = json.dumps(record, indent=2, sort_keys=True, default=str).encode("utf-8")
    write_atomic(uri, data, "application/json", root=spec.output)
    return uri


def remove_unfinished(output: str, run_id: str, part: str, attempt: str) -> None:
    """After a run broke or was interrupted: Beam's temp folders of this attempt's part files (any chunk of
    ``part``; never those of another shard writing into the same run folder), and the run's table folders if
    nothing else is in them (finished part files and images stay: a rerun reuses them)."""
    for table in ("provenance", "blueprints"):
        folder = FileSystems.join(output, table, f"run={run_id}")
        temp_prefix = f"beam-temp-{part}*-{attempt}-"
        try:
            if is_remote(folder):  # object stores: the temp objects themselves (no folders to remove)
                pattern = FileSystems.join(folder, temp_prefix + "**")
                temps = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
                if temps:
                    FileSystems.delete(temps)
                continue
            for temp in glob.glob(os.path.join(glob.escape(folder), temp_prefix + "*")):
                shutil.rmtree(temp)
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        except Exception as exc:  # best effort: the run's own error is what the user must see
            logging.getLogger(__name__).warning("could not remove temp files under %s: %s", folder, exc)


def run_job(
    spec: JobSpec,
    beam_args: list[str] | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    run_id: str | None = None,
    shard: Shard | None = None,
) -> RunResult:
    """Run ``spec`` to completion and return exact per-status counts from the provenance it wrote.

    Shards of one job pass the same ``run_id`` (their rows form one run) and each its own ``shard``.
    """
    console = console or Console(stderr=True)
    beam_args = list(beam_args or [])
    if shard is not None and run_id is None:
        raise ValueError("a sharded run needs a run id shared by all its shards (--run-id or DIMFLOW_RUN_ID)")
    run_id = check_run_id(run_id) if run_id is not None else new_run_id()
    attempt = new_attempt()  # tags this run's part files; see transforms/tables.py
    # Refuse a bad manifest (no match, a file refused as a whole) before any work, as `validate` does.
    preflight.check_manifest(spec.manifest, spec.limits.manifest_limits(), spec.limits.fetch_timeout_s)
    versions = versions_json()
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    preflight.check_output(spec, run_id)
    preflight.check_designer(spec)
    make_judge, judge = preflight.check_judge(spec)
    keys = job_keys(spec, judge)
    options = pipeline_options(spec, painter_thread_args(spec, beam_args, console) + beam_args)
    local = spec.runner.name in LOCAL_RUNNERS and show_progress
    earlier_blueprints = blueprint_files(spec.output) if _reads_blueprints(spec) else []
    if spec.stage == "paint" and not earlier_blueprints:
        raise ValueError(
            f"stage=paint: no blueprint tables under {FileSystems.join(spec.output, 'blueprints')}; "
            "run the same job with stage=design first"
        )
    preflight.check_writable(spec.output, spec.limits.fetch_timeout_s)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)

    base_part = edit.part_name(shard)
    unfinished = functools.partial(remove_unfinished, spec.output, run_id, base_part, attempt)
    earlier_provenance = provenance_files(spec.output) if spec.incremental and spec.stage != "design" else []
    with (
        tempfile.TemporaryDirectory(prefix="dimflow-run-") as scratch,
        ProgressListener() as listener,
        _cleanup_on_failure(unfinished),
    ):
        history = None
        if spec.runner.name in LOCAL_RUNNERS and (earlier_provenance or earlier_blueprints):
            history = build_history_index(
                os.path.join(scratch, "history.sqlite"),
                provenance=earlier_provenance,
                blueprints=earlier_blueprints,
            )
        build = functools.partial(
            edit.build,
            spec=spec,
            run_id=run_id,
            keys=keys,
            versions_json=versions,
            blueprint_files=earlier_blueprints,
            provenance_files=earlier_provenance,
            attempt=attempt,
            history=history,
            make_judge=make_judge,
        )
        progress = beam.ParDo(ReportProgress(listener.address)) if local else None
        if chunked(spec):
            parts = _run_chunks(
                spec, options, build, shard, progress, listener if local else None, console, scratch
            )
        else:
            pipeline = beam.Pipeline(options=options)
            build(pipeline, progress=progress, shard=shard, part=base_part)
            with LiveProgress(listener, console) if local else contextlib.nullcontext():
                pipeline.run().wait_until_finish()
            parts = [base_part]

    elapsed = time.monotonic() - t0
    # A design run's result is its blueprint table; the other stages' is the provenance.
    table_name = "blueprints" if spec.stage == "design" else "provenance"
    summary = summarize_own(spec.output, table_name, run_id, parts, attempt)
    written = {"all": ("blueprints", "provenance"), "design": ("blueprints",), "paint": ("provenance",)}
    for name in written[spec.stage]:
        for part in parts:
            if name != table_name:  # complete before anything is deleted
                own_attempt_files(spec.output, name, run_id, part, attempt)
    for name in written[spec.stage]:
        for part in parts:
            _remove_older_attempts(spec.output, name, run_id, part, attempt, console)
    record = {
        "run_id": run_id,
        "name": spec.name,
        "spec": spec.model_dump(),
        "beam_args": beam_args,
        "versions": json.loads(versions),
        "checkpoint_sha256": keys.checkpoint_sha256,
        "painter_licenses": {
            mode: {
                "checkpoint": spec.painter.checkpoints()[mode],
                "license": found.name,
                "commercial_use": found.commercial_use,
                "source": found.source,
            }
            for mode, found in keys.painter_licenses.items()
        },
        "counts": summary.counts,
        "stage": spec.stage,
        "shard": None if shard is None else {"index": shard.index, "count": shard.count},
        "rows": summary.rows,
        "chunks": len(parts) if chunked(spec) else None,
        "started_at": started.isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "elapsed_s": round(elapsed, 3),
    }
    record_uri = write_run_record(spec, run_id if shard is None else f"{run_id}.{shard.name}", record)
    return RunResult(
        run_id=run_id,
        counts=record["counts"],
        elapsed_s=elapsed,
        table_dir=FileSystems.join(spec.output, table_name, f"run={run_id}"),
        stage=spec.stage,
        run_record=record_uri,
        images_dir=FileSystems.join(spec.output, "images"),
        failures=summary.failures,
    )


@contextlib.contextmanager
def _cleanup_on_failure(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run ``cleanup`` (the run's temp files) when the pipeline raises, and when the process is interrupted."""
    with interrupt.cleanup(cleanup):
        try:
            yield
        except BaseException:
            cleanup()
            raise


def _remove_older_attempts(
    output: str, table: str, run_id: str, part: str, attempt: str, console: Console
) -> None:
    """A rerun of this run id and part replaces the earlier rows: delete the older attempts' files.

    Readers already ignore them; a failed delete leaves them ignored (and named in warnings) but does
    not fail a run whose own output is complete.
    """
    try:
        removed = remove_older_attempts(output, table, run_id, part, attempt)
    except Exception as exc:
        console.print(
            Text.assemble(
                ("warning:", "yellow"),
                printable(
                    f" could not delete the older {table} files of run {run_id} ({part}): "
                    f"{type(exc).__name__}: {exc}; readers ignore them, delete them by hand"
                ),
            )
        )
        return
    if removed:
        console.print(
            text(
                f"run {run_id} ({part}) was written before: replaced its earlier {table} rows "
                f"({len(removed)} older file(s) deleted)"
            )
        )


@dataclass
class OwnSummary:
    """What a run wrote, read back from its own part files a batch at a time (bounded memory)."""

    counts: dict[str, int]
    rows: int
    failures: list[dict[str, Any]]  # the first failed rows by (stage, id), for the console


def summarize_own(output: str, table: str, run_id: str, parts: list[str], attempt: str) -> OwnSummary:
    """Exact counts of this run's rows, from every file it wrote (each must be there and readable, else
    ``PartFileError`` naming it), reading only four columns, a batch at a time."""
    counts: Counter = Counter()
    failures: list[dict[str, Any]] = []
    for part in parts:
        for path in own_attempt_files(output, table, run_id, part, attempt):
            try:
                with FileSystems.open(path) as handle:
                    batches = pq.ParquetFile(handle).iter_batches(
                        columns=["id", "status", "error_stage", "error"]
                    )
                    for batch in batches:
                        rows = batch.to_pylist()
                        counts.update(r["status"] for r in rows)
                        failed = [r for r in rows if r["status"] == "failed"]
                        failures = first_failures(failures + failed)
            except PartFileError:
                raise
            except Exception as exc:
                raise PartFileError(f"{path}: unreadable part file ({type(exc).__name__}: {exc})") from exc
    return OwnSummary(
        counts={status: counts.get(status, 0) for status in STATUSES},
        rows=sum(counts.values()),
        failures=failures,
    )


def first_failures(rows: list[dict[str, Any]], limit: int = 10) -> list[dict[str, Any]]:
    """Up to ``limit`` failed rows as {id, stage, error}, ordered by stage then id for a stable display."""
    rows = [{"id": r["id"], "stage": r.get("error_stage", r.get("stage")), "error": r["error"]} for r in rows]
    return heapq.nsmallest(limit, rows, key=lambda r: (r["stage"] or "", r["id"] or "", r["error"] or ""))


def chunked(spec: JobSpec) -> bool:
    """The embedded runner keeps whole PCollections in memory: it runs a manifest chunk by chunk."""
    return spec.runner.name in LOCAL_RUNNERS and spec.runner.chunk_rows is not None


def _run_chunks(
    spec: JobSpec,
    options: PipelineOptions,
    build: Callable[..., None],
    shard: Shard | None,
    progress: beam.PTransform | None,
    listener: ProgressListener | None,
    console: Console,
    scratch: str,
) -> list[str]:
    """Plan the manifest's chunks (spilled to the run's scratch folder), then one pipeline per chunk, in
    order; returns the part prefixes written. Progress and the summary are over the whole run."""
    assert spec.runner.chunk_rows is not None
    folder = os.path.join(scratch, "chunks")
    os.mkdir(folder)
    plan = plan_chunks(
        spec.manifest,
        spec.limits.manifest_limits(),
        chunk_rows=spec.runner.chunk_rows,
        folder=folder,
        owns=shard.owns if shard is not None else None,
    )
    chunks = plan.chunks or (empty_chunk(folder),)  # an empty shard still writes its (empty) tables
    if len(chunks) > 1:
        console.print(
            text(f"{plan.rows:,} rows in {len(chunks)} chunks of up to {plan.size:,} (runner.chunk_rows)")
        )
    parts = []
    live = LiveProgress(listener, console, total=plan.rows) if listener else contextlib.nullcontext()
    with live:
        for chunk in chunks:
            part = edit.part_name(shard, chunk=chunk.index, chunk_rows=plan.size)
            pipeline = beam.Pipeline(options=options)
            build(pipeline, progress=progress, chunk=chunk, part=part)
            pipeline.run().wait_until_finish()
            parts.append(part)
    return parts
