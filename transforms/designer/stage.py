"""The Beam stage around a designer provider: batches in, records with blueprints (or failures) out.

A remote designer is bound by its rate limit, not by compute, and ``design(batch)`` returns only when
the batch's slowest row is back. Called one batch at a time, every batch would end with an idle
stretch of one reply latency (a 32-row batch at 10 requests/s and 1 s latency: 3.2 s sending, 1 s
idle, ~76% of the limit). So each DoFn instance keeps up to ``max_pending_batches`` batches in flight
on a small thread pool and emits each batch's results (in order, in the batch's window) as soon as
it is done, or at the end of the bundle. The provider's own limiter, shared by every call in the
process, keeps the combined rate and concurrency within the limits whatever the overlap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from transforms.designer.base import Design, DesignerProvider, DesignRequest
from transforms.records import STAGE_DESIGN, EditRecord, Failure

FAILED = "failed"


class _DesignBatches(beam.DoFn):
    def __init__(
        self,
        make_provider: Callable[[], DesignerProvider],
        design_key: Callable[[EditRecord], str],
        max_pending_batches: int = 4,
    ):
        self._make_provider = make_provider
        self._design_key = design_key
        self._max_pending = max(1, max_pending_batches)
        self._provider: DesignerProvider | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Future, list[EditRecord], Any, Any]] = deque()
        self._calls = beam.metrics.Metrics.counter("dimflow", "designer_rows")

    def setup(self) -> None:
        self._provider = self._make_provider()
        self._provider.setup()
        self._pool = ThreadPoolExecutor(max_workers=self._max_pending, thread_name_prefix="design-batch")

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._provider is not None:
            self._provider.teardown()

    def start_bundle(self) -> None:
        self._pending = deque()

    def process(
        self, batch: list[EditRecord], window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam
    ) -> Iterable:
        assert self._provider is not None and self._pool is not None
        requests = [DesignRequest(r.id, r.row.instruction, r.source_bytes) for r in batch]
        self._pending.append((self._pool.submit(self._provider.design, requests), batch, window, timestamp))
        while self._pending and (self._pending[0][0].done() or len(self._pending) > self._max_pending):
            yield from self._emit(*self._pending.popleft())

    def finish_bundle(self) -> Iterable:
        while self._pending:
            yield from self._emit(*self._pending.popleft())

    def _emit(self, future: Future, batch: list[EditRecord], window: Any, timestamp: Any) -> Iterator:
        """The batch's outputs as windowed values (they may leave after later elements came in)."""
        for output in self._outputs(future, batch):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, WindowedValue(output.value, timestamp, [window]))
            else:
                yield WindowedValue(output, timestamp, [window])

    def _outputs(self, future: Future, batch: list[EditRecord]) -> Iterator:
        assert self._provider is not None
        try:
            results = future.result()
        except Exception as exc:  # a provider bug must not take the run down: fail the batch's rows
            message = f"designer {self._provider.name} raised {type(exc).__name__}: {exc}"
            for record in batch:
                yield beam.pvalue.TaggedOutput(FAILED, Failure(record, STAGE_DESIGN, message))
            return
        if len(results) != len(batch):
            raise RuntimeError(
                f"designer {self._provider.name} returned {len(results)} results for {len(batch)}"
            )
        self._calls.inc(len(batch))
        for record, result in zip(batch, results, strict=True):
            if isinstance(result, Design):
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
    DoFn instance (see the module docstring).
    """

    def __init__(
        self,
        make_provider: Callable[[], DesignerProvider],
        design_key: Callable[[EditRecord], str],
        max_batch_size: int = 16,
        max_pending_batches: int = 4,
    ):
        super().__init__()
        self._make_provider = make_provider
        self._design_key = design_key
        self._max_batch_size = max_batch_size
        self._max_pending_batches = max_pending_batches

    def expand(self, records):
        return (
            records
            # Fixed-size batches: BatchElements' adaptive sizing tunes for compute time, but here the
            # pace is set by the provider's limiter and small batches would starve it of rows in flight.
            | "Batch"
            >> beam.BatchElements(min_batch_size=self._max_batch_size, max_batch_size=self._max_batch_size)
            | "Design"
            >> beam.ParDo(
                _DesignBatches(self._make_provider, self._design_key, self._max_pending_batches)
            ).with_outputs(FAILED, main="designed")
        )
