"""Records carry a source's URI and sha256, never its bytes; design and paint read the source again.

A source whose bytes changed after the fetch stage hashed them fails its row at the stage that read it
again (``design`` for designers that look at images, else ``paint``), naming both hashes; any other read
failure there is the reader's own message. Every payload is made here, in tmp_path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
import yaml
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline.run import read_provenance, run_job
from pipeline.spec import load_spec
from tests.fakes.openai_server import FakeOpenAI
from transforms import sources
from transforms.designer.base import Design, DesignerProvider, DesignFailure, DesignRequest
from transforms.designer.none import PassThroughDesigner
from transforms.designer.stage import DesignRecords
from transforms.images import FetchImage
from transforms.paint_stage import ToPaintRequest
from transforms.painter.base import PaintRequest
from transforms.records import STAGE_DESIGN, STAGE_PAINT, EditRecord, Failure, ManifestRow, RowRef
from transforms.reread import SourceChanged, SourceLimits, reread_source
from transforms.sources import Breakers, SourceError, SourceReader

KEY_ENV = "DIMFLOW_TEST_REREAD_KEY"
FAKE_KEY = "sk-dimflow-reread-fake-4Tz9Qw"


@pytest.fixture(autouse=True)
def fresh_breakers():
    """The stages use the process-wide breakers: start and end every test with none."""
    sources.BREAKERS.clear()
    yield
    sources.BREAKERS.clear()


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetched(row_id: str, source: Path | str | None, data: bytes | None, **fields: Any) -> EditRecord:
    """A record as the fetch stage leaves it: the source's facts, not its bytes."""
    row = ManifestRow(row_id, f"make {row_id} blue", str(source) if source else None, 1, None, RowRef("m", 1))
    if data is None:
        return EditRecord(row, **fields)
    return EditRecord(row, source_sha256=sha(data), source_size=len(data), **fields)


def changed_message(stage_words: str, before: bytes, after: bytes, source: Path) -> str:
    return (
        f"source changed since it was fetched (sha256 {sha(before)[:12]}... at fetch, {sha(after)[:12]}... now):"
        f" {stage_words}; rerun the row ({source})"
    )


# --- the record -------------------------------------------------------------------------------------


def test_a_fetched_record_carries_no_bytes_and_pickles_small(tmp_path):
    pixels = np.random.default_rng(7).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # noise: ~3 MB that no codec can shrink
    data = buffer.getvalue()
    source = tmp_path / "megapixel.png"
    source.write_bytes(data)
    fn = FetchImage(max_image_bytes=len(data), max_pixels=1_000_000)
    (record,) = list(fn.process(fetched("big", source, None)))
    assert isinstance(record, EditRecord)
    assert (record.source_sha256, record.source_size) == (sha(data), len(data))
    assert (record.source_width, record.source_height) == (1000, 1000)
    assert len(data) > 1_000_000 and len(pickle.dumps(record)) < 2048
    assert "source_bytes" not in {f.name for f in dataclasses.fields(EditRecord)}
    assert not any("bytes" in str(f.type) for f in dataclasses.fields(EditRecord))


# --- reread_source ----------------------------------------------------------------------------------


def test_same_bytes_come_back_and_text_to_image_reads_nothing(tmp_path):
    data = png((1, 2, 3))
    source = tmp_path / "a.png"
    source.write_bytes(data)
    reader = SourceLimits(max_image_bytes=len(data)).reader()
    assert reread_source(reader, fetched("a", source, data), STAGE_PAINT) == data
    assert reread_source(reader, fetched("t2i", None, None), STAGE_DESIGN) is None


@pytest.mark.parametrize(
    ("stage", "words"),
    [
        (STAGE_PAINT, "not painted, its render key names the fetched bytes"),
        (STAGE_DESIGN, "not designed, its design key names the fetched bytes"),
    ],
)
def test_changed_bytes_fail_naming_both_hashes(tmp_path, stage, words):
    before, after = png((1, 2, 3)), png((3, 2, 1))
    source = tmp_path / "a.png"
    source.write_bytes(after)
    reader = SourceLimits(max_image_bytes=10_000).reader()
    with pytest.raises(SourceChanged) as caught:
        reread_source(reader, fetched("a", source, before), stage)
    assert str(caught.value) == changed_message(words, before, after, source)


