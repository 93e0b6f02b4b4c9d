"""Provenance: one row per manifest row per run, whatever happened to it, written as Parquet.

Successes and dead letters (``Failure``) meet here and leave as rows of ``PROVENANCE_SCHEMA``;
failed rows carry ``status="failed"``, the stage and the error, never a placeholder image.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from transforms.judge.base import JudgedAttempt
from transforms.records import EditRecord, Failure, Judging
from transforms.schema import PROVENANCE_SCHEMA
from transforms.secrets import Scrubber


@dataclass(frozen=True)
class RunContext:
    """What every provenance row of a run shares."""

    run_id: str
    versions_json: str  # package versions, as JSON text
    scrub: Scrubber = field(default_factory=Scrubber)  # keeps API keys out of every stored text
    # mode (edit | t2i) -> license name of the checkpoint that paints that mode (transforms/painter/licenses)
    painter_licenses: dict[str, str] = field(default_factory=dict)


def _timestamp(epoch: float | None) -> dt.datetime | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


@functools.cache
def _worker_name(pid: int) -> str:
    return os.environ.get("HOSTNAME") or f"{socket.gethostname()}:{pid}"


def worker_name() -> str:
    """The pod (HOSTNAME) or host:pid that wrote a row; asked once per process, not per row."""
    return _worker_name(os.getpid())


# Columns whose text comes from outside dimflow (the manifest, a server's reply, an exception): the ones
# scrubbed of secrets. The others are dimflow's own (hashes, keys, names, timestamps, validated ids).
FREE_TEXT = frozenset(
    {
        "error",
        "instruction",
        "blueprint",
        "source_uri",
        "mask_uri",
        "output_uri",
        "metadata",
        "designer",
        "judge",
        "judge_reason",
        "judge_error",
    }
)


def safe_text(row: dict[str, Any], scrub: Scrubber) -> dict[str, Any]:
    """Strings that may be stored: no secrets in free text (a server may echo the key back), and nothing
    Parquet refuses (a hostile manifest's lone surrogates become visible escapes, ``\\ud800``, instead of
    failing the whole write)."""
    clean = scrub.bound()
    for name, value in row.items():
        if isinstance(value, str):
            value = _storable(value)
            row[name] = clean(value) if name in FREE_TEXT else value
    return row


def _storable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def paint_attempts_json(attempts: tuple[JudgedAttempt, ...], scrub: Scrubber) -> str:
    """Provenance ``paint_attempts``: every paint of the row (``JudgedAttempt.as_json``), its free texts
    (errors, the image's URI) scrubbed like the row's own columns before the JSON is built."""
    clean = scrub.bound()
    entries = []
    for attempt in attempts:
        entry = attempt.as_json()
        for name in ("output_uri", "judge_error", "error"):
            if isinstance(entry.get(name), str):
                entry[name] = clean(_storable(entry[name]))
        entries.append(entry)
    return json.dumps(entries, sort_keys=True, ensure_ascii=False)


def provenance_row(item: EditRecord | Failure, context: RunContext, now: float) -> dict[str, Any]:
    """Flatten a finished record or a failure into a provenance row (a dict keyed by column name)."""
    return safe_text(_provenance_row(item, context, now), context.scrub)


def _status(record: EditRecord) -> str:
    if record.skipped:
        return "skipped"
    return "rejected" if record.rejected else "ok"


def _judge_columns(record: EditRecord, scrub: Scrubber) -> dict[str, Any]:
    """The judge's columns of a judged row: the verdict on the kept image, the judge calls made for the row
    in this run (none for a skipped row: it carries the verdict of the earlier row it reuses), every paint."""
    judging: Judging | None = record.judging
    if judging is None:
        return {}
    columns: dict[str, Any] = {
        "judge": judging.judge,
        "judge_scores": json.dumps(judging.scores, sort_keys=True) if judging.scores is not None else None,
        "judge_overall": judging.overall,
        "judge_reason": judging.reason,
        "judge_error": judging.error,
    }
    if not record.skipped:
        columns.update(
            judge_attempts=judging.calls,
            judge_tokens_in=judging.tokens_in,
            judge_tokens_out=judging.tokens_out,
            judge_s=judging.seconds,
            paints=len(judging.attempts),
            paint_attempts=paint_attempts_json(judging.attempts, scrub),
        )
    if record.rejected and judging.stop_stage is not None:
        columns.update(error_stage=judging.stop_stage, error=judging.stop_error)
    return columns


def _provenance_row(item: EditRecord | Failure, context: RunContext, now: float) -> dict[str, Any]:
    failure = item if isinstance(item, Failure) else None
    record = item.record if isinstance(item, Failure) else item
    row: dict[str, Any] = {name: None for name in PROVENANCE_SCHEMA.names}
    row.update(run_id=context.run_id, worker=worker_name(), versions=context.versions_json)
    row["finished_at"] = _timestamp(now)
    if failure is not None:
        row.update(status="failed", error_stage=failure.stage, error=failure.error, id=failure.id)
        if record is None:  # failed before it became a valid row: the error names file and row
            return row
    else:
        row["status"] = _status(record)
    manifest = record.row
    mode = "edit" if manifest.source else "t2i"
    row.update(
        id=manifest.id,
        mode=mode,
        # whatever became of the row: the license its mode is painted under in this run (None where the job
        # has no checkpoint for the mode, or paints nothing)
        painter_license=context.painter_licenses.get(mode),
        source_uri=manifest.source,
        instruction=manifest.instruction,
        metadata=manifest.metadata,
        category=manifest.category,
        mask_uri=manifest.mask,
        mask_sha256=record.mask_sha256,
        # the fetched mask's share; a written row's paint fields replace it with the written image's
        locked_fraction=record.locked_fraction,
        source_sha256=record.source_sha256,
        source_width=record.source_width,
        source_height=record.source_height,
        blueprint=record.blueprint,
        designer=record.designer,
        design_key=record.design_key,
        designer_attempts=record.designer_attempts,
        tokens_in=record.tokens_in,
        tokens_out=record.tokens_out,
        design_s=record.design_s,
        blueprint_run_id=record.blueprint_run_id
        or (context.run_id if record.blueprint is not None else None),
        seed=record.seed if record.seed is not None else manifest.seed,
        render_key=record.render_key,
        paint_s=record.paint_s,
        output_uri=record.output_uri,
        output_sha256=record.output_sha256,
        quality_key=record.quality_key,
        started_at=_timestamp(record.started_at),
    )
    if failure is None:
        row.update(_judge_columns(record, context.scrub))
    if record.finished_at is not None:  # when its image was written (failures: when the row was recorded)
        row["finished_at"] = _timestamp(record.finished_at)
    for name, value in record.paint.items():
        if name in PROVENANCE_SCHEMA.names:
            row[name] = value
    return row


def versions_json() -> str:
    """Versions of the packages that decide the output, recorded in every row and the run record."""
    from importlib import metadata

    names = ["dimflow", "apache-beam", "torch", "transformers", "diffusers", "pillow", "pyarrow", "numpy"]
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return json.dumps(versions, sort_keys=True)
