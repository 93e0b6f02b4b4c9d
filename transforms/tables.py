"""The run-partitioned Parquet tables under an output: ``{output}/{table}/run={run_id}/{part}-*.parquet``.

Provenance and the blueprint table share this layout (Hive-style, so duckdb, BigQuery and Spark read
``run`` as a column). This module writes them with Beam's own Parquet sink and is the one place that
lists and reads them back (the driver's counts, ``status``, ``report``, and the lookups of later runs).

**Write attempts.** Beam names files ``{prefix}-SSSSS-of-NNNNN.parquet`` with N set by the bundles, so
a rerun with the same run id (a retried Kubernetes pod keeps ``$DIMFLOW_RUN_ID``) and another N would
add a second set of files beside the first. Every write therefore carries its own attempt tag,
``{part}-a{UTC time}Z{random}-SSSSS-of-NNNNN.parquet`` (tags sort by time), and readers take, for each
(run, part prefix), only the newest *complete* attempt (all N of its files present): an older attempt
and an incomplete newer one (a write in progress, or one that crashed) are not read. ``run_job``
deletes its own (run, part)'s older attempts once its write succeeded. Files named before attempt
tags existed (``{part}-SSSSS-of-NNNNN.parquet``) count as the oldest attempts, newest by modification
time among themselves.

**Damaged files.** A file that cannot be read (0 bytes, truncated, not Parquet) is skipped and named
with the reason: the driver-side reader returns them, the pipeline-side reader logs a WARNING and
counts them in a Beam metric, so one bad file of an earlier run never stops a later run or command.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

_LOG = logging.getLogger(__name__)

_TAG = r"a\d{8}T\d{12}Z[0-9a-f]{6}"
ATTEMPT_TAG = re.compile(_TAG)
# {part}[-{attempt}]-{index}-of-{count}.parquet; ``part`` is lazy so that a shard prefix
# (part-shard-00001-of-00003) is not mistaken for the index/count of the file itself.
PART_FILE = re.compile(
    rf"(?P<part>.+?)(?:-(?P<attempt>{_TAG}))?-(?P<index>\d{{5,}})-of-(?P<count>\d{{5,}})\.parquet"
)
_LAYOUT_PART = re.compile(
    r"part(?:-shard-\d{5,}-of-(?P<shards>\d{5,}))?(?:-chunk-\d{5,}-size-(?P<chunk_rows>\d+))?"
)
LEGACY = ""  # the attempt tag of files named before attempt tags existed
METRICS_NAMESPACE = "dimflow.tables"
DAMAGED_COUNTER = "damaged_part_files"


class PartFileError(RuntimeError):
    """A run's own freshly written part files are missing, incomplete or unreadable."""


def new_attempt() -> str:
    """A write attempt's tag: ``a`` + UTC time to the microsecond + ``Z`` + 6 random hex digits."""
    return "a" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f") + "Z" + secrets.token_hex(3)


@dataclass(frozen=True)
class PartFile:
    path: str
    run_id: str
    part: str  # part-file prefix: ``part`` or ``part-shard-00001-of-00003``
    attempt: str  # LEGACY for files named before attempt tags
    index: int
    count: int
    mtime: float


@dataclass(frozen=True)
class SkippedFile:
    """A file a reader did not (fully) read, and why; ``str()`` is the one-line warning."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def as_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Attempt:
    """One write attempt of one (run, part): its files, by shard index."""

    run_id: str
    part: str
    tag: str
    count: int
    files: tuple[PartFile, ...]

    @property
    def complete(self) -> bool:
        return {f.index for f in self.files} == set(range(self.count))

    @property
    def order(self) -> tuple:
        """Older < newer: legacy files first (by modification time), then tagged ones by their tag."""
        return (self.tag != LEGACY, self.tag, max(f.mtime for f in self.files), self.count)

    @property
    def label(self) -> str:
        if self.tag == LEGACY:
            return f"untagged attempt (older naming) with {self.count} file(s)"
        return f"attempt {self.tag}"

    def missing(self) -> list[int]:
        present = {f.index for f in self.files}
        return [i for i in range(self.count) if i not in present]


@dataclass(frozen=True)
class TableListing:
    """What to read of a table: the newest complete attempt of each (run, part), and what was left out."""

    chosen: tuple[Attempt, ...]
    ignored: tuple[SkippedFile, ...]
    attempts: tuple[Attempt, ...]  # every attempt seen (chosen or not), oldest first per (run, part)

    @property
    def files(self) -> list[str]:
        return sorted(f.path for attempt in self.chosen for f in attempt.files)

    def chosen_for(self, run_id: str, part: str) -> Attempt | None:
        return next((a for a in self.chosen if (a.run_id, a.part) == (run_id, part)), None)


def parse_part_file(path: str, mtime: float = 0.0) -> PartFile | None:
    """The run, part prefix, attempt and shard of a part file's path; None if it is not named like one."""
    folder, name = FileSystems.split(path)
    run_folder = FileSystems.split(folder)[1]
    found = PART_FILE.fullmatch(name)
    if found is None or not run_folder.startswith("run="):
        return None
    return PartFile(
        path=path,
        run_id=run_folder.removeprefix("run="),
        part=found["part"],
        attempt=found["attempt"] or LEGACY,
        index=int(found["index"]),
        count=int(found["count"]),
        mtime=mtime or 0.0,
    )


