"""The Beam stage around a designer provider: batches in, records with blueprints (or failures) out.

A remote designer is bound by its rate limit, not by compute, so each DoFn instance keeps several batches in
flight (``transforms.overlap.OverlappedBatches``: up to ``max_pending_batches`` on a small pool, each
batch's results emitted in order, in its window). The provider's own limiter, shared by every call in the
process, keeps the combined rate and concurrency within the limits whatever the overlap.

Records carry no image bytes. For a provider that looks at images (``needs_image``), each batch's
sources are read again on the pool thread that then calls the provider, through a ``SourceReader``
with the job's limits, and checked against the fetched sha256 (``transforms.reread``); a row whose
source cannot be read or changed fails at ``design`` and is not sent, the rest of its batch still is.
So the bytes live only while their batch is in flight (at most ``max_pending_batches`` batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import apache_beam as beam

from transforms.designer.base import Design, DesignerProvider, DesignFailure, DesignRequest
from transforms.overlap import OverlappedBatches, fixed_batches
from transforms.records import STAGE_DESIGN, EditRecord, Failure
from transforms.reread import SourceLimits, reread_source
from transforms.sources import SourceError, SourceReader

FAILED = "failed"

# What the pool hands back per row: the provider's answer, or the error of a row it never saw.
_Outcome = Design | DesignFailure | str


class _DesignBatches(OverlappedBatches):
    def __init__(
        self,
        make_provider: Callable[[], DesignerProvider],
        design_key: Callable[[EditRecord], str],
        source_limits: SourceLimits,
        max_pending_batches: int = 4,
    ):
        super().__init__(max_pending_batches, thread_name_prefix="design-batch")
        self._make_provider = make_provider
        self._design_key = design_key
        self._source_limits = source_limits
        self._provider: DesignerProvider | None = None
        self._reader: SourceReader | None = None  # only for a provider that looks at images
        self._calls = beam.metrics.Metrics.counter("dimflow", "designer_rows")

    def setup_worker(self) -> None:
        self._provider = self._make_provider()
        self._provider.setup()
        self._reader = self._source_limits.reader() if self._provider.needs_image else None

    def teardown_worker(self) -> None:
        if self._provider is not None:
            self._provider.teardown()

    def call(self, batch: list[EditRecord]) -> list[_Outcome]:
        """Runs on the pool: read the batch's sources again (when the provider looks at images), then send
        the rows that could be read to the provider. One outcome per row, in order; raises only when the
        provider breaks its contract (a result count that does not match)."""
        assert self._provider is not None
        outcomes: dict[int, _Outcome] = {}
        requests: list[DesignRequest] = []
        sent: list[int] = []  # the batch positions of ``requests``
        for index, record in enumerate(batch):
            image = None
            if self._reader is not None:
                try:
                    image = reread_source(self._reader, record, STAGE_DESIGN)
                except SourceError as exc:
                    outcomes[index] = str(exc)
                    continue
            requests.append(DesignRequest(record.id, record.row.instruction, image))
            sent.append(index)
        if requests:
            try:
                results: list[_Outcome] = list(self._provider.design(requests))
            except Exception as exc:  # a provider bug must not take the run down: fail the rows it was sent
                results = [f"designer {self._provider.name} raised {type(exc).__name__}: {exc}"] * len(sent)
            if len(results) != len(requests):
                raise RuntimeError(
                    f"designer {self._provider.name} returned {len(results)} results for {len(requests)}"
                )
            outcomes.update(zip(sent, results, strict=True))
        return [outcomes[index] for index in range(len(batch))]

    def outputs(self, batch: list[EditRecord], results: list[_Outcome]) -> Iterator:
        assert self._provider is not None
        self._calls.inc(sum(isinstance(result, (Design, DesignFailure)) for result in results))
        for record, result in zip(batch, results, strict=True):
            if isinstance(result, str):  # never sent: its source could not be read again, or the call raised
                yield beam.pvalue.TaggedOutput(FAILED, Failure(record, STAGE_DESIGN, result))
            elif isinstance(result, Design):
                yield record.evolve(
                    blueprint=result.blueprint,
                    designer=self._provider.name,
                    design_key=self._design_key(record),
                    designer_attempts=result.attempts,
                    tokens_in=result.tokens_in,
                    tokens_out=result.tokens_out,
                    design_s=result.latency_s,
                )
            else:
                failed = record.evolve(
                    designer=self._provider.name,
                    design_key=self._design_key(record),
                    designer_attempts=result.attempts,
                    tokens_in=result.tokens_in,
                    tokens_out=result.tokens_out,
                    design_s=result.latency_s,
                )
                yield beam.pvalue.TaggedOutput(FAILED, Failure(failed, STAGE_DESIGN, result.error))


class DesignRecords(beam.PTransform):
    """Records in; main output: records with blueprints; tagged ``failed``: ``Failure``s.

    ``max_batch_size`` rows go to one ``design`` call; up to ``max_pending_batches`` calls overlap per
    DoFn instance (see the module docstring). ``source_limits`` bound the reads of sources for a provider
    that looks at images (the fetch stage's limits).
    """

    def __init__(
        self,
        make_provider: Callable[[], DesignerProvider],
        design_key: Callable[[EditRecord], str],
        max_batch_size: int = 16,
        max_pending_batches: int = 4,
        *,
        source_limits: SourceLimits,
    ):
        super().__init__()
        self._make_provider = make_provider
        self._design_key = design_key
        self._source_limits = source_limits
        self._max_batch_size = max_batch_size
        self._max_pending_batches = max_pending_batches

    def expand(self, records):
        return (
            records
            | "Batch" >> fixed_batches(self._max_batch_size)
            | "Design"
            >> beam.ParDo(
                _DesignBatches(
                    self._make_provider, self._design_key, self._source_limits, self._max_pending_batches
                )
            ).with_outputs(FAILED, main="designed")
        )
