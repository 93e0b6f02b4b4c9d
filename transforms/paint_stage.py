"""The fused paint stage of one mode: re-read each source (and mask), RunInference, finish and write images.

``PaintMode`` is ``ToPaintRequest`` -> ``RunInference(PainterModelHandler)`` -> ``WriteImages``, one fused
Beam stage, so neither the source bytes, the mask nor the painted image ever sit in a PCollection between
stages: only small records (with the written image's URI and sha256) and ``Failure``s leave it. Every
paint of a row goes through it, the first and each best-of-N repaint alike.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from transforms import composite, images
from transforms.painter.base import Painting, PaintRequest
from transforms.painter.handler import PainterModelHandler, PaintFailure
from transforms.records import STAGE_PAINT, STAGE_WRITE, EditRecord, Failure, error_text
from transforms.reread import SourceLimits, reread_mask, reread_source
from transforms.sources import SourceError, SourceReader

FAILED = "failed"


@dataclass(frozen=True)
class Compositing:
    """What the write step needs to finish an edit row's image: ``painter.output_size``, ``mask.*`` and the
    pixel limit its source and mask were fetched under (transforms/composite.py does the pixels)."""

    output_size: str = "resolution"
    feather_px: int = 0
    invert: bool = False
    max_pixels: int = 0


class PaintKey(NamedTuple):
    """The key of a row in the fused paint stage (ToPaintRequest -> RunInference -> WriteImages): its
    record, and its mask's bytes (read again in ToPaintRequest) for the composite; they never leave it."""

    record: EditRecord
    mask: bytes | None = None


class ToPaintRequest(beam.DoFn):
    """``EditRecord`` -> ``(PaintKey(record, mask bytes), PaintRequest)`` with the source's bytes, read again
    here, and a masked row's mask bytes, read again too (for the composite in ``WriteImages``).

    Right before RunInference (and fused with it), so the bytes never sit in a PCollection between
    stages. The reads have the fetch stage's limits and must give the fetched bytes (``reread_source``,
    ``reread_mask``); otherwise the row leaves on the ``failed`` output as ``Failure(record, "paint",
    message)``. With ``native_mask`` (``mask.mode: native+composite``) the request also carries the mask,
    as a binary PNG at the source's upright size, white = may change (``mask.invert`` applied): a painter
    kind that takes masks uses it, the others ignore it.
    """

    def __init__(
        self, limits: SourceLimits, *, native_mask: bool = False, compositing: Compositing | None = None
    ):
        self._limits = limits
        self._native_mask = native_mask
        self._compositing = compositing or Compositing()
        self._reader: SourceReader | None = None

    def setup(self) -> None:
        self._reader = self._limits.reader()

    def process(self, record: EditRecord) -> Iterable:
        assert self._reader is not None
        assert record.seed is not None and record.blueprint is not None
        try:
            source = reread_source(self._reader, record, STAGE_PAINT)
            mask = reread_mask(self._reader, record, STAGE_PAINT)
            native = self._native(mask) if self._native_mask and mask is not None else None
        except SourceError as exc:
            yield beam.pvalue.TaggedOutput(FAILED, Failure(record, STAGE_PAINT, str(exc)))
            return
        request = PaintRequest(
            key=record.id, prompt=record.blueprint, seed=record.seed, source=source, mask=native
        )
        yield PaintKey(record, mask), request

    def _native(self, mask: bytes) -> bytes:
        """The mask as painters take it: binary PNG, white = may change, upright."""
        settings = self._compositing
        binary = images.decode_mask(mask, max_pixels=settings.max_pixels, invert=settings.invert)
        return images.encode_image(binary, "png")


def failed_paint_batch(element: tuple[list, Any]) -> Iterable[Failure]:
    """RunInference's dead letters are (batch, error): every row of the batch failed. Beam gives the error
    as (type, repr, formatted traceback); provenance gets it as every other stage writes errors."""
    batch, error = element
    message = error_text(error)
    for key, _request in batch:
        yield Failure(key.record, STAGE_PAINT, message)