def test_a_truncated_or_grown_source_is_changed_or_over_the_limit(tmp_path):
    data = png((9, 9, 9))
    source = tmp_path / "a.png"
    reader = SourceLimits(max_image_bytes=len(data) + 10).reader()
    source.write_bytes(data[:-5])
    with pytest.raises(SourceChanged, match="source changed since it was fetched"):
        reread_source(reader, fetched("a", source, data), STAGE_PAINT)
    source.write_bytes(data + b"\0" * 100)
    with pytest.raises(SourceError, match=r"over limits\.max_image_bytes="):
        reread_source(reader, fetched("a", source, data), STAGE_PAINT)


def test_read_failures_are_the_readers_own_messages(tmp_path):
    data = png((1, 2, 3))
    reader = SourceLimits(max_image_bytes=10_000).reader()
    gone = tmp_path / "gone.png"
    with pytest.raises(SourceError, match="^source not found: "):
        reread_source(reader, fetched("gone", gone, data), STAGE_PAINT)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(SourceError, match="^source is a directory, not a regular file"):
        reread_source(reader, fetched("dir", tmp_path / "dir.png", data), STAGE_DESIGN)
    root, outside = tmp_path / "root", tmp_path / "outside.png"
    root.mkdir()
    outside.write_bytes(data)
    (root / "link.png").symlink_to(outside)
    rooted = SourceLimits(max_image_bytes=10_000, source_roots=(str(root),)).reader()
    with pytest.raises(SourceError, match="outside limits.source_roots"):
        reread_source(rooted, fetched("link", root / "link.png", data), STAGE_PAINT)


@pytest.mark.timeout(60)
def test_a_stuck_read_times_out_and_failing_storage_fails_fast(tmp_path):
    release = threading.Event()

    def stuck(uri, *, timeout_s, roots):
        release.wait(30)  # a read that never answers in time
        raise ConnectionError("never answered")

    data = png((1, 2, 3))
    reader = SourceReader(
        max_bytes=10_000, timeout_s=0.2, errors_before_fail_fast=2, opener=stuck, breakers=Breakers()
    )
    record = fetched("a", "gs://bucket/a.png", data)
    try:
        for _ in range(2):
            with pytest.raises(SourceError, match=r"source read timed out after 0\.2 s"):
                reread_source(reader, record, STAGE_PAINT)
        with pytest.raises(SourceError, match="not read: the last 2 reads from gs://bucket failed"):
            reread_source(reader, record, STAGE_PAINT)
    finally:
        release.set()


class _Broken:
    """A reader with a bug: it raises something that is not a SourceError."""

    def read(self, uri: str) -> bytes:
        raise KeyError("a bug in some filesystem")


def test_unexpected_errors_and_unfetched_records_fail_the_row(tmp_path):
    data = png((1, 2, 3))
    reader: Any = _Broken()
    with pytest.raises(SourceError) as caught:
        reread_source(reader, fetched("a", tmp_path / "a.png", data), STAGE_PAINT)
    assert (
        str(caught.value) == f"cannot read source {tmp_path / 'a.png'}: KeyError: 'a bug in some filesystem'"
    )
    never_fetched = fetched("b", tmp_path / "b.png", None)
    with pytest.raises(SourceError, match="has no sha256 on its record: it was never fetched"):
        reread_source(reader, never_fetched, STAGE_PAINT)
    with pytest.raises(ValueError, match="stage must be one of design, paint"):
        reread_source(reader, fetched("a", tmp_path / "a.png", data), "write")


# --- the paint side: ToPaintRequest -----------------------------------------------------------------


def test_to_paint_request_rereads_and_fails_changed_or_gone_sources(tmp_path):
    good, before, after = png((10, 20, 30)), png((1, 2, 3)), png((3, 2, 1))
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "changed.png").write_bytes(after)
    fn = ToPaintRequest(SourceLimits(max_image_bytes=10_000))
    fn.setup()
    kwargs = {"seed": 5, "blueprint": "bp"}

    (ok,) = list(fn.process(fetched("good", tmp_path / "good.png", good, **kwargs)))
    key, request = ok
    assert request == PaintRequest(key="good", prompt="bp", seed=5, source=good)
    assert key.record.id == "good" and key.mask is None
    (t2i,) = list(fn.process(fetched("t2i", None, None, **kwargs)))
    assert t2i[1] == PaintRequest(key="t2i", prompt="bp", seed=5, source=None)

    (changed,) = list(fn.process(fetched("changed", tmp_path / "changed.png", before, **kwargs)))
    assert changed.tag == "failed"
    failure = changed.value
    assert isinstance(failure, Failure) and (failure.id, failure.stage) == ("changed", STAGE_PAINT)
    words = "not painted, its render key names the fetched bytes"
    assert failure.error == changed_message(words, before, after, tmp_path / "changed.png")

    (gone,) = list(fn.process(fetched("gone", tmp_path / "gone.png", good, **kwargs)))
    assert (gone.tag, gone.value.stage) == ("failed", STAGE_PAINT)
    assert gone.value.error == f"source not found: {tmp_path / 'gone.png'}"


