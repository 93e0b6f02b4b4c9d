"""`dimflow status OUTPUT`: the latest state of every id across all runs under an output.

This is the view catalog users ask for ("the current render of each product"): for each id, the
newest provenance row (its status, stage, error and image), and the newest image that is current (the
output of its latest ``ok`` or ``skipped`` row, which may come from an earlier run). A ``rejected`` row's
image (painted, below ``quality.min_overall``) is its newest image, to review, never the current one.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.run import read_provenance
from transforms.tables import SkippedFile

LATEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("status", pa.string()),  # of the newest row
        ("error_stage", pa.string()),
        ("error", pa.string()),
        ("run_id", pa.string()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("current_output_uri", pa.string()),  # newest ok/skipped image, even if the newest row failed
        ("current_render_key", pa.string()),
        ("current_run_id", pa.string()),
        # the newest row's image: for a rejected row the image to review (never the current one)
        ("latest_output_uri", pa.string()),
    ]
)


def latest_per_id(provenance: pa.Table) -> pa.Table:
    """One row per id (rows without an id, i.e. unparseable manifest lines, are left out).

    Within one run an id has several rows only when the manifest repeated it: the row that was
    processed (ok/skipped) speaks for the id, not the later duplicates that failed.
    """
    per_run: dict[tuple[str, str], dict[str, Any]] = {}
    for row in provenance.to_pylist():
        if row["id"] is None:
            continue
        key = (row["run_id"] or "", row["id"])
        seen = per_run.get(key)
        if seen is None or (seen["status"] == "failed" and row["status"] != "failed"):
            per_run[key] = row
    rows = sorted(
        per_run.values(), key=lambda r: (r["finished_at"] is not None, r["finished_at"], r["run_id"] or "")
    )
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:  # oldest first: later rows overwrite
        entry = latest.setdefault(
            row["id"], {"current_output_uri": None, "current_render_key": None, "current_run_id": None}
        )
        entry.update(
            id=row["id"],
            status=row["status"],
            error_stage=row["error_stage"],
            error=row["error"],
            run_id=row["run_id"],
            finished_at=row["finished_at"],
            latest_output_uri=row["output_uri"],
        )
        if row["status"] in ("ok", "skipped") and row["output_uri"]:
            entry.update(
                current_output_uri=row["output_uri"],
                current_render_key=row["render_key"],
                current_run_id=row["run_id"],
            )
    ordered = [latest[key] for key in sorted(latest)]
    return pa.Table.from_pylist(ordered, schema=LATEST_SCHEMA)


def read_latest(output: str, *, skipped: list[SkippedFile] | None = None) -> pa.Table:
    """The latest state per id; provenance files that were left out (damaged, an older or incomplete
    write) go to ``skipped`` with the reason (logged when no list is given)."""
    return latest_per_id(read_provenance(output, skipped=skipped))