class WriteImages(beam.DoFn):
    """Finish, encode and write each painted image under ``images/{id}/{render_key[:16]}.{fmt}``; a row the
    painter failed alone (``PaintFailure``) leaves as ``Failure(record, "paint", its error)``.

    Finishing an edit row (``compositing``): a masked row is composited over its source
    (``transforms.composite``: locked pixels are the source's), and ``painter.output_size: source`` resizes
    every edit row to its source's size. A masked row's written bytes are decoded again and compared with
    the source over its locked pixels: ``locked_max_abs_diff`` (0 when exact; lossy formats are not).

    Only the record leaves (with the painter's fields and the output's URI and sha256): the request's
    source bytes, the mask and the painted image stay behind, so what follows holds no pixels.
    """

    def __init__(self, output: str, fmt: str, compositing: Compositing | None = None):
        self._output = output
        self._fmt = fmt
        self._compositing = compositing or Compositing()

    def process(self, element: tuple[PaintKey, PredictionResult]) -> Iterable:
        key, result = element
        record = key.record
        if isinstance(result.inference, PaintFailure):  # the row failed when painted alone
            failure: PaintFailure = result.inference
            yield beam.pvalue.TaggedOutput(
                FAILED, Failure(record.evolve(paint=dict(failure.fields)), STAGE_PAINT, failure.error)
            )
            return
        painting: Painting = result.inference
        record = record.evolve(paint=dict(painting.fields), paint_s=painting.paint_s)
        try:
            facts: dict[str, Any] = {}
            data = self._encoded(record, painting.image, result.example.source, key.mask, facts)
            assert record.render_key is not None
            uri = images.write_output(self._output, record.id, record.render_key, self._fmt, data)
        except Exception as exc:  # a storage (or composite) error fails this row, not the run
            yield beam.pvalue.TaggedOutput(FAILED, Failure(record, STAGE_WRITE, error_text(exc)))
            return
        yield record.evolve(
            paint={**record.paint, **facts},
            output_uri=uri,
            output_sha256=hashlib.sha256(data).hexdigest(),
            finished_at=time.time(),
        )

    def _encoded(
        self, record: EditRecord, painted: Any, source: bytes | None, mask: bytes | None, facts: dict
    ) -> bytes:
        """The row's finished image, encoded; ``facts`` gets what provenance says of it (written size,
        locked share, locked_max_abs_diff)."""
        settings = self._compositing
        image = painted
        if source is not None and mask is not None:
            upright = images.decode_image(source, max_pixels=settings.max_pixels)
            binary = images.decode_mask(mask, max_pixels=settings.max_pixels, invert=settings.invert)
            image, facts["locked_fraction"] = composite.composite(
                upright, painted, binary, settings.feather_px, settings.output_size
            )
        elif source is not None and settings.output_size == "source":
            image = composite.resize(painted, (record.source_width, record.source_height))
        if image is not painted:
            facts.update(width=image.size[0], height=image.size[1])
        data = images.encode_image(image, self._fmt)
        if source is not None and mask is not None:
            written = images.decode_image(data, max_pixels=settings.max_pixels)
            facts["locked_max_abs_diff"] = composite.locked_max_abs_diff(written, upright, binary)
        return data


class PaintMode(beam.PTransform):
    """One mode's records -> (written records, failures): ToPaintRequest re-reads each source,
    RunInference paints, WriteImages writes the images.

    These are one fused stage, so neither the source bytes nor the painted images leave it. Resource hints
    (``runner.paint_*``) go on this whole transform, not on RunInference alone: Beam fuses only transforms
    with the same hints, so hints on RunInference alone would put both on stage boundaries.
    """

    def __init__(
        self,
        handler: PainterModelHandler,
        limits: SourceLimits,
        output: str,
        fmt: str,
        compositing: Compositing | None = None,
        *,
        native_mask: bool = False,
    ):
        super().__init__()
        self._handler = handler
        self._limits = limits
        self._output = output
        self._fmt = fmt
        self._compositing = compositing or Compositing()
        self._native_mask = native_mask

    def expand(self, records: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        to_request = ToPaintRequest(
            self._limits, native_mask=self._native_mask, compositing=self._compositing
        )
        requests = records | "ToPaintRequest" >> beam.ParDo(to_request).with_outputs(FAILED, main="ok")
        painted, dlq = (
            requests.ok
            | "RunInference" >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling()
        )
        write = WriteImages(self._output, self._fmt, self._compositing)
        written = painted | "WriteImages" >> beam.ParDo(write).with_outputs(FAILED, main="ok")
        batch_failures = dlq.failed_inferences | "BatchFailures" >> beam.FlatMap(failed_paint_batch)
        failures = (requests.failed, batch_failures, written.failed) | "Failures" >> beam.Flatten()
        return written.ok, failures