def _match(pattern: str) -> list:
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # some filesystems raise instead of matching nothing
        _LOG.debug("no table files at %s (%s: %s)", pattern, type(exc).__name__, exc)
        return []


def list_run_table(
    output: str, table: str, run_id: str | None = None, part: str | None = None
) -> TableListing:
    """The part files of ``table`` to read: every run's (or ``run_id``'s), every part's (or ``part``'s).

    For each (run, part) only the newest complete write attempt is chosen; the files of the other
    attempts, and (when no ``part`` is asked for) files not named like part files, come back as
    ``ignored`` with the reason, so callers can say what they left out.
    """
    pattern = FileSystems.join(output, table, f"run={run_id}" if run_id else "run=*", "*.parquet")
    ignored: list[SkippedFile] = []
    grouped: dict[tuple[str, str, str, int], list[PartFile]] = {}
    for meta in _match(pattern):
        parsed = parse_part_file(meta.path, getattr(meta, "last_updated_in_seconds", 0.0))
        if parsed is None:
            if part is None:
                ignored.append(
                    SkippedFile(
                        meta.path,
                        "not named like a part file ({part}[-a{attempt}]-SSSSS-of-NNNNN.parquet); not read",
                    )
                )
            continue
        if part is not None and parsed.part != part:
            continue
        key = (parsed.run_id, parsed.part, parsed.attempt, parsed.count)
        grouped.setdefault(key, []).append(parsed)

    by_run_part: dict[tuple[str, str], list[Attempt]] = {}
    for (run, prefix, tag, count), files in grouped.items():
        attempt = Attempt(run, prefix, tag, count, tuple(sorted(files, key=lambda f: f.index)))
        by_run_part.setdefault((run, prefix), []).append(attempt)

    chosen: list[Attempt] = []
    every: list[Attempt] = []
    for (run, prefix), attempts in sorted(by_run_part.items()):
        attempts.sort(key=lambda a: a.order)
        every.extend(attempts)
        newest = next((a for a in reversed(attempts) if a.complete), None)
        if newest is not None:
            chosen.append(newest)
        for attempt in attempts:
            if attempt is newest:
                continue
            where = f"run {run}, part {prefix}"
            if not attempt.complete:
                missing = attempt.missing()
                reason = (
                    f"incomplete write ({where}, {attempt.label}: {attempt.count - len(missing)} of "
                    f"{attempt.count} files, missing shard(s) {', '.join(f'{i:05d}' for i in missing[:5])}"
                    f"{'...' if len(missing) > 5 else ''}); not read (a write in progress or one that crashed)"
                )
            else:
                assert newest is not None  # a complete attempt exists, and this one is older
                reason = (
                    f"older write ({where}, {attempt.label}), superseded by {newest.label}; not read "
                    "(left by a rerun of the same run id whose clean-up has not run)"
                )
            ignored.extend(SkippedFile(f.path, reason) for f in attempt.files)
    chosen = _newest_layout(chosen, ignored)
    return TableListing(chosen=tuple(chosen), ignored=tuple(ignored), attempts=tuple(every))


def layout(part: str) -> tuple[int, int] | None:
    """How a run split its rows, from a part prefix: (shard count, chunk rows), 0 for "not split".

    ``part`` -> (0, 0); ``part-shard-00001-of-00003`` -> (3, 0); ``part-chunk-00002-size-20000`` ->
    (0, 20000). None for a prefix dimflow does not write (a file someone put there): no layout rule
    applies to it, so it is read (and named if damaged) rather than silently dropped.
    """
    found = _LAYOUT_PART.fullmatch(part)
    if found is None:
        return None
    return (int(found["shards"] or 0), int(found["chunk_rows"] or 0))


def _newest_layout(chosen: list[Attempt], ignored: list[SkippedFile]) -> list[Attempt]:
    """Per run, the parts of the layout (shard count, chunk rows) written last; another layout's parts go
    to ``ignored``.

    A run id rerun with another shard count or chunk size (or unsplit after split) divides the rows
    differently, so its parts cannot be combined with the earlier layout's without counting rows twice.
    """
    layouts: dict[str, dict[tuple[int, int], list[Attempt]]] = {}
    kept: list[Attempt] = []
    for attempt in chosen:
        split = layout(attempt.part)
        if split is None:
            kept.append(attempt)
        else:
            layouts.setdefault(attempt.run_id, {}).setdefault(split, []).append(attempt)
    for run, by_layout in layouts.items():
        newest = max(by_layout, key=lambda n: max(a.order for a in by_layout[n]))
        for split, attempts in by_layout.items():
            if split == newest:
                kept.extend(attempts)
                continue
            reason = (
                f"written by an earlier run of run id {run} with {_layout_name(split)}, superseded by a "
                f"rerun with {_layout_name(newest)}; not read"
            )
            ignored.extend(SkippedFile(f.path, reason) for a in attempts for f in a.files)
    return sorted(kept, key=lambda a: (a.run_id, a.part))


