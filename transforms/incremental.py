"""Incremental runs: a row whose render key already has its image under the output is ``skipped``.

The render key covers the source bytes, instruction, seed, designer and painter config and checkpoint,
so an existing image with that key is exactly what painting again would produce. Images are written
atomically (``images.write_output``), so an image that exists is complete, even if the run that wrote
it was killed before its provenance was written. Earlier provenance supplies the image's sha256 and
blueprint (joined on render key inside the pipeline); an image with no provenance row (that crashed
run) is hashed once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import images
from transforms.history import RENDERED_COLUMNS, HistoryIndex
from transforms.records import EditRecord
from transforms.tables import ReadPartFiles, list_run_table, log_skipped

TODO = "todo"


def provenance_files(output: str) -> list[str]:
    """Earlier runs' provenance files to join on (newest complete write of each run and shard);
    files left out are logged with the reason."""
    listing = list_run_table(output, "provenance")
    log_skipped(listing.ignored, "provenance")
    return listing.files


def _sha256(uri: str) -> str:
    digest = hashlib.sha256()
    with FileSystems.open(uri) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def decide(record: EditRecord, known: Callable[[str], dict | None], output: str, fmt: str) -> Iterable:
    """``record`` as ``skipped`` when its image exists (with what the earlier row that wrote it says:
    ``known(uri)``), else tagged ``todo``."""
    assert record.render_key is not None
    uri = images.output_uri(output, record.id, record.render_key, fmt)
    if not FileSystems.exists(uri):
        yield beam.pvalue.TaggedOutput(TODO, record)
        return
    entry = known(uri)
    yield record.evolve(
        skipped=True,
        output_uri=uri,
        output_sha256=entry["output_sha256"] if entry else _sha256(uri),
        blueprint=entry.get("blueprint") if entry else None,
        designer=entry.get("designer") if entry else None,
        design_key=(entry.get("design_key") if entry else None) or record.design_key,
    )


def _decide_joined(element: tuple[str, dict[str, list]], output: str, fmt: str) -> Iterable:
    _key, grouped = element
    earlier = [
        e for e in grouped["earlier"] if e.get("status") in ("ok", "skipped") and e.get("output_sha256")
    ]

    def known(uri: str) -> dict | None:
        return next((e for e in earlier if e.get("output_uri") == uri), None)

    for record in grouped["records"]:
        yield from decide(record, known, output, fmt)


class _DecideFromIndex(beam.DoFn):
    def __init__(self, index: HistoryIndex, output: str, fmt: str):
        self._index = index
        self._output = output
        self._fmt = fmt

    def process(self, record: EditRecord) -> Iterable:
        assert record.render_key is not None
        key = record.render_key
        yield from decide(record, lambda uri: self._index.rendered(key, uri), self._output, self._fmt)


class SkipRendered(beam.PTransform):
    """Records (with render keys) in; main output: ``skipped`` records; tagged ``todo``: the rest.

    Earlier provenance comes from a ``HistoryIndex`` (embedded runner: no history in memory) or, without
    one, is joined in the pipeline from ``files`` (distributed runners).
    """

    def __init__(self, output: str, fmt: str, files: list[str], index: HistoryIndex | None = None):
        super().__init__()
        self._output = output
        self._fmt = fmt
        self._files = list(files)
        self._index = index

    def expand(self, records):
        if self._index is not None:
            return records | "DecideFromIndex" >> beam.ParDo(
                _DecideFromIndex(self._index, self._output, self._fmt)
            ).with_outputs(TODO, main="skipped")
        keyed = records | "KeyByRenderKey" >> beam.Map(lambda r: (r.render_key, r))
        if self._files:
            earlier = (
                records.pipeline
                | "ProvenanceFiles" >> beam.Create(self._files)
                | "ReadProvenance"
                >> beam.ParDo(ReadPartFiles(RENDERED_COLUMNS))  # skips a damaged file, naming it
                | "Rendered" >> beam.Filter(lambda e: e.get("render_key") is not None)
                | "KeyEntries" >> beam.Map(lambda e: (e["render_key"], e))
            )
        else:
            earlier = records.pipeline | "NoProvenance" >> beam.Create([])
        return (
            {"records": keyed, "earlier": earlier}
            | "JoinOnRenderKey" >> beam.CoGroupByKey()
            | "Decide"
            >> beam.FlatMap(_decide_joined, self._output, self._fmt).with_outputs(TODO, main="skipped")
        )