# --- the design side: DesignRecords -----------------------------------------------------------------

_SEEN: list[tuple[str, str | None]] = []  # (row id, sha256 of the image it got); FnApiRunner is in-process


class Looking(DesignerProvider):
    """Looks at images: the blueprint names the sha256 of the bytes it was given."""

    name = "looking"

    def config(self) -> dict[str, Any]:
        return {"kind": "looking"}

    def design(self, requests: Sequence[DesignRequest]) -> list[Design | DesignFailure]:
        _SEEN.extend((r.key, sha(r.image) if r.image is not None else None) for r in requests)
        return [Design(f"{r.instruction} / {sha(r.image) if r.image else 'no image'}") for r in requests]


def _design(
    records: list[EditRecord], provider: Callable[[], DesignerProvider], designed: list, failed: list
) -> None:
    """Run the records through DesignRecords (one batch) and check (id, blueprint) and (id, stage, error)."""
    with beam.Pipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create(records)
            | DesignRecords(
                provider, lambda r: f"dk-{r.id}", max_batch_size=4, source_limits=SourceLimits(10_000)
            )
        )
        assert_that(
            out.designed | "D" >> beam.Map(lambda r: (r.id, r.blueprint)),
            equal_to(designed),
            label="designed",
        )
        assert_that(
            out.failed | "F" >> beam.Map(lambda f: (f.id, f.stage, f.error)), equal_to(failed), label="failed"
        )


def test_a_designer_that_looks_gets_the_fetched_bytes_and_bad_rows_are_not_sent(tmp_path):
    good, before, after = png((10, 20, 30)), png((1, 2, 3)), png((3, 2, 1))
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "changed.png").write_bytes(after)
    records = [  # one batch of four: the two bad rows must not stop the other two
        fetched("good", tmp_path / "good.png", good),
        fetched("changed", tmp_path / "changed.png", before),
        fetched("gone", tmp_path / "gone.png", good),
        fetched("t2i", None, None),
    ]
    _SEEN.clear()
    words = "not designed, its design key names the fetched bytes"
    _design(
        records,
        Looking,
        designed=[("good", f"make good blue / {sha(good)}"), ("t2i", "make t2i blue / no image")],
        failed=[
            ("changed", STAGE_DESIGN, changed_message(words, before, after, tmp_path / "changed.png")),
            ("gone", STAGE_DESIGN, f"source not found: {tmp_path / 'gone.png'}"),
        ],
    )
    assert sorted(_SEEN) == [("good", sha(good)), ("t2i", None)]  # the bad rows never reached it


def test_the_none_designer_reads_no_source(tmp_path, monkeypatch):
    reads: list[str] = []
    real_read = SourceReader.read

    def counted(self, uri):
        reads.append(uri)
        return real_read(self, uri)

    monkeypatch.setattr(SourceReader, "read", counted)
    assert PassThroughDesigner.needs_image is False and Looking.needs_image is True
    records = [fetched("gone", tmp_path / "gone.png", png((1, 2, 3)))]  # would fail if it were read
    _design(records, PassThroughDesigner, designed=[("gone", "make gone blue")], failed=[])
    assert reads == []
    # the same count does see a designer that looks
    _design(
        records,
        Looking,
        designed=[],
        failed=[("gone", STAGE_DESIGN, f"source not found: {tmp_path / 'gone.png'}")],
    )
    assert reads == [str(tmp_path / "gone.png")]


# --- end to end: a source changed (or deleted) after the fetch stage hashed it -----------------------


