"""painter.kind qwen-image-edit with native masks (``mask.mode: native+composite``): a row whose request carries
a mask is painted by diffusers' QwenImageEditInpaintPipeline over the edit pipeline's own modules, with the
pixels of a direct call of that pipeline; rows without one keep the edit pipeline; masks are read in one
convention (white or opaque = may change) and bad ones fail their row, naming it and the field."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from tests.painter.support import image_bytes, max_abs_diff
from transforms.painter.base import PaintParams, PaintRequest
from transforms.painter.diffusers_painter import MASK_THRESHOLD, mask_image
from transforms.painter.handler import PainterModelHandler, PaintFailure
from transforms.painter.kinds import KIND_NAMES, NATIVE_MASK_KINDS, get_kind

KIND = "qwen-image-edit"
CPU = torch.device("cpu")
PARAMS = PaintParams(steps=2, guidance_scale=4.0, resolution=64)
SOURCE_SIZE = (96, 64)


@pytest.fixture(scope="module")
def edit_dir():
    from transforms.painter.qwen.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint("edit")


@pytest.fixture(scope="module")
def qwen_edit(edit_dir):
    return get_kind(KIND).load_painter("tiny", "edit", dtype=torch.float32, device=CPU)


# Inpainting paints about 1 MP whatever the row asks (diffusers' calculate_dimensions(1024 * 1024, ratio)): some
# seconds a row on a CPU even for the tiny model. Every test but the full-size parity check paints at this
# area instead, through the same function (diffusers' pipeline and our painter both read it).
SMALL_AREA = 128 * 128
FULL_SIZE_TESTS = {"test_masked_row_has_the_pixels_of_a_direct_inpaint_pipeline_call"}


@pytest.fixture(autouse=True)
def small_inpaint_area(request, monkeypatch):
    if request.node.originalname in FULL_SIZE_TESTS:
        return
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_inpaint as inpaint

    original = inpaint.calculate_dimensions
    monkeypatch.setattr(inpaint, "calculate_dimensions", lambda _area, ratio: original(SMALL_AREA, ratio))


def left_half_mask(size=SOURCE_SIZE, mode: str = "L") -> Image.Image:
    """White (may change) on the left half, black (kept) on the right; as alpha for RGBA/LA."""
    width, height = size
    if mode == "L":
        image = Image.new("L", size, 0)
        image.paste(255, (0, 0, width // 2, height))
        return image
    image = Image.new(mode, size, (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    image.paste((0, 0, 0, 255) if mode == "RGBA" else (0, 255), (0, 0, width // 2, height))
    return image


def encoded(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def masked_row(key: str = "masked", seed: int = 7, mask: bytes | None = None) -> PaintRequest:
    return PaintRequest(
        key,
        "make the background white",
        seed,
        image_bytes(SOURCE_SIZE),
        mask=encoded(left_half_mask()) if mask is None else mask,
    )


# ------------------------------------------------------------------------------------------ parity


def test_masked_row_has_the_pixels_of_a_direct_inpaint_pipeline_call(qwen_edit, edit_dir, capsys):
    """The reference is diffusers' QwenImageEditInpaintPipeline loaded on its own from the same checkpoint,
    called with the source, the mask (white = repainted), strength 1.0 and the row's seed; its output resized
    to the row's size as the painter resizes it."""
    from diffusers import QwenImageEditInpaintPipeline

    from transforms.painter.diffusers_painter import source_image
    from transforms.painter.diffusers_processor import load_processor

    reference = QwenImageEditInpaintPipeline.from_pretrained(
        str(edit_dir), processor=load_processor(edit_dir, "processor"), dtype=torch.float32
    )
    reference.set_progress_bar_config(disable=True)
    row = masked_row()
    (ours,) = qwen_edit.paint([row], PARAMS)
    painted = reference(
        image=source_image(row),
        mask_image=left_half_mask(),
        prompt=row.prompt,
        negative_prompt=" ",
        true_cfg_scale=PARAMS.guidance_scale,
        strength=1.0,
        num_inference_steps=PARAMS.steps,
        generator=torch.Generator().manual_seed(row.seed),
    ).images[0]
    expected = painted.resize((64, 64), Image.Resampling.LANCZOS)
    diff = max_abs_diff(ours.image, expected)
    # the same row without its mask is painted by the edit pipeline: other pixels (the comparison can fail)
    (unmasked,) = qwen_edit.paint([PaintRequest(row.key, row.prompt, row.seed, row.source)], PARAMS)
    with capsys.disabled():
        print(f"\nqwen masked-edit parity: max abs pixel diff {diff}; painted {painted.size}")
    assert diff == 0
    assert painted.size == (1248, 832)  # diffusers' own size for a 3:2 source, as inpaint_painted_size says
    assert max_abs_diff(ours.image, unmasked.image) > 0
    assert ours.image.size == (64, 64) and ours.fields["width"] == 64 and ours.fields["height"] == 64


