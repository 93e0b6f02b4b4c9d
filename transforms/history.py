"""Earlier runs' tables as a local key-value index, so a run's lookups hold no history in memory.

An incremental rerun of a catalog asks, for each row, whether its render key was rendered before (and with
which image hash and blueprint, and whether that image was rejected by the judge) or, with a judge, how an
earlier row with its quality key ended; the design cache asks each design key's blueprint. Joining the whole
history inside the pipeline (a CoGroupByKey) makes the embedded runner hold every earlier row in memory,
once per chunk. So a run on the embedded runner builds, once, a SQLite file on local disk from just the
columns those lookups use (read a batch at a time through Beam's filesystems; a damaged part file is named
in a warning and skipped), and the lookups query it per row by indexed key. Memory: one batch and SQLite's
page cache; disk: about those columns of the history. Distributed runners keep the in-pipeline join: their
shuffles spill to disk, and their workers cannot see this machine's disk.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from transforms.tables import part_rows

_LOG = logging.getLogger(__name__)

# Provenance columns an incremental run looks up: an image by render key (and URI), a judged row's outcome
# by quality key; with the row's status and finish time (the newest row of an image decides).
RENDERED_COLUMNS = [
    "render_key",
    "output_uri",
    "output_sha256",
    "blueprint",
    "designer",
    "design_key",
    "status",
    "finished_at",
    "run_id",
    "quality_key",
    "seed",
    "judge",
    "judge_scores",
    "judge_overall",
    "judge_reason",
]
# Statuses of rows that wrote (or reused) an image: ``rejected`` ones too, so that they are known as not done.
RECORDED_STATUSES = ("ok", "skipped", "rejected")
DESIGN_COLUMNS = ["run_id", "status", "error", "design_key", "designer", "blueprint", "finished_at"]
_SCHEMA = """
CREATE TABLE rendered (render_key TEXT, output_uri TEXT, output_sha256 TEXT, blueprint TEXT, designer TEXT,
                       design_key TEXT, status TEXT, finished_at REAL, run_id TEXT, quality_key TEXT,
                       seed INTEGER, judge TEXT, judge_scores TEXT, judge_overall REAL, judge_reason TEXT);
CREATE TABLE designs (design_key TEXT, status TEXT, blueprint TEXT, designer TEXT, run_id TEXT, error TEXT,
                      finished_at REAL, usable INTEGER);
"""
_INDEXES = """
CREATE INDEX rendered_key ON rendered (render_key, output_uri);
CREATE INDEX rendered_quality ON rendered (quality_key);
CREATE INDEX designs_key ON designs (design_key);
"""
# Newest first: by finish time, then run id (run ids sort by their start time).
_NEWEST_FIRST = "ORDER BY finished_at IS NOT NULL DESC, finished_at DESC, run_id DESC"
_BATCH = 2048


def _warn_damaged(path: str, exc: Exception) -> None:
    _LOG.warning("skipped damaged part file %s: %s: %s", path, type(exc).__name__, exc)


def epoch_seconds(value: Any) -> float | None:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return None if value is None else float(value)


def _batches(rows: Iterable[tuple]) -> Iterable[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def recorded(entry: dict[str, Any]) -> bool:
    """Does this provenance row (a dict of ``RENDERED_COLUMNS``) name an image an incremental run may reuse or
    must know was rejected? Older files lack the newer columns: ``get``."""
    return bool(
        entry.get("render_key")
        and entry.get("output_uri")
        and entry.get("output_sha256")
        and entry.get("status") in RECORDED_STATUSES
    )


def _rendered(files: list[str]) -> Iterable[tuple]:
    for path in files:
        for e in part_rows(path, RENDERED_COLUMNS, _warn_damaged):
            if recorded(e):
                yield tuple(
                    epoch_seconds(e.get(name)) if name == "finished_at" else e.get(name)
                    for name in RENDERED_COLUMNS
                )


def _designs(files: list[str]) -> Iterable[tuple]:
    for path in files:
        for e in part_rows(path, DESIGN_COLUMNS, _warn_damaged):
            if e["design_key"] is None:
                continue
            usable = int(e["status"] == "ok" and bool((e["blueprint"] or "").strip()))
            yield (
                e["design_key"],
                e["status"],
                e["blueprint"],
                e["designer"],
                e["run_id"],
                e["error"],
                epoch_seconds(e["finished_at"]),
                usable,
            )


def build_history_index(path: str, *, provenance: list[str], blueprints: list[str]) -> HistoryIndex:
    """Write the index of ``provenance`` and ``blueprints`` part files to ``path`` (a new file)."""
    connection = sqlite3.connect(path)
    try:
        connection.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        for batch in _batches(_rendered(provenance)):
            connection.executemany(
                f"INSERT INTO rendered ({', '.join(RENDERED_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(RENDERED_COLUMNS))})",
                batch,
            )
        for batch in _batches(_designs(blueprints)):
            connection.executemany("INSERT INTO designs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
        connection.executescript(_INDEXES)
        connection.commit()
    finally:
        connection.close()
    return HistoryIndex(path)


class HistoryIndex:
    """Read-only lookups in an index file; picklable (it holds the path; each process opens its own)."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if not os.path.exists(self.path):
                raise FileNotFoundError(f"history index {self.path} is gone (it lives as long as its run)")
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            connection.row_factory = sqlite3.Row
            self._local.connection = connection
        return connection

    def rendered(self, render_key: str, output_uri: str) -> dict[str, Any] | None:
        """The newest earlier ok, skipped or rejected provenance row of this image (render key and URI), if any."""
        row = (
            self._connection()
            .execute(
                "SELECT status, output_sha256, blueprint, designer, design_key FROM rendered "
                f"WHERE render_key = ? AND output_uri = ? {_NEWEST_FIRST} LIMIT 1",
                (render_key, output_uri),
            )
            .fetchone()
        )
        return dict(row) if row is not None else None

    def judged(self, quality_key: str) -> Iterator[dict[str, Any]]:
        """The earlier ok, skipped or rejected provenance rows with this quality key, newest first."""
        cursor = self._connection().execute(
            f"SELECT {', '.join(RENDERED_COLUMNS)} FROM rendered WHERE quality_key = ? {_NEWEST_FIRST}",
            (quality_key,),
        )
        for row in cursor:
            yield dict(row)

    def design(self, design_key: str) -> dict[str, Any] | None:
        """The newest usable (ok, non-blank) blueprint of a design key, else its newest entry (a failure),
        by finish time then run id: ``blueprints._pick``'s choice."""
        row = (
            self._connection()
            .execute(
                "SELECT run_id, status, error, design_key, designer, blueprint, finished_at FROM designs "
                "WHERE design_key = ? ORDER BY usable DESC, finished_at IS NOT NULL DESC, finished_at DESC, "
                "run_id DESC LIMIT 1",
                (design_key,),
            )
            .fetchone()
        )
        return dict(row) if row is not None else None