def _job(directory: Path, designer: dict[str, Any]) -> Path:
    images = directory / "images"
    images.mkdir()
    for name, color in (("changed", (200, 40, 40)), ("kept", (40, 40, 200)), ("gone", (40, 200, 40))):
        (images / f"{name}.png").write_bytes(png(color))
    rows = [
        {"id": name, "source": f"images/{name}.png", "instruction": f"make the {name} one white"}
        for name in ("changed", "kept", "gone")
    ]
    (directory / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "reread",
        "manifest": "manifest.jsonl",
        "output": "out",
        "designer": designer,
        "painter": {"checkpoint": "tiny", "steps": 2, "resolution": 64, "batch_size": 2},
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _change_after_fetch(monkeypatch) -> dict[str, list[str]]:
    """Wrap FetchImage.process: once it has read and hashed a row's source, rewrite ``changed.png`` (other
    bytes, still a valid image) or delete ``gone.png`` before the record goes on. FnApiRunner runs in this
    process, so the wrapper is what the pipeline calls; no timing is involved. Also counts reads per file."""
    original = FetchImage.process
    reads: dict[str, list[str]] = {}
    real_read = SourceReader.read

    def process_then_change(self, record):
        outputs = list(original(self, record))
        source = Path(record.row.source or "")
        if source.name == "changed.png":
            source.write_bytes(png((10, 250, 10), size=(32, 40)))
        elif source.name == "gone.png":
            source.unlink()
        yield from outputs

    def counted(self, uri):
        reads.setdefault(Path(uri).name, []).append(uri)
        return real_read(self, uri)

    monkeypatch.setattr(FetchImage, "process", process_then_change)
    monkeypatch.setattr(SourceReader, "read", counted)
    return reads


def _rows(spec) -> dict[str, dict]:
    return {row["id"]: row for row in read_provenance(spec.output).to_pylist()}


@pytest.mark.slow
def test_a_source_changed_after_fetch_fails_at_paint(tmp_path, monkeypatch):
    spec = load_spec(_job(tmp_path, {"kind": "none"}))
    before = (tmp_path / "images" / "changed.png").read_bytes()
    reads = _change_after_fetch(monkeypatch)
    result = run_job(spec, show_progress=False)
    rows = _rows(spec)
    assert result.counts == {"ok": 1, "failed": 2, "skipped": 0, "rejected": 0}
    assert rows["kept"]["status"] == "ok" and Path(rows["kept"]["output_uri"]).is_file()
    after = (tmp_path / "images" / "changed.png").read_bytes()
    changed = rows["changed"]
    assert (changed["status"], changed["error_stage"]) == ("failed", STAGE_PAINT)
    words = "not painted, its render key names the fetched bytes"
    assert changed["error"] == changed_message(words, before, after, tmp_path / "images" / "changed.png")
    assert changed["source_sha256"] == sha(before)  # provenance names the bytes that were fetched
    gone = rows["gone"]  # the none designer never reads: the painter is the one that finds it gone
    assert (gone["status"], gone["error_stage"]) == ("failed", STAGE_PAINT)
    assert gone["error"] == f"source not found: {tmp_path / 'images' / 'gone.png'}"
    # each source read twice: at fetch and at paint (the none designer reads nothing)
    assert {name: len(uris) for name, uris in reads.items()} == {
        "changed.png": 2,
        "kept.png": 2,
        "gone.png": 2,
    }


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with FakeOpenAI(expected_key=FAKE_KEY) as fake:
        yield fake


@pytest.mark.slow
def test_a_source_changed_after_fetch_fails_at_design_for_a_designer_that_looks(
    tmp_path, monkeypatch, server
):
    designer = {
        "kind": "openai",
        "model": "gpt-test",
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "requests_per_minute": 6000,
        "timeout_s": 5,
        "max_attempts": 2,
    }
    spec = load_spec(_job(tmp_path, designer))
    before = (tmp_path / "images" / "changed.png").read_bytes()
    reads = _change_after_fetch(monkeypatch)
    result = run_job(spec, show_progress=False)
    rows = _rows(spec)
    assert result.counts == {"ok": 1, "failed": 2, "skipped": 0, "rejected": 0}
    assert rows["kept"]["status"] == "ok" and rows["kept"]["designer"] == "openai:gpt-test"
    after = (tmp_path / "images" / "changed.png").read_bytes()
    changed = rows["changed"]
    assert (changed["status"], changed["error_stage"]) == ("failed", STAGE_DESIGN)
    words = "not designed, its design key names the fetched bytes"
    assert changed["error"] == changed_message(words, before, after, tmp_path / "images" / "changed.png")
    gone = rows["gone"]
    assert (gone["status"], gone["error_stage"]) == ("failed", STAGE_DESIGN)
    assert gone["error"] == f"source not found: {tmp_path / 'images' / 'gone.png'}"
    # only the kept row reached the designer, with its image
    assert [(r.images, "kept" in r.text) for r in server.requests] == [(1, True)]
    # the kept source was read at fetch, design and paint; the bad ones at fetch and design only
    assert {name: len(uris) for name, uris in reads.items()} == {
        "changed.png": 2,
        "kept.png": 3,
        "gone.png": 2,
    }
