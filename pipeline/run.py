"""Run a job end to end: options, run id, the Beam pipeline, exact counts, and the run record."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from rich.console import Console

from pipeline import edit
from pipeline.progress import LiveProgress, ProgressListener, ReportProgress
from pipeline.spec import JobSpec
from transforms.blueprints import blueprint_files
from transforms.designer.registry import make_provider
from transforms.incremental import provenance_files
from transforms.manifest import match_manifest
from transforms.painter.handler import checkpoint_fingerprint
from transforms.provenance import versions_json
from transforms.schema import BLUEPRINT_SCHEMA, PROVENANCE_SCHEMA
from transforms.shards import Shard

LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner"}


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


def job_keys(spec: JobSpec) -> edit.JobKeys:
    """Resolve what names outputs before the run starts (the checkpoint hash needs no model load)."""
    designer = make_provider(spec.designer.model_dump())
    return edit.JobKeys(
        designer_config=designer.config(),
        painter_config=edit.painter_config(spec),
        checkpoint_sha256={
            mode: checkpoint_fingerprint(checkpoint, mode)
            for mode, checkpoint in spec.painter.checkpoints().items()
        },
        default_seed=spec.painter.seed,
    )


def _reads_blueprints(spec: JobSpec) -> bool:
    return spec.stage == "paint" or (spec.designer.cache and spec.designer.kind != "none")


def read_provenance(output: str, run_id: str | None = None) -> pa.Table:
    """All provenance rows under ``output`` (or one run's), through Beam filesystems (local or gs://)."""
    return read_run_table(output, "provenance", PROVENANCE_SCHEMA, run_id)


def read_blueprints(output: str, run_id: str | None = None) -> pa.Table:
    """All blueprint-table rows under ``output`` (or one run's)."""
    return read_run_table(output, "blueprints", BLUEPRINT_SCHEMA, run_id)


def read_run_table(
    output: str, table: str, schema: pa.Schema, run_id: str | None = None, part: str | None = None
) -> pa.Table:
    """Rows of ``table`` (provenance | blueprints) of one run or all; ``part`` limits it to one shard's files."""
    run_glob = f"run={run_id}" if run_id else "run=*"
    pattern = FileSystems.join(output, table, run_glob, f"{part}-*.parquet" if part else "*.parquet")
    tables = []
    for match in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(match.path) as handle:
            tables.append(pq.read_table(pa.BufferReader(handle.read()), schema=schema))
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def write_run_record(spec: JobSpec, run_id: str, record: dict) -> str:
    uri = FileSystems.join(spec.output, "runs", f"{run_id}.json")
    with FileSystems.create(uri, mime_type="application/json") as handle:
        handle.write(json.dumps(record, indent=2, sort_keys=True, default=str).encode("utf-8"))
    return uri


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
    # Refuse a bad manifest (no match, a file refused as a whole) before any work, as `validate` does.
    match_manifest(spec.manifest, spec.limits.manifest_limits())
    versions = versions_json()
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    keys = job_keys(spec)
    options = pipeline_options(spec, beam_args)
    local = spec.runner.name in LOCAL_RUNNERS and show_progress
    earlier_blueprints = blueprint_files(spec.output) if _reads_blueprints(spec) else []
    if spec.stage == "paint" and not earlier_blueprints:
        raise ValueError(
            f"stage=paint: no blueprint tables under {FileSystems.join(spec.output, 'blueprints')}; "
            "run the same job with stage=design first"
        )
    logging.getLogger("apache_beam").setLevel(logging.WARNING)

    with ProgressListener() as listener:
        progress = beam.ParDo(ReportProgress(listener.address)) if local else None
        pipeline = beam.Pipeline(options=options)
        edit.build(
            pipeline,
            spec,
            run_id=run_id,
            keys=keys,
            versions_json=versions,
            progress=progress,
            blueprint_files=earlier_blueprints,
            shard=shard,
            provenance_files=provenance_files(spec.output) if spec.incremental else [],
        )
        if local:
            with LiveProgress(listener, console):
                pipeline.run().wait_until_finish()
        else:
            pipeline.run().wait_until_finish()

    elapsed = time.monotonic() - t0
    # A design run's result is its blueprint table; the other stages' is the provenance.
    table_name = "blueprints" if spec.stage == "design" else "provenance"
    schema = BLUEPRINT_SCHEMA if spec.stage == "design" else PROVENANCE_SCHEMA
    table = read_run_table(spec.output, table_name, schema, run_id, part=edit.part_name(shard))
    counts = dict(Counter(table.column("status").to_pylist()))
    record = {
        "run_id": run_id,
        "name": spec.name,
        "spec": spec.model_dump(),
        "beam_args": beam_args,
        "versions": json.loads(versions),
        "checkpoint_sha256": keys.checkpoint_sha256,
        "counts": {status: counts.get(status, 0) for status in ("ok", "failed", "skipped")},
        "stage": spec.stage,
        "shard": None if shard is None else {"index": shard.index, "count": shard.count},
        "rows": table.num_rows,
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
        failures=first_failures(table),
    )


def first_failures(table: pa.Table, limit: int = 10) -> list[dict[str, Any]]:
    """Up to ``limit`` failed rows as {id, stage, error}, ordered by stage then id for a stable display."""
    failed = table.filter(pc.equal(table.column("status"), "failed"))
    rows = failed.select(["id", "error_stage", "error"]).to_pylist()
    rows.sort(key=lambda r: (r["error_stage"] or "", r["id"] or ""))
    return [{"id": r["id"], "stage": r["error_stage"], "error": r["error"]} for r in rows[:limit]]
