"""The designer stage: pass-through provider, per-row failures, and a provider that raises."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from transforms.designer.base import Design, DesignerProvider, DesignFailure, DesignRequest
from transforms.designer.none import PassThroughDesigner
from transforms.designer.registry import make_provider
from transforms.designer.stage import DesignRecords
from transforms.records import EditRecord, ManifestRow, RowRef
from transforms.reread import SourceLimits


def record(row_id: str, instruction: str) -> EditRecord:
    return EditRecord(ManifestRow(row_id, instruction, None, None, None, RowRef("m.jsonl", 1)))


class Picky(DesignerProvider):
    """Refuses instructions containing 'refuse'; raises on 'explode' (a provider bug)."""

    name = "picky"

    def config(self) -> dict[str, Any]:
        return {"kind": "picky"}

    def design(self, requests: Sequence[DesignRequest]) -> list[Design | DesignFailure]:
        if any("explode" in r.instruction for r in requests):
            raise RuntimeError("boom")
        return [
            DesignFailure("model refused", attempts=2)
            if "refuse" in r.instruction
            else Design(r.instruction.upper(), attempts=1, tokens_in=3, tokens_out=5, latency_s=0.1)
            for r in requests
        ]


def test_pass_through_provider():
    provider = make_provider({"kind": "none"})
    assert isinstance(provider, PassThroughDesigner) and provider.config() == {"kind": "none"}
    (result,) = provider.design([DesignRequest("a", "make it blue", None)])
    assert result.blueprint == "make it blue"


def test_unknown_provider_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="designer.kind='gpt5'"):
        make_provider({"kind": "gpt5", "model": "x"})


def test_failures_become_design_failures_and_the_rest_goes_on():
    records = [record("a", "white background"), record("b", "please refuse"), record("c", "explode now")]
    with beam.Pipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create(records)
            | DesignRecords(
                Picky, lambda r: f"dk-{r.id}", max_batch_size=1, source_limits=SourceLimits(max_image_bytes=1)
            )
        )
        designed = out.designed | "D" >> beam.Map(
            lambda r: (r.id, r.blueprint, r.designer, r.design_key, r.designer_attempts, r.tokens_out)
        )
        failed = out.failed | "F" >> beam.Map(lambda f: (f.id, f.stage, f.error))
        assert_that(designed, equal_to([("a", "WHITE BACKGROUND", "picky", "dk-a", 1, 5)]), label="ok")
        assert_that(
            failed,
            equal_to(
                [
                    ("b", "design", "model refused"),
                    ("c", "design", "designer picky raised RuntimeError: boom"),
                ]
            ),
            label="failed",
        )
