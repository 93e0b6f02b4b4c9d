"""Incremental runs: a row whose image is already under the output is ``skipped``.

Without a judge, a row is done when its render key's image exists: the render key covers the source
bytes, instruction, seed, designer and painter config and checkpoint, so an existing image with that key is
exactly what painting again would produce. Images are written atomically (``images.write_output``), so an
image that exists is complete, even if the run that wrote it was killed before its provenance was written.
Earlier provenance supplies the image's sha256 and blueprint (joined on render key inside the pipeline, or
looked up in a ``HistoryIndex``); an image with no provenance row (that crashed run) is hashed once. An
image whose newest earlier row is ``rejected`` (judged below the bar) is not done: it is painted again.

With a judge, a row is done when an earlier row with its quality key (its first paint's render key, the
judge's config, ``quality.min_overall`` and ``quality.max_paints``: ``schema.quality_key``) ended ``ok`` or
``skipped`` and that row's image still exists; the skipped row carries that row's image, render key, seed
and verdict. The newest such row decides: ``rejected`` is never done, so a rejected row is painted (and
judged) again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import images
from transforms.history import RENDERED_COLUMNS, HistoryIndex, epoch_seconds, recorded
from transforms.records import EditRecord, Judging
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


DONE_STATUSES = ("ok", "skipped")


def decide(record: EditRecord, known: Callable[[str], dict | None], output: str, fmt: str) -> Iterable:
    """``record`` as ``skipped`` when its image exists and its newest earlier row (``known(uri)``) is not
    ``rejected`` (with what that row says of the image), else tagged ``todo``."""
    assert record.render_key is not None
    uri = images.output_uri(output, record.id, record.render_key, fmt)
    if not FileSystems.exists(uri):
        yield beam.pvalue.TaggedOutput(TODO, record)
        return
    entry = known(uri)
    if entry is not None and entry.get("status") not in DONE_STATUSES:  # rejected: not done
        yield beam.pvalue.TaggedOutput(TODO, record)
        return
    yield record.evolve(
        skipped=True,
        output_uri=uri,
        output_sha256=entry["output_sha256"] if entry else _sha256(uri),
        blueprint=entry.get("blueprint") if entry else None,
        designer=entry.get("designer") if entry else None,
        design_key=(entry.get("design_key") if entry else None) or record.design_key,
    )


def _scores(text: Any) -> dict[str, float] | None:
    """An earlier row's ``judge_scores`` JSON back as a dict (None if absent or not a JSON object)."""
    try:
        scores = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return scores if isinstance(scores, dict) else None


def decide_judged(record: EditRecord, earlier: Iterable[dict], output: str, fmt: str) -> Iterable:
    """``record`` as ``skipped`` when the newest earlier row of its quality key that wrote this row's image
    (``earlier``: rows with its quality key, newest first) ended ``ok`` or ``skipped`` and that image still
    exists; else tagged ``todo``."""
    assert record.quality_key is not None, "a judged job's records carry quality keys"
    for entry in earlier:
        try:
            uri = images.output_uri(output, record.id, entry["render_key"], fmt)
        except ValueError:  # not a render key this output could have
            continue
        if entry.get("output_uri") != uri:  # another row's (id's) image, or another output's
            continue
        if entry.get("status") not in DONE_STATUSES or not FileSystems.exists(uri):
            break
        yield record.evolve(
            skipped=True,
            output_uri=uri,
            output_sha256=entry["output_sha256"],
            render_key=entry["render_key"],
            seed=entry.get("seed") if entry.get("seed") is not None else record.seed,
            blueprint=entry.get("blueprint"),
            designer=entry.get("designer"),
            design_key=entry.get("design_key") or record.design_key,
            judging=Judging(
                judge=entry.get("judge"),
                scores=_scores(entry.get("judge_scores")),
                overall=entry.get("judge_overall"),
                reason=entry.get("judge_reason"),
            ),
        )
        return
    yield beam.pvalue.TaggedOutput(TODO, record)


def _newest_first(entries: Iterable[dict]) -> list[dict]:
    """As ``HistoryIndex`` orders them: by finish time (rows without one last), then run id, newest first."""
    return sorted(
        entries,
        key=lambda e: (
            e.get("finished_at") is not None,
            epoch_seconds(e.get("finished_at")) or 0.0,
            e.get("run_id") or "",
        ),
        reverse=True,
    )


def _decide_joined(element: tuple[str, dict[str, list]], output: str, fmt: str, judged: bool) -> Iterable:
    _key, grouped = element
    earlier = _newest_first(e for e in grouped["earlier"] if recorded(e))

    def known(uri: str) -> dict | None:
        return next((e for e in earlier if e.get("output_uri") == uri), None)

    for record in grouped["records"]:
        if judged:
            yield from decide_judged(record, earlier, output, fmt)
        else:
            yield from decide(record, known, output, fmt)


class _DecideFromIndex(beam.DoFn):
    def __init__(self, index: HistoryIndex, output: str, fmt: str, judged: bool):
        self._index = index
        self._output = output
        self._fmt = fmt
        self._judged = judged

    def process(self, record: EditRecord) -> Iterable:
        if self._judged:
            assert record.quality_key is not None
            earlier = self._index.judged(record.quality_key)
            yield from decide_judged(record, earlier, self._output, self._fmt)
            return
        assert record.render_key is not None
        key = record.render_key
        yield from decide(record, lambda uri: self._index.rendered(key, uri), self._output, self._fmt)


class SkipRendered(beam.PTransform):
    """Records (with render keys; with ``judged``, quality keys) in; main output: ``skipped`` records; tagged
    ``todo``: the rest.

    Earlier provenance comes from a ``HistoryIndex`` (embedded runner: no history in memory) or, without
    one, is joined in the pipeline from ``files`` (distributed runners), on the quality key when the job has
    a judge (``judged``), else on the render key.
    """

    def __init__(
        self,
        output: str,
        fmt: str,
        files: list[str],
        index: HistoryIndex | None = None,
        *,
        judged: bool = False,
    ):
        super().__init__()
        self._output = output
        self._fmt = fmt
        self._files = list(files)
        self._index = index
        self._judged = judged

    def expand(self, records):
        if self._index is not None:
            return records | "DecideFromIndex" >> beam.ParDo(
                _DecideFromIndex(self._index, self._output, self._fmt, self._judged)
            ).with_outputs(TODO, main="skipped")
        column = "quality_key" if self._judged else "render_key"
        keyed = records | "KeyRecords" >> beam.Map(lambda r, c=column: (getattr(r, c), r))
        if self._files:
            earlier = (
                records.pipeline
                | "ProvenanceFiles" >> beam.Create(self._files)
                | "ReadProvenance"
                >> beam.ParDo(ReadPartFiles(RENDERED_COLUMNS))  # skips a damaged file, naming it
                | "Recorded" >> beam.Filter(lambda e, c=column: e.get(c) is not None and recorded(e))
                | "KeyEntries" >> beam.Map(lambda e, c=column: (e[c], e))
            )
        else:
            earlier = records.pipeline | "NoProvenance" >> beam.Create([])
        return (
            {"records": keyed, "earlier": earlier}
            | "JoinEarlier" >> beam.CoGroupByKey()
            | "Decide"
            >> beam.FlatMap(_decide_joined, self._output, self._fmt, self._judged).with_outputs(
                TODO, main="skipped"
            )
        )
