"""The Beam stage around a designer provider: batches in, records with blueprints (or failures) out."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import apache_beam as beam

from transforms.designer.base import Design, DesignerProvider, DesignRequest
from transforms.records import STAGE_DESIGN, EditRecord, Failure

FAILED = "failed"


class _DesignBatches(beam.DoFn):
    def __init__(self, make_provider: Callable[[], DesignerProvider], design_key: Callable[[EditRecord], str]):
        self._make_provider = make_provider
        self._design_key = design_key
        self._provider: DesignerProvider | None = None
        self._calls = beam.metrics.Metrics.counter("dimflow", "designer_rows")

    def setup(self) -> None:
        self._provider = self._make_provider()
        self._provider.setup()

    def teardown(self) -> None:
        if self._provider is not None:
            self._provider.teardown()

    def process(self, batch: list[EditRecord]) -> Iterable:
        assert self._provider is not None
        requests = [DesignRequest(r.id, r.row.instruction, r.source_bytes) for r in batch]
        try:
            results = self._provider.design(requests)
        except Exception as exc:  # a provider bug must not take the run down: fail the batch's rows
            message = f"designer {self._provider.name} raised {type(exc).__name__}: {exc}"
            for record in batch:
                yield beam.pvalue.TaggedOutput(FAILED, Failure(record, STAGE_DESIGN, message))
            return
        if len(results) != len(batch):
            raise RuntimeError(f"designer {self._provider.name} returned {len(results)} results for {len(batch)}")
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
                )
                yield beam.pvalue.TaggedOutput(FAILED, Failure(failed, STAGE_DESIGN, result.error))


class DesignRecords(beam.PTransform):
    """Records in; main output: records with blueprints; tagged ``failed``: ``Failure``s."""

    def __init__(
        self,
        make_provider: Callable[[], DesignerProvider],
        design_key: Callable[[EditRecord], str],
        max_batch_size: int = 16,
    ):
        super().__init__()
        self._make_provider = make_provider
        self._design_key = design_key
        self._max_batch_size = max_batch_size

    def expand(self, records):
        return (
            records
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._max_batch_size)
            | "Design" >> beam.ParDo(_DesignBatches(self._make_provider, self._design_key)).with_outputs(
                FAILED, main="designed"
            )
        )

