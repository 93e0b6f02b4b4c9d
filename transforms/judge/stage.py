"""The Beam judge stage: painted records in, the same records with the judge's verdict on their latest paint
out (``transforms.quality.with_verdict``). Every record comes out, exactly once: a judge that fails is a
``judge_error`` on the row, never a failed row.

Like the design stage, several batches are in flight per DoFn instance (``transforms.overlap``): a remote
judge is bound by its rate limit, not by compute. Records carry no pixels: on the pool thread that then
calls the provider, each row's source is read again (edits; ``transforms.reread``, the job's limits, checked
against the fetched sha256) and its painted image is read back by URI (at most ``limits.max_image_bytes``,
within ``limits.fetch_timeout_s``, checked against the ``output_sha256`` written). A row whose source or
image cannot be read is not sent; its ``judge_error`` says why (the rest of its batch still is). A provider
that raises, or returns a result count that does not match, gives every row it was sent a ``judge_error``;
so does a verdict that breaks the contract (an overall score outside [0, 1]).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator

import apache_beam as beam

from transforms.judge.base import JudgeFailure, JudgeProvider, JudgeRequest, Verdict
from transforms.judge.scores import SCORE_MAX
from transforms.overlap import OverlappedBatches, fixed_batches
from transforms.quality import with_verdict
from transforms.records import MAX_ERROR_CHARS, STAGE_JUDGE, EditRecord, error_text
from transforms.reread import SourceLimits, reread_source
from transforms.sources import SourceError, SourceReader

_SHOWN_HEX = 12

_Result = Verdict | JudgeFailure


def read_painted(reader: SourceReader, record: EditRecord) -> bytes:
    """The record's written image, read back now and checked against the sha256 written; ``SourceError``
    naming the image otherwise."""
    uri, written = record.output_uri, record.output_sha256
    if not uri or not written:
        raise SourceError("no painted image on the record (output_uri / output_sha256 unset): not judged")
    try:
        data = reader.read(uri)
    except SourceError as exc:
        raise SourceError(f"painted image not read back: {exc}") from exc
    except Exception as exc:  # never let one row take the bundle down
        raise SourceError(f"painted image not read back: {uri}: {type(exc).__name__}: {exc}") from exc
    now = hashlib.sha256(data).hexdigest()
    if now != written:
        raise SourceError(
            f"painted image changed since it was written (sha256 {written[:_SHOWN_HEX]}... written, "
            f"{now[:_SHOWN_HEX]}... now): not judged ({uri})"
        )
    return data


def checked(result: object, judge: str) -> _Result:
    """The provider's result if it keeps the contract, else a ``JudgeFailure`` saying how it broke it."""
    if isinstance(result, JudgeFailure):
        return result
    if not isinstance(result, Verdict):
        return JudgeFailure(f"judge {judge} returned {type(result).__name__}, not a Verdict or JudgeFailure")
    problem = None
    if not _number_in(result.overall, 1.0):
        problem = f"judge_overall {result.overall!r}, not a number in [0, 1]"
    elif not isinstance(result.scores, dict) or not all(
        isinstance(name, str) and _number_in(value, SCORE_MAX) for name, value in result.scores.items()
    ):
        problem = f"scores {result.scores!r}, not criteria with numbers in [0, {SCORE_MAX:g}]"
    if problem is None:
        return result
    return JudgeFailure(
        f"judge {judge} returned {problem}"[:MAX_ERROR_CHARS],
        attempts=result.attempts,
        tokens_in=result.tokens_in,
        tokens_out=result.tokens_out,
        latency_s=result.latency_s,
    )


def _number_in(value: object, top: float) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and 0.0 <= value <= top


class _JudgeBatches(OverlappedBatches):
    def __init__(
        self,
        make_judge: Callable[[], JudgeProvider],
        source_limits: SourceLimits,
        image_limits: SourceLimits,
        max_pending_batches: int = 4,
    ):
        super().__init__(max_pending_batches, thread_name_prefix="judge-batch")
        self._make_judge = make_judge
        self._source_limits = source_limits
        self._image_limits = image_limits
        self._provider: JudgeProvider | None = None
        self._sources: SourceReader | None = None
        self._images: SourceReader | None = None
        self._rows = beam.metrics.Metrics.counter("dimflow", "judge_rows")
        self._errors = beam.metrics.Metrics.counter("dimflow", "judge_errors")

    def setup_worker(self) -> None:
        self._provider = self._make_judge()
        self._provider.setup()
        self._sources = self._source_limits.reader()
        self._images = self._image_limits.reader()

    def teardown_worker(self) -> None:
        if self._provider is not None:
            self._provider.teardown()

    def call(self, batch: list[EditRecord]) -> list[_Result]:
        """Runs on the pool: read each row's source and image, send the rows that could be read. One result
        per row, in order; never raises for a row or a provider."""
        assert self._provider is not None and self._sources is not None and self._images is not None
        name = self._provider.name
        results: dict[int, _Result] = {}
        requests: list[JudgeRequest] = []
        sent: list[int] = []
        for index, record in enumerate(batch):
            try:
                source = reread_source(self._sources, record, STAGE_JUDGE)
                edited = read_painted(self._images, record)
            except SourceError as exc:
                results[index] = JudgeFailure(str(exc), attempts=0)
                continue
            requests.append(JudgeRequest(record.id, record.row.instruction, source, edited))
            sent.append(index)
        if requests:
            try:
                answers = list(self._provider.judge(requests))
            except Exception as exc:  # a provider bug: no verdict for the rows it was sent, the run goes on
                answers = [JudgeFailure(f"judge {name} raised {error_text(exc)}")] * len(sent)
            if len(answers) != len(requests):
                error = f"judge {name} returned {len(answers)} results for {len(requests)} requests"
                answers = [JudgeFailure(error)] * len(sent)
            results.update(
                (index, checked(answer, name)) for index, answer in zip(sent, answers, strict=True)
            )
        return [results[index] for index in range(len(batch))]

    def outputs(self, batch: list[EditRecord], results: list[_Result]) -> Iterator[EditRecord]:
        assert self._provider is not None
        self._rows.inc(len(batch))
        self._errors.inc(sum(isinstance(result, JudgeFailure) for result in results))
        for record, result in zip(batch, results, strict=True):
            yield with_verdict(record, result, self._provider.name)


class JudgeRecords(beam.PTransform):
    """Painted records in (``output_uri`` and ``output_sha256`` set), judged records out (one each).

    ``max_batch_size`` rows go to one ``judge`` call; up to ``max_pending_batches`` calls overlap per DoFn
    instance. ``source_limits`` bound the re-read of sources (the fetch stage's limits), ``image_limits``
    the read-back of painted images (the same byte and time limits, without ``limits.source_roots``: the
    images lie under the output).
    """

    def __init__(
        self,
        make_judge: Callable[[], JudgeProvider],
        *,
        source_limits: SourceLimits,
        image_limits: SourceLimits,
        max_batch_size: int = 8,
        max_pending_batches: int = 4,
    ):
        super().__init__()
        self._make_judge = make_judge
        self._source_limits = source_limits
        self._image_limits = image_limits
        self._max_batch_size = max_batch_size
        self._max_pending_batches = max_pending_batches

    def expand(self, records):
        return (
            records
            | "Batch" >> fixed_batches(self._max_batch_size)
            | "Judge"
            >> beam.ParDo(
                _JudgeBatches(
                    self._make_judge, self._source_limits, self._image_limits, self._max_pending_batches
                )
            )
        )
