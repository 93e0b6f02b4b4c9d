"""Region-locked edits end to end (tiny painter, embedded runner, through the CLI): locked pixels of the
written images are the source's, bad masks end as documented, one provenance row per manifest row, and
the render key names the mask and its settings."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import cli
from pipeline.edit import JobKeys, job_row_problem
from pipeline.run import read_provenance
from transforms import schema
from transforms.images import decode_image
from transforms.paint_stage import Compositing, PaintKey, ToPaintRequest
from transforms.records import EditRecord, ManifestRow, RowRef
from transforms.reread import SourceLimits

SIZE = (48, 40)  # every source's displayed size
LOCKED_COLUMNS = 18  # masks lock the left 18 columns


def _save(img: Image.Image, path: Path, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _locked_left(size=SIZE) -> np.ndarray:
    """255 = may change, 0 = locked (the left LOCKED_COLUMNS columns)."""
    values = np.full((size[1], size[0]), 255, dtype=np.uint8)
    values[:, :LOCKED_COLUMNS] = 0
    return values


def _write_job(directory: Path, rows: list[dict], **sections) -> Path:
    (directory / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {
        "name": "mask",
        "manifest": "manifest.jsonl",
        "output": "out",
        "painter": {
            "checkpoint": "tiny",
            "t2i_checkpoint": "tiny",
            "steps": 1,
            "resolution": 32,
            "batch_size": 4,
            "device": "cpu",
        },
    }
    for section, values in sections.items():
        spec[section] = {**spec.get(section, {}), **values}
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(spec_path: Path) -> dict[str, dict]:
    console = io.StringIO()
    with contextlib.redirect_stderr(console):
        code = cli.main(["run", str(spec_path), "--no-progress"])
    output = spec_path.parent / "out"
    (record_path,) = (output / "runs").glob("*.json")
    run_id = json.loads(record_path.read_text())["run_id"]
    assert code == cli.EXIT_OK, console.getvalue()
    rows = read_provenance(str(output), run_id).to_pylist()
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == len(by_id)  # one provenance row per manifest row
    return by_id


def _written(row: dict) -> np.ndarray:
    return np.asarray(decode_image(Path(row["output_uri"]).read_bytes(), max_pixels=10**7))


def _upright(path: Path) -> np.ndarray:
    return np.asarray(decode_image(path.read_bytes(), max_pixels=10**7))


@pytest.fixture(scope="module")
def source_size_run(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """One job at ``output_size: source``, feather 0, with good and bad masks."""
    directory = tmp_path_factory.mktemp("mask")
    images = directory / "images"
    _save(_noise(SIZE, 1), images / "rgb.png")
    # Stored 40x48 with EXIF orientation 6: displayed (and decoded) 48x40; its mask is drawn on the displayed image.
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(_noise((SIZE[1], SIZE[0]), 2), images / "rotated.jpg", "JPEG", quality=90, exif=exif.tobytes())
    _save(Image.fromarray(_locked_left(), "L"), images / "mask-l.png")
    rgba = np.zeros((SIZE[1], SIZE[0], 4), dtype=np.uint8)
    rgba[..., 3] = _locked_left()  # transparent = locked; the colour channels say nothing
    rgba[..., 0] = 255 - _locked_left()
    _save(Image.fromarray(rgba, "RGBA"), images / "mask-rgba.png")
    _save(Image.new("L", SIZE, 255), images / "white.png")
    _save(Image.new("L", SIZE, 0), images / "black.png")
    _save(Image.new("L", (30, 20), 255), images / "small.png")
    (images / "not-an-image.png").write_bytes(b"this is text, not a mask")
    _save(Image.fromarray(_locked_left(), "L"), directory / "elsewhere" / "mask.png")
    rows = [
        {"id": "rgb", "source": "images/rgb.png", "mask": "images/mask-l.png", "instruction": "x", "seed": 1},
        {
            "id": "rotated",
            "source": "images/rotated.jpg",
            "mask_path": "images/mask-rgba.png",
            "instruction": "x",
        },
        {
            "id": "white",
            "source": "images/rgb.png",
            "mask": "images/white.png",
            "instruction": "x",
            "seed": 1,
        },
        {"id": "plain", "source": "images/rgb.png", "instruction": "x", "seed": 1},
        {"id": "black", "source": "images/rgb.png", "mask": "images/black.png", "instruction": "x"},
        {"id": "small", "source": "images/rgb.png", "mask": "images/small.png", "instruction": "x"},
        {"id": "text", "source": "images/rgb.png", "mask": "images/not-an-image.png", "instruction": "x"},
        {"id": "gone", "source": "images/rgb.png", "mask": "images/gone.png", "instruction": "x"},
        {"id": "t2i", "mask": "images/mask-l.png", "instruction": "a chair"},
        {"id": "outside", "source": "images/rgb.png", "mask": "elsewhere/mask.png", "instruction": "x"},
    ]
    spec = _write_job(
        directory,
        rows,
        painter={"output_size": "source"},
        mask={"feather_px": 0},
        limits={"source_roots": [str(images)]},
    )
    return directory, _run(spec)


@pytest.mark.timeout(300)
def test_locked_pixels_are_the_sources_decoded_pixels_exactly(source_size_run):
    directory, rows = source_size_run
    images = directory / "images"
    for row_id, source in (("rgb", "rgb.png"), ("rotated", "rotated.jpg")):
        row = rows[row_id]
        assert row["status"] == "ok", row
        written, upright = _written(row), _upright(images / source)
        assert written.shape == upright.shape == (SIZE[1], SIZE[0], 3)
        assert np.array_equal(written[:, :LOCKED_COLUMNS], upright[:, :LOCKED_COLUMNS]), row_id
        assert not np.array_equal(written[:, LOCKED_COLUMNS:], upright[:, LOCKED_COLUMNS:])  # it was painted
        assert row["locked_max_abs_diff"] == 0
        assert row["locked_fraction"] == pytest.approx(LOCKED_COLUMNS / SIZE[0])
        assert (row["width"], row["height"]) == SIZE
        assert row["mask_uri"].endswith("mask-l.png" if row_id == "rgb" else "mask-rgba.png")
        assert row["mask_sha256"] == hashlib.sha256(Path(row["mask_uri"]).read_bytes()).hexdigest()


@pytest.mark.timeout(300)
def test_all_white_mask_is_the_plain_edit_and_output_size_source_resizes_unmasked_rows(source_size_run):
    _directory, rows = source_size_run
    white, plain = rows["white"], rows["plain"]
    assert white["status"] == plain["status"] == "ok"
    assert white["locked_fraction"] == 0 and white["locked_max_abs_diff"] == 0
    assert (plain["width"], plain["height"]) == SIZE and _written(plain).shape == (SIZE[1], SIZE[0], 3)
    assert (
        plain["mask_uri"] is None
        and plain["locked_fraction"] is None
        and plain["locked_max_abs_diff"] is None
    )
    # the plain edit of the same source and seed, painted alike: an all-white mask changes nothing but its key
    assert np.array_equal(_written(white), _written(plain)) and white["render_key"] != plain["render_key"]


@pytest.mark.timeout(300)
def test_bad_masks_fail_their_rows_naming_the_field(source_size_run):
    directory, rows = source_size_run
    expected = {
        "black": (
            "fetch",
            "mask locks every pixel (all black (transparent) at threshold 128, mask.invert=false)",
        ),
        "small": ("fetch", "mask is 30x20 but its source is 48x40 (both after EXIF orientation)"),
        "text": ("fetch", "mask is not a recognized image format"),
        "gone": ("fetch", "mask not found:"),
        "t2i": ("validate", "field 'mask': given, but the row has no source"),
        "outside": ("validate", "field 'mask':"),
    }
    # manifest order (provenance rows come in no particular order)
    manifest_ids = [
        json.loads(line)["id"] for line in (directory / "manifest.jsonl").read_text().splitlines()
    ]
    for row_id, (stage, fragment) in expected.items():
        row = rows[row_id]
        assert (row["status"], row["error_stage"]) == ("failed", stage), row
        assert fragment in row["error"], row["error"]
        assert row["output_uri"] is None
        if stage == "fetch":
            assert f"manifest.jsonl row {manifest_ids.index(row_id) + 1}, field 'mask'" in row["error"]
    assert "is outside limits.source_roots" in rows["outside"]["error"]
    assert not (directory / "out" / "images" / "black").exists()  # nothing to edit: never painted


@pytest.mark.timeout(300)
def test_resolution_output_and_feather_keep_locked_pixels_of_the_resampled_source(tmp_path):
    images = tmp_path / "images"
    _save(_noise(SIZE, 3), images / "rgb.png")
    _save(Image.fromarray(_locked_left(), "L"), images / "mask.png")
    inverted = 255 - _locked_left()  # with mask.invert the black part may change
    _save(Image.fromarray(inverted, "L"), images / "inverted.png")
    rows = [{"id": "rgb", "source": "images/rgb.png", "mask": "images/inverted.png", "instruction": "x"}]
    spec = _write_job(tmp_path, rows, mask={"feather_px": 3, "invert": True})
    row = _run(spec)["rgb"]
    assert row["status"] == "ok", row
    written = _written(row)
    assert written.shape == (32, 32, 3)  # painter.resolution, output_size resolution (the default)
    source = Image.open(images / "rgb.png").convert("RGB")
    resampled = np.asarray(source.resize((32, 32), Image.Resampling.LANCZOS))
    locked = np.asarray(Image.fromarray(_locked_left(), "L").resize((32, 32), Image.Resampling.NEAREST)) == 0
    assert np.array_equal(written[locked], resampled[locked])
    assert not np.array_equal(written[~locked], resampled[~locked])
    assert row["locked_max_abs_diff"] == 0 and row["locked_fraction"] == pytest.approx(locked.mean())


def _record(mask: str | None, mask_sha256: str | None) -> EditRecord:
    row = ManifestRow("a", "x", "/s.png", 1, None, RowRef("m.jsonl", 1), mask=mask)
    return EditRecord(row, source_sha256="s" * 64, mask_sha256=mask_sha256)


def test_render_keys_name_the_mask_and_its_settings_and_spare_unmasked_rows():
    settings = {"feather_px": 2, "mode": "composite", "invert": False}

    def key(record, output_size="resolution", **changes):
        keys = JobKeys(
            designer_config={"kind": "none"},
            painter_config={"steps": 1},
            checkpoint_sha256={"edit": "e" * 64, "t2i": "f" * 64},
            default_seed=1,
            output_size=output_size,
            mask_config={**settings, **changes},
        )
        return keys.with_render_key(record).render_key

    masked = _record("/m.png", "a" * 64)
    variants = [
        key(masked),
        key(_record("/m.png", "b" * 64)),  # other mask bytes
        key(masked, feather_px=0),
        key(masked, invert=True),
        key(masked, mode="native+composite"),
        key(masked, "source"),
    ]
    assert len(set(variants)) == len(variants)
    plain = _record(None, None)
    before = schema.render_key(
        source_sha256="s" * 64,
        instruction="x",
        designer_config={"kind": "none"},
        painter_config={"steps": 1, "mode": "edit"},
        checkpoint_sha256="e" * 64,
        seed=1,
    )
    assert key(plain) == key(plain, feather_px=9, invert=True) == before  # unmasked rows keep their keys
    assert key(plain, "source") != before  # output_size source changes every edit row's image


def test_a_mask_inside_the_output_fails_at_validate_like_a_source(tmp_path):
    row = ManifestRow(
        "a", "x", str(tmp_path / "s.png"), 1, None, RowRef("m.jsonl", 3), mask=str(tmp_path / "out/m.png")
    )
    problem = job_row_problem(row, {"edit": "e" * 64}, str(tmp_path / "out"))
    assert (
        problem is not None
        and problem.field == "mask"
        and "keep masks outside the output folder" in str(problem)
    )
    assert str(problem).startswith("m.jsonl row 3, field 'mask'")
    assert (
        job_row_problem(
            dataclasses.replace(row, mask=str(tmp_path / "m.png")), {"edit": "e"}, str(tmp_path / "out")
        )
        is None
    )


def test_paint_rereads_the_mask_and_native_mode_gets_it_binary_and_upright(tmp_path):
    source = _save(_noise(SIZE, 4), tmp_path / "s.png")
    mask = _save(Image.fromarray(_locked_left(), "L"), tmp_path / "m.png")
    row = ManifestRow(
        "a", "x", str(tmp_path / "s.png"), 1, None, RowRef("m.jsonl", 1), mask=str(tmp_path / "m.png")
    )
    record = EditRecord(
        row,
        source_sha256=hashlib.sha256(source).hexdigest(),
        mask_sha256=hashlib.sha256(mask).hexdigest(),
        seed=1,
        blueprint="bp",
    )
    limits = SourceLimits(max_image_bytes=10**6)
    settings = Compositing(invert=True, max_pixels=10**6)
    composite_only = ToPaintRequest(limits, compositing=settings)
    native = ToPaintRequest(limits, native_mask=True, compositing=settings)
    for fn in (composite_only, native):
        fn.setup()
    ((key, request),) = list(composite_only.process(record))
    assert key == PaintKey(record, mask) and request.mask is None and request.source == source
    ((key, request),) = list(native.process(record))
    assert key.mask == mask
    binary = Image.open(io.BytesIO(request.mask))
    assert binary.mode == "L" and binary.size == SIZE  # white = may change, mask.invert applied
    assert np.array_equal(np.asarray(binary), 255 - _locked_left())
    _save(Image.new("L", SIZE, 255), tmp_path / "m.png")  # the mask changed since it was fetched
    (failed,) = list(composite_only.process(record))
    assert failed.tag == "failed" and failed.value.stage == "paint"
    assert failed.value.error.startswith("field 'mask': mask changed since it was fetched")


@pytest.mark.timeout(300)
def test_a_best_of_n_repaint_of_a_masked_row_is_composited_too(tmp_path, monkeypatch):
    from tests import quality_support as qs

    script = qs.install(monkeypatch, {"m": [0.2, 0.9]})  # paint 1 below the bar, paint 2 kept
    job = qs.write_job(tmp_path, {"m": "m.png"}, painter={"output_size": "source"}, mask={"feather_px": 0})
    source = Image.open(tmp_path / "images" / "m.png").convert("RGB")
    mask = np.full((source.size[1], source.size[0]), 255, dtype=np.uint8)
    mask[:, :10] = 0
    _save(Image.fromarray(mask, "L"), tmp_path / "images" / "mask.png")
    row = json.loads((tmp_path / "manifest.jsonl").read_text())
    (tmp_path / "manifest.jsonl").write_text(json.dumps({**row, "mask": "images/mask.png"}) + "\n")
    monkeypatch.chdir(tmp_path)
    (result,) = _run(job).values()
    assert qs.calls(script) == {"m": 2}
    assert (result["status"], result["paints"]) == ("ok", 2), result
    attempts = json.loads(result["paint_attempts"])
    assert result["output_uri"] == str(Path(attempts[1]["output_uri"]))
    for attempt in attempts:  # both paints, the repaint included, were composited
        written = _written({"output_uri": attempt["output_uri"]})
        assert written.shape[:2] == mask.shape and np.array_equal(written[:, :10], np.asarray(source)[:, :10])
    assert result["locked_max_abs_diff"] == 0 and result["locked_fraction"] == pytest.approx(
        10 / source.size[0]
    )
