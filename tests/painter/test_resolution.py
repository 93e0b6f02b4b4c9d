"""Output resolutions: aspect buckets, aspect-preserving edits, mixed-size batches, tiled VAE decode, and the
prefetch of the next micro-batch's sources (same images, errors naming the row)."""

from __future__ import annotations

import io
import itertools
import math
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.painter.support import image_bytes
from transforms.painter.base import PaintParams, PaintRequest, decode_source, source_size
from transforms.painter.dim import buckets, vae

PARAMS = PaintParams(steps=2, guidance_scale=7.5, resolution=64)
PRESERVE = PaintParams(steps=2, guidance_scale=7.5, resolution=64, aspect="preserve")
GRIDS = [(1024, 32), (512, 32), (2048, 32), (64, 8), (96, 32)]


def edit(key: str, size=(80, 64), seed: int = 1, prompt: str = "make the sky purple", **kw) -> PaintRequest:
    return PaintRequest(key=key, prompt=prompt, seed=seed, source=image_bytes(size, **kw))


def log_gap(a: tuple[int, int], b: tuple[int, int]) -> float:
    return abs(math.log(a[0] / a[1]) - math.log(b[0] / b[1]))


def rotated_jpeg(size=(80, 40), orientation: int = 6) -> bytes:
    image = Image.open(io.BytesIO(image_bytes(size)))
    exif = image.getexif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    return out.getvalue()


# ------------------------------------------------------------------------------------------ buckets


@pytest.mark.parametrize(("resolution", "grid"), GRIDS)
def test_buckets_are_grid_multiples_of_about_the_target_area(resolution, grid):
    sizes = buckets.bucket_sizes(resolution, grid)
    assert (resolution, resolution) in sizes
    assert len(set(sizes)) == len(sizes)
    for width, height in sizes:
        assert width % grid == 0 and height % grid == 0 and width > 0 and height > 0
        assert abs(width * height / resolution**2 - 1) <= grid / (2 * resolution)
        assert max(width, height) <= buckets.MAX_ASPECT * min(width, height)
        assert (height, width) in sizes  # both orientations
    aspects = [w / h for w, h in sizes]
    assert aspects == sorted(aspects)
    assert buckets.bucket_sizes(resolution, grid) == sizes  # deterministic


@pytest.mark.parametrize(("resolution", "grid"), GRIDS)
def test_nearest_bucket_is_the_closest_aspect(resolution, grid):
    sizes = buckets.bucket_sizes(resolution, grid)
    rng = np.random.default_rng(7)
    for _ in range(300):
        width, height = (int(v) for v in rng.integers(16, 5000, size=2))
        chosen = buckets.nearest_bucket(width, height, resolution, grid)
        assert chosen in sizes
        best = min(log_gap(size, (width, height)) for size in sizes)
        assert log_gap(chosen, (width, height)) <= best + 1e-12
        assert buckets.nearest_bucket(width, height, resolution, grid) == chosen


def test_bucket_aspect_error_and_examples_at_1024():
    sizes = buckets.bucket_sizes(1024, 32)
    gaps = [log_gap(a, b) for a, b in itertools.pairwise(sizes)]
    assert max(gaps) < 0.13  # neighbours at most ~13 % apart in aspect (at 4:1), ~6 % near square
    for width, height in [(4000, 3000), (1920, 1080), (3024, 4032), (1000, 1001), (1234, 567)]:
        chosen = buckets.nearest_bucket(width, height, 1024, 32)
        assert log_gap(chosen, (width, height)) <= max(gaps) / 2 + 1e-12
    assert buckets.nearest_bucket(4000, 3000, 1024, 32) == (1184, 896)
    assert buckets.nearest_bucket(1920, 1080, 1024, 32) == (1376, 768)
    assert buckets.nearest_bucket(3000, 4000, 1024, 32) == (896, 1184)
    assert buckets.nearest_bucket(777, 777, 1024, 32) == (1024, 1024)
    assert buckets.nearest_bucket(10_000, 100, 1024, 32) == (2048, 512)  # beyond 4:1: the extreme, cropped


def test_output_size_square_unchanged_and_bad_values():
    assert buckets.output_size((1920, 1080), 1024, 32, "square") == (1024, 1024)
    assert buckets.output_size(None, 1024, 32, "preserve") == (1024, 1024)  # text-to-image
    assert buckets.output_size((500, 500), 1024, 32, "preserve") == (1024, 1024)
    with pytest.raises(ValueError, match="aspect must be"):
        buckets.output_size((10, 10), 64, 8, "wide")
    with pytest.raises(ValueError, match="multiple of the latent grid"):
        buckets.bucket_sizes(100, 32)
    with pytest.raises(ValueError, match="positive"):
        buckets.nearest_bucket(0, 10, 64, 8)


