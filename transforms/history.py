"""Earlier runs' tables as a local key-value index, so a run's lookups hold no history in memory.

An incremental rerun of a catalog asks, for each row, whether its render key was rendered before (and with
which image hash and blueprint); the design cache asks each design key's blueprint. Joining the whole
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
from collections.abc import Iterable
from typing import Any

from transforms.tables import part_rows

_LOG = logging.getLogger(__name__)

RENDERED_COLUMNS = [
    "status",
    "render_key",
    "output_uri",
    "output_sha256",
    "blueprint",
    "designer",
    "design_key",
]
DESIGN_COLUMNS = ["run_id", "status", "error", "design_key", "designer", "blueprint", "finished_at"]
_SCHEMA = """
CREATE TABLE rendered (render_key TEXT, output_uri TEXT, output_sha256 TEXT, blueprint TEXT, designer TEXT,
                       design_key TEXT);
CREATE TABLE designs (design_key TEXT, status TEXT, blueprint TEXT, designer TEXT, run_id TEXT, error TEXT,
                      finished_at REAL, usable INTEGER);
"""
_INDEXES = """
CREATE INDEX rendered_key ON rendered (render_key, output_uri);
CREATE INDEX designs_key ON designs (design_key);
"""
_BATCH = 2048


def _warn_damaged(path: str, exc: Exception) -> None:
    _LOG.warning("skipped damaged part file %s: %s: %s", path, type(exc).__name__, exc)


def _epoch(value: Any) -> float | None:
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


def _rendered(files: list[str]) -> Iterable[tuple]:
    for path in files:
        for e in part_rows(path, RENDERED_COLUMNS, _warn_damaged):
            if e["render_key"] and e["status"] in ("ok", "skipped") and e["output_sha256"]:
                yield (
                    e["render_key"],
                    e["output_uri"],
                    e["output_sha256"],
                    e["blueprint"],
                    e["designer"],
                    e["design_key"],
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
                _epoch(e["finished_at"]),
                usable,
            )


def build_history_index(path: str, *, provenance: list[str], blueprints: list[str]) -> HistoryIndex:
    """Write the index of ``provenance`` and ``blueprints`` part files to ``path`` (a new file)."""
    connection = sqlite3.connect(path)
    try:
        connection.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        for batch in _batches(_rendered(provenance)):
            connection.executemany("INSERT INTO rendered VALUES (?, ?, ?, ?, ?, ?)", batch)
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
        """The earlier ok/skipped provenance row that wrote this image (render key and URI), if any."""
        row = (
            self._connection()
            .execute(
                "SELECT output_sha256, blueprint, designer, design_key FROM rendered "
                "WHERE render_key = ? AND output_uri = ? LIMIT 1",
                (render_key, output_uri),
            )
            .fetchone()
        )
        return dict(row) if row is not None else None

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
