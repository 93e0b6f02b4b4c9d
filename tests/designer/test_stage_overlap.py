"""The design stage keeps several batches in flight per DoFn, and still emits every row once, in its window."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from transforms.designer.base import Design, DesignerProvider, DesignFailure, DesignRequest
from transforms.designer.stage import DesignRecords
from transforms.records import EditRecord, ManifestRow, RowRef
from transforms.reread import SourceLimits

# FnApiRunner runs the DoFn in this process, so module state can observe it.
_STATE = {"active": 0, "peak": 0}
_LOCK = threading.Lock()


class Slow(DesignerProvider):
    """Takes 0.3 s per batch, like a remote call; fails rows whose instruction says so."""

    name = "slow"

    def config(self) -> dict[str, Any]:
        return {"kind": "slow"}

    def design(self, requests: Sequence[DesignRequest]) -> list[Design | DesignFailure]:
        with _LOCK:
            _STATE["active"] += 1
            _STATE["peak"] = max(_STATE["peak"], _STATE["active"])
        time.sleep(0.3)
        with _LOCK:
            _STATE["active"] -= 1
        return [DesignFailure("no") if "fail" in r.instruction else Design(r.instruction) for r in requests]


def test_batches_overlap_and_every_row_comes_out_once():
    _STATE.update(active=0, peak=0)
    records = [
        EditRecord(
            ManifestRow(f"r{i}", "fail" if i % 5 == 0 else f"do {i}", None, None, None, RowRef("m", i))
        )
        for i in range(40)
    ]
    with beam.Pipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create(records)
            | DesignRecords(
                Slow,
                lambda r: r.id,
                max_batch_size=4,
                max_pending_batches=4,
                source_limits=SourceLimits(max_image_bytes=1),
            )
        )
        assert_that(
            out.designed | "D" >> beam.Map(lambda r: (r.id, r.blueprint)),
            equal_to([(f"r{i}", f"do {i}") for i in range(40) if i % 5]),
            label="designed",
        )
        assert_that(
            out.failed | "F" >> beam.Map(lambda f: (f.id, f.error)),
            equal_to([(f"r{i}", "no") for i in range(0, 40, 5)]),
            label="failed",
        )
        # downstream windowing still works on the re-emitted values
        assert_that(
            out.designed
            | beam.WindowInto(beam.window.FixedWindows(60))
            | beam.combiners.Count.Globally().without_defaults(),
            equal_to([32]),
            label="windowed",
        )
    assert _STATE["peak"] >= 2, _STATE
    assert _STATE["peak"] <= 4  # the pool runs at most max_pending_batches calls
