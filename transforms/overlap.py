"""A DoFn that keeps several batches in flight on a small thread pool: for stages bound by a remote service.

A rate-limited service (a designer, a judge) answers a batch only when its slowest row is back. Called one
batch at a time, every batch would end with an idle stretch of one reply latency (a 32-row batch at 10
requests/s and 1 s latency: 3.2 s sending, 1 s idle, ~76% of the limit). So each DoFn instance keeps up
to ``max_pending_batches`` batches in flight on a pool of as many threads and emits each batch's outputs
(in order, in the batch's window) as soon as it is done, or at the end of the bundle. The provider's own
limiter, shared by every call in the process, keeps the combined rate and concurrency within the limits
whatever the overlap.

Subclasses say what one batch costs (``call``, on a pool thread: reads and provider calls) and what it
gives (``outputs``, on the bundle thread). Whatever ``call`` holds (source bytes, images) lives only while
its batch is in flight: at most ``max_pending_batches`` batches. ``fixed_batches`` makes the batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue


def fixed_batches(size: int) -> beam.BatchElements:
    """Batches of exactly ``size`` elements (the bundle's last one smaller) for an ``OverlappedBatches``.

    Fixed, not adaptive: BatchElements' adaptive sizing tunes for compute time, but here the pace is set by
    the provider's limiter, and small batches would starve it of rows in flight.
    """
    return beam.BatchElements(min_batch_size=size, max_batch_size=size)


class OverlappedBatches(beam.DoFn):
    """Batches (lists) in; ``outputs(batch, call(batch))`` out, several ``call``s overlapping.

    ``setup_worker`` / ``teardown_worker`` acquire and release what ``call`` uses (clients, readers).
    """

    def __init__(self, max_pending_batches: int = 4, thread_name_prefix: str = "batch"):
        super().__init__()
        self._max_pending = max(1, max_pending_batches)
        self._thread_name_prefix = thread_name_prefix
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Future, list, Any, Any]] = deque()

    # -- what a subclass says
    def setup_worker(self) -> None:
        """Acquire what ``call`` needs (once per DoFn instance, before the first batch)."""

    def teardown_worker(self) -> None:
        """Release what ``setup_worker`` acquired (after the pool has stopped)."""

    def call(self, batch: list) -> Any:
        """Runs on a pool thread: the batch's work. What it returns goes to ``outputs``; it should turn
        per-row problems into results, as an exception fails the bundle."""
        raise NotImplementedError

    def outputs(self, batch: list, result: Any) -> Iterator:
        """Runs on the bundle thread: the batch's outputs (values or ``TaggedOutput``s), in order."""
        raise NotImplementedError

    # -- the machinery
    def setup(self) -> None:
        self.setup_worker()
        self._pool = ThreadPoolExecutor(
            max_workers=self._max_pending, thread_name_prefix=self._thread_name_prefix
        )

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.teardown_worker()

    def start_bundle(self) -> None:
        self._pending = deque()

    def process(
        self, batch: list, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam
    ) -> Iterable:
        assert self._pool is not None
        self._pending.append((self._pool.submit(self.call, batch), batch, window, timestamp))
        while self._pending and (self._pending[0][0].done() or len(self._pending) > self._max_pending):
            yield from self._emit(*self._pending.popleft())

    def finish_bundle(self) -> Iterable:
        while self._pending:
            yield from self._emit(*self._pending.popleft())

    def _emit(self, future: Future, batch: list, window: Any, timestamp: Any) -> Iterator:
        """The batch's outputs as windowed values (they may leave after later elements came in)."""
        for output in self.outputs(batch, future.result()):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, WindowedValue(output.value, timestamp, [window]))
            else:
                yield WindowedValue(output, timestamp, [window])