def test_each_row_goes_to_its_pipeline_and_plain_rows_are_unchanged(qwen_edit, monkeypatch):
    """In one batch, masked rows call the inpaint pipeline (one row per call, with mask_image), the others the
    edit pipeline (no mask_image); an unmasked row paints what it paints in a batch without masks."""
    calls: list[tuple[str, str, bool]] = []

    def recording(pipeline, label):
        def call(**arguments):
            calls.append((label, arguments["prompt"], "mask_image" in arguments))
            return pipeline(**arguments)

        return call

    plain = PaintRequest("plain", "add a soft shadow", 8, image_bytes(SOURCE_SIZE))
    (plain_alone,) = qwen_edit.paint([plain], PARAMS)
    rows = [masked_row("m1", 7), plain, masked_row("m2", 9)]
    rows[2] = PaintRequest("m2", "a wooden table", 9, rows[2].source, mask=rows[2].mask)
    monkeypatch.setattr(
        qwen_edit,
        "pipeline_for",
        lambda arguments: recording(
            qwen_edit.masked_pipeline if "mask_image" in arguments else qwen_edit.pipeline,
            "inpaint" if "mask_image" in arguments else "edit",
        ),
    )
    assert qwen_edit.calls([(64, 64)] * 3, [True, False, True]) == [[0], [2], [1]]
    paintings = qwen_edit.paint(rows, PARAMS)
    assert sorted(calls) == sorted(
        [
            ("inpaint", "make the background white", True),
            ("inpaint", "a wooden table", True),
            ("edit", "add a soft shadow", False),
        ]
    )
    assert [p.key for p in paintings] == ["m1", "plain", "m2"]
    assert paintings[1].image.tobytes() == plain_alone.image.tobytes()


def test_the_inpaint_pipeline_shares_the_loaded_modules(qwen_edit):
    """No second copy of the weights: every component is the edit pipeline's own object."""
    edit, inpaint = qwen_edit.pipeline.components, qwen_edit.masked_pipeline.components
    assert type(qwen_edit.masked_pipeline).__name__ == "QwenImageEditInpaintPipeline"
    assert (
        set(edit)
        == set(inpaint)
        == {"scheduler", "vae", "text_encoder", "tokenizer", "processor", "transformer"}
    )
    for name in edit:
        assert inpaint[name] is edit[name], name
    pointers = {p.data_ptr() for p in qwen_edit.pipeline.transformer.parameters()}
    assert pointers == {p.data_ptr() for p in qwen_edit.masked_pipeline.transformer.parameters()}


def test_a_half_precision_painter_keeps_its_dtype_with_the_inpaint_pipeline(edit_dir):
    """diffusers' from_pipe would recast the shared modules to float32 (its default dtype): not used."""
    painter = get_kind(KIND).load_painter("tiny", "edit", dtype=torch.bfloat16, device=CPU)
    for module in ("transformer", "vae", "text_encoder"):
        dtypes = {p.dtype for p in getattr(painter.masked_pipeline, module).parameters()}
        assert dtypes == {torch.bfloat16}, module


# ------------------------------------------------------------------------------------------ conventions


def test_alpha_and_grey_masks_paint_alike(qwen_edit):
    """An RGBA mask (opaque = may change) and a grey one with values either side of the threshold paint the
    same pixels as the plain white/black mask."""
    (reference,) = qwen_edit.paint([masked_row()], PARAMS)
    grey = left_half_mask().point(lambda v: MASK_THRESHOLD if v else MASK_THRESHOLD - 1)
    for variant in (encoded(left_half_mask(mode="RGBA")), encoded(grey)):
        (painting,) = qwen_edit.paint([masked_row(mask=variant)], PARAMS)
        assert painting.image.tobytes() == reference.image.tobytes()


