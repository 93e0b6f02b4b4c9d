"""The blueprint table: the design half of a run, written as Parquet and read back by later runs.

``{output}/blueprints/run={run_id}/part-*.parquet`` holds one row per manifest row of a design or full
run: ``ok`` rows carry the blueprint, ``failed`` rows the stage and error. Later runs join their
records to these tables on ``design_key`` (inside the pipeline, so the table never has to fit in one
worker's memory): a full run reuses blueprints instead of calling the designer again, and
``stage: paint`` takes all its blueprints from them. Each fresh design is also journaled at once under
``blueprints/journal/`` so a run killed before its table was written loses no designer call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.history import DESIGN_COLUMNS, HistoryIndex
from transforms.provenance import RunContext, provenance_row
from transforms.records import STAGE_DESIGN, EditRecord, Failure
from transforms.schema import BLUEPRINT_SCHEMA
from transforms.secrets import Scrubber
from transforms.storage import write_atomic
from transforms.tables import ReadPartFiles, list_run_table, log_skipped

MISSING = "missing"


def blueprint_files(output: str) -> list[str]:
    """The blueprint part files of every earlier run under ``output`` (newest complete write of each run
    and shard; none: an empty list); files left out are logged with the reason."""
    listing = list_run_table(output, "blueprints")
    log_skipped(listing.ignored, "blueprints")
    return listing.files


def blueprint_row(item: EditRecord | Failure, context: RunContext, now: float) -> dict[str, Any]:
    """A designed record or a failure (before or at design) as a row of ``BLUEPRINT_SCHEMA``: its
    provenance row cut to the design half's columns, so both tables say the same of a row."""
    row = provenance_row(item, context, now)
    return {name: row[name] for name in BLUEPRINT_SCHEMA.names}


