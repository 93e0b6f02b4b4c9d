"""A painter that raises leaves a provenance error written like every other stage's: ``Type: message``."""

from __future__ import annotations

import sys
import traceback

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.testing.util import assert_that, equal_to

from transforms.paint_stage import PaintKey, failed_paint_batch
from transforms.painter.base import PaintRequest
from transforms.records import MAX_ERROR_CHARS, EditRecord, ManifestRow, RowRef, error_text


class _Model:
    """Beam's Shared keeps a weak reference to the model: a plain object() cannot be one."""


class _Exploding(ModelHandler):
    def load_model(self):
        return _Model()

    def run_inference(self, batch, model, inference_args=None):
        try:
            raise KeyError("the cache")
        except KeyError as cause:
            raise ValueError("row 'a': cannot paint a 33 px canvas\nthe grid is 32 px") from cause


def _record(row_id: str) -> EditRecord:
    row = ManifestRow(
        id=row_id, instruction="x", source=None, seed=1, metadata=None, ref=RowRef("m.jsonl", 1)
    )
    return EditRecord(row, seed=1)


def test_runinference_dead_letters_read_like_other_errors():
    expected = "ValueError: row 'a': cannot paint a 33 px canvas\nthe grid is 32 px"
    with beam.Pipeline("FnApiRunner") as pipeline:
        elements = pipeline | beam.Create(
            [(PaintKey(_record(i)), PaintRequest(key=i, prompt="x", seed=1, source=None)) for i in ("a", "b")]
        )
        _good, dlq = elements | RunInference(KeyedModelHandler(_Exploding())).with_exception_handling()
        errors = (
            dlq.failed_inferences
            | beam.FlatMap(failed_paint_batch)
            | beam.Map(lambda f: (f.id, f.stage, f.error))
        )
        assert_that(errors, equal_to([("a", "paint", expected), ("b", "paint", expected)]))


def _beam_triple(exc: BaseException) -> tuple:
    try:
        raise exc
    except BaseException as caught:
        return (type(caught), repr(caught), traceback.format_exception(*sys.exc_info()))


def test_error_text_of_exceptions_and_beam_triples():
    assert error_text(FileNotFoundError("gone")) == "FileNotFoundError: gone"
    assert error_text(_beam_triple(RuntimeError("out of memory"))) == "RuntimeError: out of memory"
    assert error_text(_beam_triple(RuntimeError())) == "RuntimeError"
    noted = RuntimeError("boom")
    noted.add_note("a note after the message")
    assert error_text(_beam_triple(noted)) == "RuntimeError: boom"
    long = error_text(_beam_triple(ValueError("x" * 5000)))
    assert len(long) < MAX_ERROR_CHARS + 60 and long.endswith("more characters]")
