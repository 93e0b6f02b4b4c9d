"""`dimflow report --html`: masked rows' cards show the mask's outline over both thumbnails and the locked
figures (synthetic provenance and mask files in tmp_path); the outline is where the mask's edge is, flipped by
the run's mask.invert; a mask that cannot be read (missing, not an image, over the size limits) is said on the
card and the page still renders."""

from __future__ import annotations

import base64
import html.parser
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline.report import build_report
from pipeline.report_html import THUMB_PX, render_html
from pipeline.report_mask import OUTLINE_RGBA, outline, read_mask
from tests.test_eval import prov, write_provenance

SIZE = (384, 256)  # thumbnails at 192 x 128: the mask halves


def write_record(output: Path, run_id: str, spec: dict) -> None:
    (output / "runs").mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": run_id,
        "started_at": "2026-01-02T03:00:00+00:00",
        "finished_at": "2026-01-02T03:05:00+00:00",
        "counts": {},
        "spec": spec,
    }
    (output / "runs" / f"{run_id}.json").write_text(json.dumps(record))


def box_mask(size=SIZE, box=(96, 64, 288, 192), mode="L") -> Image.Image:
    """Black (locked) everywhere but a white (editable) box; as alpha for RGBA."""
    if mode == "RGBA":
        image = Image.new("RGBA", size, (255, 255, 255, 0))
        image.paste((0, 0, 0, 255), box)
        return image
    image = Image.new("L", size, 0)
    image.paste(255, box)
    return image


def save(image: Image.Image, path: Path, fmt: str = "PNG") -> str:
    image.save(path, fmt)
    return str(path)


def masked_output(tmp_path: Path, *, invert: bool = False, extra_rows: tuple = ()) -> Path:
    output = tmp_path / "out"
    images = tmp_path / "images"
    images.mkdir()
    source = save(Image.new("RGB", SIZE, (40, 90, 160)), images / "source.png")
    after = save(Image.new("RGB", SIZE, (200, 90, 40)), images / "after.png")
    mask = save(box_mask(), images / "mask.png")
    rows = [
        prov(
            "run-1",
            "masked",
            "ok",
            mode="edit",
            instruction="a marble table",
            source_uri=source,
            output_uri=after,
            mask_uri=mask,
            mask_sha256="ab" * 32,
            locked_fraction=0.625,
            locked_max_abs_diff=0,
        ),
        prov("run-1", "plain", "ok", mode="edit", instruction="x", source_uri=source, output_uri=after),
        *extra_rows,
    ]
    write_provenance(output, rows)
    write_record(output, "run-1", {"mask": {"invert": invert, "feather_px": 0, "mode": "composite"}})
    return output


class Cards(html.parser.HTMLParser):
    """Per card (data-id): its image classes and sources, and its text."""

    def __init__(self):
        super().__init__()
        self.cards: dict[str, dict] = {}
        self.current: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "pair" in (attrs.get("class") or "").split():
            self.current = attrs["data-id"]
            self.cards[self.current] = {"images": [], "text": ""}
        elif tag == "img" and self.current:
            self.cards[self.current]["images"].append((attrs.get("class"), attrs.get("src")))

    def handle_data(self, data):
        if self.current:
            self.cards[self.current]["text"] += data


def cards_of(page: str) -> dict[str, dict]:
    parser = Cards()
    parser.feed(page)
    return parser.cards