def _pick(entries: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest ``ok`` entry of a design key, else the newest failure (by finish time, then run id)."""
    entries = sorted(
        entries,
        key=lambda e: (e.get("finished_at") is not None, e.get("finished_at") or 0, e.get("run_id") or ""),
    )
    ok = [e for e in entries if e.get("status") == "ok" and (e.get("blueprint") or "").strip()]
    if ok:
        return ok[-1]
    return entries[-1] if entries else None


def journal_uri(output: str, design_key: str) -> str:
    """Where one design is recorded the moment it is made (a crash loses no paid-for designer call)."""
    return FileSystems.join(output, "blueprints", "journal", design_key[:2], f"{design_key}.json")


def read_journal(output: str, design_key: str) -> dict[str, Any] | None:
    uri = journal_uri(output, design_key)
    if not FileSystems.exists(uri):
        return None
    with FileSystems.open(uri) as handle:
        entry = json.loads(handle.read().decode("utf-8"))
    return entry if (entry.get("blueprint") or "").strip() else None


class JournalDesigns(beam.DoFn):
    """Record each fresh design under ``blueprints/journal/`` as soon as it is made, then pass it on.

    The blueprint table is written when the run ends; the journal is what a rerun after a crash
    (or a preempted node) finds, so it asks the designer nothing it already paid for.
    """

    def __init__(self, output: str, run_id: str, scrub: Scrubber | None = None):
        self._output = output
        self._run_id = run_id
        self._scrub = scrub or Scrubber()

    def process(self, record: EditRecord) -> Iterable[EditRecord]:
        assert record.design_key is not None
        entry = {
            "design_key": record.design_key,
            "designer": record.designer,
            "blueprint": record.blueprint,
            "run_id": self._run_id,
            "finished_at": time.time(),
        }
        write_atomic(
            journal_uri(self._output, record.design_key),
            self._scrub(json.dumps(entry)).encode(),
            "application/json",
            root=self._output,
        )
        yield record


def _reuse(record: EditRecord, blueprint: str, designer: str | None, run_id: str) -> EditRecord:
    return record.evolve(
        blueprint=blueprint,
        designer=designer,
        designer_attempts=0,  # no designer call in this run
        tokens_in=0,
        tokens_out=0,
        design_s=0.0,
        blueprint_run_id=run_id,
    )


def _apply_joined(element: tuple[str, dict[str, list]], required: bool, output: str) -> Iterable:
    key, grouped = element
    yield from apply_entry(key, grouped["records"], _pick(grouped["tables"]), required, output)


class _ApplyFromIndex(beam.DoFn):
    def __init__(self, index: HistoryIndex, output: str, required: bool):
        self._index = index
        self._output = output
        self._required = required

    def process(self, record: EditRecord) -> Iterable:
        assert record.design_key is not None
        entry = self._index.design(record.design_key)
        yield from apply_entry(record.design_key, [record], entry, self._required, self._output)


def apply_entry(
    key: str, records: list[EditRecord], entry: dict[str, Any] | None, required: bool, output: str
) -> Iterable:
    """``records`` of one design key with the blueprint of ``entry`` (the key's ``_pick``ed table row) or,
    when it has none, of the journal; else tagged ``missing`` (a Failure when ``required``). An ``ok``
    entry with a blank blueprint is no blueprint: it is never reused."""
    usable = (
        entry is not None and entry.get("status") == "ok" and bool((entry.get("blueprint") or "").strip())
    )
    if records and not usable:
        journal = read_journal(output, key)  # made by a run that did not finish
        if journal is not None:
            for record in records:
                yield _reuse(
                    record, journal["blueprint"], journal.get("designer"), journal.get("run_id") or ""
                )
            return
    for record in records:
        if usable:
            assert entry is not None
            yield _reuse(record, entry["blueprint"], entry["designer"], entry["run_id"])
        elif not required:
            yield beam.pvalue.TaggedOutput(MISSING, record)
        elif entry is not None:
            reason = entry.get("error") or "it recorded an empty blueprint"
            message = f"no blueprint: the designer failed for this row in run {entry['run_id']}: {reason}"
            yield beam.pvalue.TaggedOutput(MISSING, Failure(record, STAGE_DESIGN, message))
        else:
            message = (
                f"no blueprint for design_key {record.design_key[:16]}... under {output}/blueprints "
                "(stage: paint needs an earlier stage: design run with the same source, instruction and designer)"
            )
            yield beam.pvalue.TaggedOutput(MISSING, Failure(record, STAGE_DESIGN, message))


class LookupBlueprints(beam.PTransform):
    """Records (with ``design_key``) in; main output: records with a blueprint from ``files``.

    Tagged ``missing``: with ``required=False`` the records without one (to be designed now); with
    ``required=True`` (``stage: paint``) a ``Failure`` at stage ``design`` saying why.
    """

    def __init__(self, files: list[str], output: str, *, required: bool, index: HistoryIndex | None = None):
        super().__init__()
        self._files = list(files)
        self._output = output
        self._required = required
        self._index = index

    def expand(self, records):
        if self._index is not None:  # embedded runner: earlier tables from the run's local index
            return records | "ApplyFromIndex" >> beam.ParDo(
                _ApplyFromIndex(self._index, self._output, self._required)
            ).with_outputs(MISSING, main="found")
        pipeline = records.pipeline
        keyed_records = records | "KeyRecords" >> beam.Map(lambda r: (r.design_key, r))
        if self._files:
            entries = (
                pipeline
                | "BlueprintFiles" >> beam.Create(self._files)
                | "ReadBlueprints"
                >> beam.ParDo(ReadPartFiles(DESIGN_COLUMNS))  # skips a damaged file, naming it
                | "KeyEntries" >> beam.Map(lambda e: (e["design_key"], e))
                | "Usable" >> beam.Filter(lambda kv: kv[0] is not None)
            )
        else:
            entries = pipeline | "NoBlueprints" >> beam.Create([])
        return (
            {"records": keyed_records, "tables": entries}
            | "JoinOnDesignKey" >> beam.CoGroupByKey()
            | "Apply"
            >> beam.FlatMap(_apply_joined, self._required, self._output).with_outputs(MISSING, main="found")
        )