def _layout_name(split: tuple[int, int]) -> str:
    shards, chunk_rows = split
    words = [f"{shards} shards" if shards else "no shards"]
    if chunk_rows:
        words.append(f"chunks of {chunk_rows} rows")
    return " and ".join(words)


def log_skipped(skipped: Iterable[SkippedFile], table: str) -> None:
    for item in skipped:
        _LOG.warning("%s table: skipped %s", table, item)


def read_part_files(
    paths: Iterable[str], schema: pa.Schema, *, strict: bool = False
) -> tuple[pa.Table, list[SkippedFile]]:
    """Read whole part files (driver side) as one table of ``schema``.

    A file that cannot be read is skipped and returned with the reason, or, with ``strict`` (a run's
    own fresh output, which must not be silently dropped), raises ``PartFileError`` naming it.
    """
    tables, skipped = [], []
    for path in paths:
        try:
            with FileSystems.open(path) as handle:
                tables.append(pq.read_table(pa.BufferReader(handle.read()), schema=schema))
        except Exception as exc:
            reason = f"unreadable part file ({type(exc).__name__}: {exc}); not read"
            if strict:
                raise PartFileError(f"{path}: {reason}") from exc
            skipped.append(SkippedFile(path, reason))
    if not tables:
        return schema.empty_table(), skipped
    return pa.concat_tables(tables), skipped


def remove_older_attempts(output: str, table: str, run_id: str, part: str, attempt: str) -> list[str]:
    """Delete the files of (run, part)'s write attempts older than ``attempt`` (untagged ones included),
    and older files of the run written with another shard layout (which readers no longer read).

    Newer attempts and the other shards of the same layout are left alone. Returns the deleted paths.
    """
    listing = list_run_table(output, table, run_id)
    own = next((a for a in listing.attempts if a.part == part and a.tag == attempt), None)
    if own is None:
        return []
    own_layout = layout(part)
    older = [
        f.path
        for a in listing.attempts
        if a.order < own.order and (a.part == part or layout(a.part) not in (own_layout, None))
        for f in a.files
    ]
    if older:
        FileSystems.delete(older)
    return older


class WriteRunTable(beam.PTransform):
    """Rows (dicts) -> ``{output}/{table}/run={run_id}/{part}-{attempt}-SSSSS-of-NNNNN.parquet``."""

    def __init__(
        self, output: str, table: str, run_id: str, schema: pa.Schema, attempt: str, part: str = "part"
    ):
        super().__init__()
        if not ATTEMPT_TAG.fullmatch(attempt):
            raise ValueError(f"attempt tag must match {_TAG} (see new_attempt()), got {attempt!r}")
        self._prefix = FileSystems.join(output, table, f"run={run_id}", f"{part}-{attempt}")
        self._schema = schema

    def expand(self, rows):
        # The attempt tag also keeps Beam's pre-finalize clean-up (it deletes files matching
        # {prefix}-*-of-NNNNN) within this attempt's own files.
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            self._prefix, self._schema, file_name_suffix=".parquet", shard_name_template="-SSSSS-of-NNNNN"
        )


def part_rows(
    path: str,
    columns: list[str],
    on_damage: Callable[[str, Exception], None],
    batch_rows: int = 1024,
) -> Iterator[dict]:
    """The rows (dicts of ``columns``) of one part file, a batch at a time; a file that cannot be opened or
    read calls ``on_damage(path, error)`` and yields nothing more (rows already yielded from a file damaged
    mid-way stay: they were read intact)."""
    try:
        handle = FileSystems.open(path)
    except Exception as exc:
        on_damage(path, exc)
        return
    try:
        try:
            batches = pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns)
        except Exception as exc:
            on_damage(path, exc)
            return
        while True:
            try:  # only the reading is guarded, not what the caller does with the rows
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:
                on_damage(path, exc)
                return
            yield from batch.to_pylist()
    finally:
        handle.close()


class ReadPartFiles(beam.DoFn):
    """Part-file paths in, their rows (dicts of ``columns``) out, read batch by batch.

    Replaces Beam's ReadAllFromParquet, which raises on a damaged file and so kills the whole run: a
    file that cannot be opened or read is named in a WARNING with the reason, counted in the
    ``dimflow.tables/damaged_part_files`` metric, and yields nothing more.
    """

    def __init__(self, columns: list[str], batch_rows: int = 1024):
        self._columns = list(columns)
        self._batch_rows = batch_rows
        self._damaged = Metrics.counter(METRICS_NAMESPACE, DAMAGED_COUNTER)

    def process(self, path: str) -> Iterator[dict]:
        yield from part_rows(path, self._columns, self._skip, self._batch_rows)

    def _skip(self, path: str, exc: Exception) -> None:
        self._damaged.inc()
        _LOG.warning("skipped damaged part file %s: %s: %s", path, type(exc).__name__, exc)