def decode_overlay(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert image.mode == "RGBA"
    return np.asarray(image)


def expected_edges(editable: np.ndarray) -> np.ndarray:
    """Independent: editable pixels whose up/down/left/right neighbour inside the image is locked."""
    height, width = editable.shape
    edges = np.zeros_like(editable)
    for y in range(height):
        for x in range(width):
            if not editable[y, x]:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < height and 0 <= nx < width and not editable[ny, nx]:
                    edges[y, x] = True
    return edges


def test_masked_card_outlines_the_mask_on_both_images_and_says_the_locked_figures(tmp_path):
    output = masked_output(tmp_path)
    report, table = build_report(str(output), None)
    cards = cards_of(render_html(report, table))
    masked = cards["masked"]
    classes = [c for c, _ in masked["images"]]
    assert classes == ["before", "outline", "after", "outline"]
    overlays = [src for c, src in masked["images"] if c == "outline"]
    assert overlays[0] == overlays[1]
    pixels = decode_overlay(overlays[0])
    assert pixels.shape[:2] == (128, THUMB_PX)
    drawn = pixels[..., 3] > 0
    # the box (96..288 x 64..192 at full size) is 48..144 x 32..96 at thumbnail size: its border, inside
    small = np.zeros((128, THUMB_PX), dtype=bool)
    small[32:96, 48:144] = True
    assert np.array_equal(drawn, expected_edges(small))
    assert drawn.sum() == 2 * (96 + 64) - 4
    assert tuple(pixels[drawn][0]) == OUTLINE_RGBA
    assert "mask: locked 62.5% · locked max abs diff 0" in masked["text"]
    assert "mask.png" in masked["text"]
    # an unmasked row's card has no outline and no mask line
    assert [c for c, _ in cards["plain"]["images"]] == ["before", "after"]
    assert "mask:" not in cards["plain"]["text"]


def test_the_runs_invert_flips_the_region_and_alpha_masks_read_as_opaque_editable(tmp_path):
    """Inverted (the box locked, the rest editable), the outline is the box's border from outside."""
    output = masked_output(tmp_path, invert=True)
    report, table = build_report(str(output), None)
    overlay = [s for c, s in cards_of(render_html(report, table))["masked"]["images"] if c == "outline"][0]
    drawn = decode_overlay(overlay)[..., 3] > 0
    small = np.ones((128, THUMB_PX), dtype=bool)
    small[32:96, 48:144] = False
    assert np.array_equal(drawn, expected_edges(small))
    # an RGBA mask: opaque = may change, read as the grey one
    rgba = save(box_mask(mode="RGBA"), tmp_path / "rgba.png")
    grey = save(box_mask(), tmp_path / "grey.png")
    limits = {"max_bytes": 10**7, "max_pixels": 10**7, "invert": False}
    assert np.array_equal(read_mask(rgba, **limits), read_mask(grey, **limits))


def test_outline_of_odd_masks(tmp_path):
    """All editable or all locked: no edge. A region under half of every thumbnail pixel it touches
    has no edge either (the area rule); at half it has; a thick stripe has both its sides."""
    assert not outline(np.ones((256, 384), dtype=bool), THUMB_PX).any()
    assert not outline(np.zeros((256, 384), dtype=bool), THUMB_PX).any()
    thin = np.zeros((512, 768), dtype=bool)  # 4 full-size pixels a side per thumbnail pixel
    thin[:, 100] = True  # a quarter of thumbnail column 25
    assert not outline(thin, THUMB_PX).any()
    thin[:, 101] = True  # half of it: at least half is editable
    assert set(np.nonzero(outline(thin, THUMB_PX).any(axis=0))[0]) == {25}
    stripe = np.zeros((256, 384), dtype=bool)
    stripe[:, 100:140] = True  # 50..70 at thumbnail size
    edges = outline(stripe, THUMB_PX)
    assert set(np.nonzero(edges.any(axis=0))[0]) == {50, 69}
    small = np.zeros((10, 10), dtype=bool)  # smaller than a thumbnail: kept at its own size
    small[2:5, 2:5] = True
    assert outline(small, THUMB_PX).shape == (10, 10)
    assert np.array_equal(outline(small, THUMB_PX), expected_edges(small))


@pytest.mark.parametrize(
    ("make", "spec_limits", "says"),
    [
        (lambda folder: str(folder / "missing.png"), {}, "cannot open"),
        (lambda folder: _write(folder / "garbage.png", b"\x89PNG\r\n\x1a\n nope"), {}, "cannot decode"),
        (lambda folder: _write(folder / "empty.png", b""), {}, "empty file"),
        (
            lambda folder: save(box_mask(), folder / "big.png"),
            {"max_image_bytes": 100},
            "max_image_bytes=100",
        ),
        (lambda folder: save(box_mask(), folder / "wide.png"), {"max_pixels": 1000}, "max_pixels=1000"),
        (lambda folder: _write(folder / "half.png", _png_bytes()[:200]), {}, "cannot decode"),
    ],
)
def test_an_unreadable_mask_is_said_on_the_card_and_the_page_renders(tmp_path, make, spec_limits, says):
    folder = tmp_path / "masks"
    folder.mkdir()
    uri = make(folder)
    output = masked_output(tmp_path)
    rows = [
        prov(
            "run-1",
            "masked",
            "ok",
            mode="edit",
            instruction="x",
            source_uri=str(tmp_path / "images" / "source.png"),
            output_uri=str(tmp_path / "images" / "after.png"),
            mask_uri=uri,
            locked_fraction=0.5,
            locked_max_abs_diff=3,
        ),
        prov("run-1", "failed-row", "failed", error_stage="fetch", error="field mask: nope"),
    ]
    import shutil

    shutil.rmtree(output / "provenance")
    write_provenance(output, rows)
    write_record(output, "run-1", {"limits": spec_limits})
    report, table = build_report(str(output), None)
    page = render_html(report, table)
    card = cards_of(page)["masked"]
    assert [c for c, _ in card["images"]] == ["before", "after"]  # thumbnails still shown, no outline
    assert "mask unreadable now" in card["text"] and says in card["text"]
    assert "locked 50.0% · locked max abs diff 3" in card["text"]
    assert "failed-row" in page and page.rstrip().endswith("</html>")


def test_cli_html_with_a_masked_row(tmp_path, capsys):
    output = masked_output(tmp_path)
    page_path = tmp_path / "report.html"
    assert cli.main(["report", str(output), "--html", str(page_path)]) == 0
    card = cards_of(page_path.read_text())["masked"]
    assert [c for c, _ in card["images"]] == ["before", "outline", "after", "outline"]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 384), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
