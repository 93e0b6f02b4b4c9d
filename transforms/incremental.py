"""Incremental runs: a row whose render key already has its image under the output is ``skipped``.

The render key covers the source bytes, instruction, seed, designer and painter config and checkpoint,
so an existing image with that key is exactly what painting again would produce. Images are written
atomically (``images.write_output``), so an image that exists is complete, even if the run that wrote
it was killed before its provenance was written. Earlier provenance supplies the image's sha256 and
blueprint (joined on render key inside the pipeline); an image with no provenance row (that crashed
run) is hashed once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import images
from transforms.tables import ReadPartFiles, list_run_table, log_skipped

TODO = "todo"
_COLUMNS = ["status", "render_key", "output_uri", "output_sha256", "blueprint", "designer", "design_key"]


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


def _decide(element: tuple[str, dict[str, list]], output: str, fmt: str) -> Iterable:
    _key, grouped = element
    earlier = [
        e for e in grouped["earlier"] if e.get("status") in ("ok", "skipped") and e.get("output_sha256")
    ]
    for record in grouped["records"]:
        assert record.render_key is not None
        uri = images.output_uri(output, record.id, record.render_key, fmt)
        if not FileSystems.exists(uri):
            yield beam.pvalue.TaggedOutput(TODO, record)
            continue
        known = next((e for e in earlier if e.get("output_uri") == uri), None)
        yield record.evolve(
            skipped=True,
            output_uri=uri,
            output_sha256=known["output_sha256"] if known else _sha256(uri),
            blueprint=known.get("blueprint") if known else None,
            designer=known.get("designer") if known else None,
            design_key=(known.get("design_key") if known else None) or record.design_key,
        )


class SkipRendered(beam.PTransform):
    """Records (with render keys) in; main output: ``skipped`` records; tagged ``todo``: the rest."""

    def __init__(self, output: str, fmt: str, files: list[str]):
        super().__init__()
        self._output = output
        self._fmt = fmt
        self._files = list(files)

    def expand(self, records):
        keyed = records | "KeyByRenderKey" >> beam.Map(lambda r: (r.render_key, r))
        if self._files:
            earlier = (
                records.pipeline
                | "ProvenanceFiles" >> beam.Create(self._files)
                | "ReadProvenance" >> beam.ParDo(ReadPartFiles(_COLUMNS))  # skips a damaged file, naming it
                | "Rendered" >> beam.Filter(lambda e: e.get("render_key") is not None)
                | "KeyEntries" >> beam.Map(lambda e: (e["render_key"], e))
            )
        else:
            earlier = records.pipeline | "NoProvenance" >> beam.Create([])
        return (
            {"records": keyed, "earlier": earlier}
            | "JoinOnRenderKey" >> beam.CoGroupByKey()
            | "Decide" >> beam.FlatMap(_decide, self._output, self._fmt).with_outputs(TODO, main="skipped")
        )