# ------------------------------------------------------------------------------------------ sources


def test_source_size_from_the_header_matches_the_decoded_image():
    cases = {
        "png": image_bytes((80, 64)),
        "jpeg": image_bytes((70, 50), fmt="JPEG"),
        "webp": image_bytes((50, 70), fmt="WEBP"),
        "rgba": image_bytes((64, 48), mode="RGBA"),
        "rot6": rotated_jpeg((80, 40), 6),
        "rot3": rotated_jpeg((80, 40), 3),
    }
    for key, data in cases.items():
        request = PaintRequest(key=key, prompt="p", seed=1, source=data)
        assert source_size(request) == decode_source(request).size, key
    assert source_size(PaintRequest(key="r", prompt="p", seed=1, source=rotated_jpeg((80, 40), 6))) == (
        40,
        80,
    )
    with pytest.raises(ValueError, match=r"row 'bad'.*cannot decode"):
        source_size(PaintRequest(key="bad", prompt="p", seed=1, source=b"nope"))


def _square_pixels_as_before(image: Image.Image, resolution: int) -> torch.Tensor:
    """``vae.source_pixels`` as it was before aspect buckets (square only)."""
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        size = (resolution, int(resolution * height / width))
    else:
        size = (int(resolution * width / height), resolution)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left = int(round((size[0] - resolution) / 2.0))
    top = int(round((size[1] - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
    return (tensor - 0.5) / 0.5


def test_source_pixels_square_unchanged_and_covering_crop_otherwise():
    for size in [(80, 64), (64, 80), (64, 64), (333, 97), (97, 333), (1000, 999)]:
        image = Image.open(io.BytesIO(image_bytes(size)))
        for resolution in (32, 64, 96):
            assert torch.equal(
                vae.source_pixels(image, resolution), _square_pixels_as_before(image, resolution)
            )
            assert torch.equal(
                vae.source_pixels(image, (resolution, resolution)), vae.source_pixels(image, resolution)
            )
    image = Image.open(io.BytesIO(image_bytes((120, 80))))
    assert vae.source_pixels(image, (72, 56)).shape == (3, 56, 72)
    assert vae.source_pixels(image, (56, 72)).shape == (3, 72, 56)
    # Same aspect as the target: a plain resize, nothing cropped.
    plain = image.convert("RGB").resize((96, 64), Image.Resampling.BILINEAR)
    expected = (
        torch.from_numpy(np.asarray(plain).copy()).permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)
    )
    assert torch.equal(vae.source_pixels(image, (96, 64)), expected)


# ------------------------------------------------------------------------------------------ painting


def test_preserve_paints_the_bucket_size(edit_painter, t2i_painter):
    (wide,) = edit_painter.paint([edit("wide", (80, 64))], PRESERVE)
    assert wide.image.size == (72, 56) == buckets.nearest_bucket(80, 64, 64, 8)
    assert (wide.fields["width"], wide.fields["height"]) == (72, 56)
    (rotated,) = edit_painter.paint(
        [PaintRequest(key="rot", prompt="p", seed=1, source=rotated_jpeg((80, 40), 6))], PRESERVE
    )
    assert rotated.image.size == buckets.nearest_bucket(40, 80, 64, 8) == (48, 88)
    (square,) = edit_painter.paint([edit("sq", (80, 64))], PARAMS)
    assert square.image.size == (64, 64)
    (t2i,) = t2i_painter.paint([PaintRequest(key="t", prompt="a cat", seed=1, source=None)], PRESERVE)
    assert t2i.image.size == (64, 64) and (t2i.fields["width"], t2i.fields["height"]) == (64, 64)


def test_preserve_reports_a_broken_source_by_row(edit_painter):
    with pytest.raises(ValueError, match=r"row 'k2'.*cannot decode"):
        edit_painter.paint([edit("k1"), PaintRequest(key="k2", prompt="p", seed=1, source=b"junk")], PRESERVE)


MIXED = [
    edit("a", (80, 64), seed=1),
    edit("b", (64, 96), seed=2, prompt="add a small white cat"),
    edit("c", (160, 130), seed=3, color=(200, 0, 0)),
    edit("d", (50, 50), seed=4),
    edit("e", (200, 50), seed=5, prompt="turn it into winter"),
]
MIXED_SIZES = [(72, 56), (56, 72), (72, 56), (64, 64), (128, 32)]


@pytest.mark.parametrize("row_by_row", [True, False])
def test_mixed_sizes_in_input_order_and_each_as_if_alone(edit_painter, row_by_row):
    """Row by row (the CPU default) is bit-exact; same-size sub-batches agree with rows alone to rounding."""
    edit_painter.row_by_row = row_by_row
    try:
        together = edit_painter.paint(MIXED, PRESERVE)
        assert [p.key for p in together] == [r.key for r in MIXED]
        assert [p.image.size for p in together] == MIXED_SIZES
        assert [(p.fields["width"], p.fields["height"]) for p in together] == MIXED_SIZES
        assert {p.fields["batch_size"] for p in together} == {len(MIXED)}
        for painting, row in zip(together, MIXED, strict=True):
            (alone,) = edit_painter.paint([row], PRESERVE)
            if row_by_row:
                assert painting.image.tobytes() == alone.image.tobytes(), row.key
            else:  # float images within 1e-4: at most one quantisation level apart
                diff = np.abs(np.asarray(painting.image, np.int16) - np.asarray(alone.image, np.int16))
                assert diff.max() <= 1, row.key
        if not row_by_row:  # the float images of a same-size sub-batch, batched vs alone
            batched = edit_painter.render([MIXED[0], MIXED[2]], PRESERVE)
            for index, row in enumerate([MIXED[0], MIXED[2]]):
                assert (batched[index] - edit_painter.render([row], PRESERVE)[0]).abs().max() <= 1e-4
            with pytest.raises(ValueError, match="share one output size"):
                edit_painter.render(MIXED[:2], PRESERVE)
    finally:
        edit_painter.row_by_row = True


def test_micro_batches_group_by_size_in_order_of_appearance(edit_painter):
    sizes = [(72, 56), (56, 72), (72, 56), (64, 64), (56, 72)]
    edit_painter.row_by_row = False
    try:
        assert edit_painter.micro_batches(sizes) == [[0, 2], [1, 4], [3]]
    finally:
        edit_painter.row_by_row = True
    assert edit_painter.micro_batches(sizes) == [[0], [1], [2], [3], [4]]
    assert edit_painter.paint([], PRESERVE) == []


# ------------------------------------------------------------------------------------------ tiled decode


@pytest.fixture
def small_tiles(edit_painter):
    """64 px tiles, 48 px apart (16 px blended) on the tiny VAE; the painter's settings come back after."""
    vae.set_tile_geometry(edit_painter.modules.vae, 64, 48)
    saved = edit_painter.vae_tile_pixels
    yield edit_painter
    edit_painter.vae_tile_pixels = saved
    vae.set_tile_geometry(edit_painter.modules.vae)


def test_tiled_decode_above_the_threshold_is_close_to_untiled(small_tiles):
    painter = small_tiles
    module = painter.modules.vae
    image = decode_source(edit("x", (200, 136)))
    with torch.inference_mode():
        latents = vae.encode(
            module, vae.source_pixels(image, (128, 96))[None].repeat(2, 1, 1, 1), painter.arch.scaling_factor
        )
        latents[1] = latents[1].flip(-1)  # two different rows
        calls = []
        original = module.tiled_decode

        def spy(z, return_dict=True):
            calls.append(tuple(z.shape))
            return original(z, return_dict=return_dict)

        module.tiled_decode = spy
        try:
            painter.vae_tile_pixels = None
            plain = painter.decode(latents)
            painter.vae_tile_pixels = 128 * 96  # at the threshold: not tiled
            assert torch.equal(painter.decode(latents), plain) and calls == []
            painter.vae_tile_pixels = 128 * 96 - 1
            tiled = painter.decode(latents)
        finally:
            del module.tiled_decode
    assert calls == [(1, 4, 12, 16)] * 2  # row by row
    assert tiled.shape == plain.shape == (2, 3, 96, 128)
    diff = (tiled - plain).abs()
    # Random tiny weights (measured: mean 0.034, max 0.42 on [-1, 1]); a trained VAE is far smoother, but the
    # decoder's attention sees one tile, so tiled decoding is only ever approximate.
    assert diff.mean() < 0.1 and diff.max() < 1.0
    assert torch.equal(tiled[1:], painter.decode(latents[1:]))  # each row decodes alone
    vae.set_tile_geometry(module, 128, 128)  # one tile covers the image: exactly the plain decode
    assert torch.equal(painter.decode(latents), plain)


def test_paint_decodes_in_tiles_above_the_threshold(small_tiles):
    painter = small_tiles
    params = PaintParams(steps=2, guidance_scale=7.5, resolution=128)
    row = edit("big", (90, 90))
    painter.vae_tile_pixels = None
    (plain,) = painter.paint([row], params)
    painter.vae_tile_pixels = 96 * 96
    (tiled,) = painter.paint([row], params)
    assert tiled.image.size == plain.image.size == (128, 128)
    diff = np.abs(np.asarray(tiled.image, np.int16) - np.asarray(plain.image, np.int16))
    assert 0 < diff.mean() < 0.1 * 127.5


def test_tile_settings_are_checked(edit_painter):
    with pytest.raises(ValueError, match="multiples of the latent grid"):
        vae.set_tile_geometry(edit_painter.modules.vae, 60, 48)
    with pytest.raises(ValueError, match="stride <= tile"):
        vae.set_tile_geometry(edit_painter.modules.vae, 64, 72)
    vae.set_tile_geometry(edit_painter.modules.vae)
    assert not edit_painter.modules.vae.use_tiling  # decode decides per call


# ------------------------------------------------------------------------------------------ prefetch


@pytest.mark.parametrize("row_by_row", [True, False])
def test_prefetch_gives_the_same_images(edit_painter, row_by_row):
    edit_painter.row_by_row = row_by_row
    try:
        edit_painter.prefetch = False
        plain = edit_painter.paint(MIXED, PRESERVE)
        edit_painter.prefetch = True
        overlapped = edit_painter.paint(MIXED, PRESERVE)
    finally:
        edit_painter.row_by_row = True
        edit_painter.prefetch = False
    assert [p.image.tobytes() for p in overlapped] == [p.image.tobytes() for p in plain]


@pytest.fixture
def prefetching(edit_painter):
    """Prefetch on (the CPU default is off: there the device is the same few cores)."""
    assert not edit_painter.prefetch
    edit_painter.prefetch = True
    yield edit_painter
    edit_painter.prefetch = False


def test_prefetch_stages_the_next_micro_batch_while_the_current_one_paints(prefetching, monkeypatch):
    edit_painter = prefetching
    events: list[tuple[str, str, float]] = []
    stage, render = edit_painter.stage, edit_painter._render

    def spy_stage(requests, size):
        events.append(("stage", requests[0].key, time.perf_counter()))
        out = stage(requests, size)
        events.append(("staged", threading.current_thread().name, time.perf_counter()))
        return out

    def spy_render(requests, params, staged=None):
        assert staged is not None
        time.sleep(0.2)  # the current micro-batch "on the device"
        out = render(requests, params, staged)
        events.append(("rendered", requests[0].key, time.perf_counter()))
        return out

    monkeypatch.setattr(edit_painter, "stage", spy_stage)
    monkeypatch.setattr(edit_painter, "_render", spy_render)
    edit_painter.paint(MIXED[:3], PRESERVE)
    started = {key: t for kind, key, t in events if kind == "stage"}
    rendered = {key: t for kind, key, t in events if kind == "rendered"}
    assert started["b"] < rendered["a"] and started["c"] < rendered["b"]
    assert {name for kind, name, _ in events if kind == "staged"} == {"dimflow-prefetch_0"}
    assert not [t for t in threading.enumerate() if t.name.startswith("dimflow-prefetch")]


def test_prefetch_errors_name_the_row(prefetching, monkeypatch):
    edit_painter = prefetching
    broken = PaintRequest(key="k3", prompt="p", seed=3, source=b"not an image")
    with pytest.raises(ValueError, match=r"row 'k3'.*cannot decode"):
        edit_painter.paint([edit("k1"), edit("k2"), broken, edit("k4")], PARAMS)

    original = vae.source_array

    def failing(image, size):
        if image.size == (64, 96):
            raise MemoryError("out of host memory")
        return original(image, size)

    monkeypatch.setattr(vae, "source_array", failing)
    with pytest.raises(
        RuntimeError, match=r"row 'b': preparing the source image failed: MemoryError"
    ) as info:
        edit_painter.paint(MIXED[:3], PRESERVE)
    assert isinstance(info.value.__cause__, MemoryError)
    assert not [t for t in threading.enumerate() if t.name.startswith("dimflow-prefetch")]


# ------------------------------------------------------------------------------------------ handler


def test_handler_checks_and_carries_the_settings(edit_painter):
    from transforms.painter.handler import PainterModelHandler

    handler = PainterModelHandler(checkpoint="tiny", task="edit", params=PRESERVE, vae_tile_pixels=None)
    assert handler.vae_tile_pixels is None and handler.params.aspect == "preserve"
    (result,) = handler.run_inference([edit("h", (80, 64))], edit_painter)
    assert result.inference.image.size == (72, 56)
    with pytest.raises(ValueError, match="vae_tile_pixels"):
        PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS, vae_tile_pixels=0)
    with pytest.raises(ValueError, match="aspect"):
        PainterModelHandler(
            checkpoint="tiny",
            task="edit",
            params=PaintParams(steps=1, guidance_scale=1.0, resolution=64, aspect="x"),
        )