@pytest.mark.parametrize(
    ("mask", "expected_left", "expected_right"),
    [
        (left_half_mask(), 255, 0),
        (left_half_mask(mode="RGBA"), 255, 0),
        (left_half_mask(mode="LA"), 255, 0),
        (left_half_mask().convert("RGB"), 255, 0),
        (left_half_mask().point(lambda v: 200 if v else 127), 255, 0),
        (left_half_mask().convert("1"), 255, 0),
        (Image.new("L", SOURCE_SIZE, 255), 255, 255),  # all white: everything may change
    ],
)
def test_mask_image_is_binary_in_the_pipelines_convention(mask, expected_left, expected_right):
    row = masked_row(mask=encoded(mask))
    converted = mask_image(row, SOURCE_SIZE)
    assert converted.mode == "L" and converted.size == SOURCE_SIZE
    assert set(converted.getdata()) <= {0, 255}
    assert converted.getpixel((0, 0)) == expected_left
    assert converted.getpixel((SOURCE_SIZE[0] - 1, SOURCE_SIZE[1] - 1)) == expected_right


def test_an_exif_rotated_mask_is_read_upright():
    """Stored 64x96 with Orientation 6 (rotate 90 clockwise to view): upright 96x64, as its source."""
    stored = left_half_mask().transpose(Image.Transpose.ROTATE_90)  # 64x96, as a camera stores it
    assert stored.size == (64, 96)
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = mask_image(masked_row(mask=encoded(stored, "JPEG", exif=exif, quality=100)), SOURCE_SIZE)
    assert upright.size == SOURCE_SIZE
    assert upright.getpixel((0, 0)) == 255 and upright.getpixel((SOURCE_SIZE[0] - 1, 0)) == 0


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (
            encoded(left_half_mask((64, 96))),
            "row 'masked': field mask: the mask is 64x96 but the source is 96x64",
        ),
        (encoded(left_half_mask((95, 64))), "field mask: the mask is 95x64"),
        (b"\x89PNG\r\n\x1a\n but truncated", "row 'masked': field mask: cannot decode the mask image"),
        (b"", "field mask: cannot decode"),
        (b"GIF89a" + bytes(40), "field mask: cannot decode"),
    ],
)
def test_bad_masks_fail_the_row_naming_the_field(qwen_edit, mask, message):
    with pytest.raises(ValueError, match=message):
        qwen_edit.paint([masked_row(mask=mask)], PARAMS)


def test_a_bad_mask_fails_its_row_alone_in_the_handler(edit_dir):
    handler = PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS, batch_size=3, kind=KIND)
    model = handler.load_model()
    good = masked_row("good")
    bad = masked_row("bad-mask", mask=b"not an image")
    plain = PaintRequest("plain", "add a soft shadow", 8, image_bytes(SOURCE_SIZE))
    results = handler.run_inference([good, bad, plain], model)
    assert [r.example.key for r in results] == ["good", "bad-mask", "plain"]
    failure = results[1].inference
    assert isinstance(failure, PaintFailure) and "row 'bad-mask': field mask: cannot decode" in failure.error
    (alone,) = model.replicas[0].painter.paint([good], PARAMS)
    assert results[0].inference.image.tobytes() == alone.image.tobytes()


def test_a_mask_for_a_painter_without_native_masks_is_refused(edit_dir):
    """A text-to-image painter (and any kind without a masked call) refuses a masked request, naming it."""
    from transforms.painter.qwen.tiny import ensure_tiny_checkpoint

    ensure_tiny_checkpoint("t2i")
    t2i = get_kind(KIND).load_painter("tiny", "t2i", dtype=torch.float32, device=CPU)
    assert t2i.masked_pipeline is None
    request = PaintRequest("t2i-masked", "a cup", 1, None, mask=encoded(left_half_mask()))
    with pytest.raises(ValueError, match="row 't2i-masked': the request carries a mask but painter"):
        t2i.paint([request], PARAMS)


def test_only_qwen_takes_native_masks():
    assert NATIVE_MASK_KINDS == ("qwen-image-edit",)
    assert [name for name in KIND_NAMES if get_kind(name).native_masks] == ["qwen-image-edit"]
