"""The production painter against the plain reference (``tests/painter/reference.py``) on the tiny preset, fp32.

Every production image, whether painted alone or in a batch (row by row, or truly batched with padding and
masks), must match the reference's batch-1 image of the same row to within ``TOLERANCE`` (max abs over the
decoded pixels, before clamping). Covered: edit and t2i, guidance on and off (g == 1 runs the conditional
branch only), mixed instruction lengths and seeds in one batch, RGBA and non-square sources, and conditions
longer than the null condition (the reference keeps their last ``max_condition_length`` tokens), and DIM's own
30 steps at guidance 7.5 (the other tests use 5 steps, which already exercise every solver branch).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.painter.reference import Reference, load_reference
from tests.painter.support import image_bytes
from transforms.painter.base import PaintParams, PaintRequest

TOLERANCE = 1e-4
STEPS = 5  # first order, three second-order steps, first-order landing on t = 0
RESOLUTION = 32  # a 4 x 4 latent: every semantic under test shows at this size, and it is cheap
SQUARE = image_bytes((64, 64), color=(30, 90, 200))
WIDE = image_bytes((80, 64))
TALL_RGBA = image_bytes((48, 72), color=(200, 40, 40), mode="RGBA")
LONG = " ".join(
    [
        "Edit instruction: add a small white cat sleeping on the sofa near the window.",
        "Global layout: a kitchen with a wooden table in the center and a lamp on the left.",
        "Local objects: the mug is green, the chair is made of metal, the wall is painted yellow.",
        "Edit area: the upper right corner of the image, where the clock hangs on the wall.",
        "Edited image: the same scene in the style of a watercolor painting, bright and clean.",
    ]
    * 4
)


@pytest.fixture(scope="module")
def edit_reference(tiny_edit_dir) -> Reference:
    return load_reference(Path(tiny_edit_dir), "edit")


@pytest.fixture(scope="module")
def t2i_reference(tiny_t2i_dir) -> Reference:
    return load_reference(Path(tiny_t2i_dir), "t2i")


_CACHE: dict[tuple, torch.Tensor] = {}


def reference_image(reference: Reference, request: PaintRequest, params: PaintParams) -> torch.Tensor:
    """The reference's batch-1 image for one row (memoised: several tests compare against the same row)."""
    key = (reference.task, request.prompt, request.source, request.seed, params)
    if key not in _CACHE:
        source = Image.open(io.BytesIO(request.source)) if request.source is not None else None
        _CACHE[key] = reference.render(
            request.prompt,
            source,
            request.seed,
            steps=params.steps,
            guidance_scale=params.guidance_scale,
            resolution=params.resolution,
        )
    return _CACHE[key]


def setup(request, task: str):
    painter = request.getfixturevalue(f"{task}_painter")
    reference = request.getfixturevalue(f"{task}_reference")
    return painter, reference


def row(task: str, key: str, prompt: str, seed: int, source: bytes = WIDE) -> PaintRequest:
    return PaintRequest(key=key, prompt=prompt, seed=seed, source=source if task == "edit" else None)


def compare(
    painter, reference, rows: list[PaintRequest], params: PaintParams, *, row_by_row: bool
) -> list[float]:
    """Production renders ``rows`` in one call; each row is compared with the reference alone."""
    previous = painter.row_by_row
    painter.row_by_row = row_by_row
    try:
        images = painter.render(rows, params)
    finally:
        painter.row_by_row = previous
    assert images.shape == (len(rows), 3, params.resolution, params.resolution)
    diffs = []
    for index, request in enumerate(rows):
        expected = reference_image(reference, request, params)
        diffs.append(float((images[index : index + 1] - expected).abs().max()))
    assert max(diffs) <= TOLERANCE, f"max abs difference per row {diffs} > {TOLERANCE}"
    return diffs


@pytest.mark.parametrize("guidance", [7.5, 1.0])
@pytest.mark.parametrize("task", ["edit", "t2i"])
def test_single_row_matches_the_reference(request, task, guidance):
    painter, reference = setup(request, task)
    params = PaintParams(steps=STEPS, guidance_scale=guidance, resolution=RESOLUTION)
    compare(painter, reference, [row(task, "a", "make the sky purple", 7)], params, row_by_row=True)


@pytest.mark.parametrize("row_by_row", [True, False])
@pytest.mark.parametrize("task", ["edit", "t2i"])
def test_mixed_batch_matches_the_reference_row_by_row(request, task, row_by_row):
    """Different instruction lengths, seeds and sources in one call; true batching pads and masks."""
    painter, reference = setup(request, task)
    params = PaintParams(steps=STEPS, guidance_scale=7.5, resolution=RESOLUTION)
    rows = [
        row(task, "short", "red", 11, SQUARE),
        row(task, "long", "Remove the lemons on the table. Make the sky purple at sunset.", 2**40 + 5, WIDE),
        row(task, "mid", "add a small white cat", 13, TALL_RGBA),
    ]
    compare(painter, reference, rows, params, row_by_row=row_by_row)


@pytest.mark.parametrize("task", ["edit", "t2i"])
def test_guidance_one_in_a_batch(request, task):
    painter, reference = setup(request, task)
    params = PaintParams(steps=STEPS, guidance_scale=1.0, resolution=RESOLUTION)
    rows = [row(task, "a", "red", 21, SQUARE), row(task, "b", "add a small white cat near the window", 22)]
    compare(painter, reference, rows, params, row_by_row=False)
    # The guided and unguided references really differ (the comparison above is not vacuous).
    guided = reference_image(reference, rows[0], PaintParams(STEPS, 7.5, RESOLUTION))
    assert (reference_image(reference, rows[0], params) - guided).abs().max() > 1e-2


@pytest.mark.parametrize("row_by_row", [True, False])
@pytest.mark.parametrize("task", ["edit", "t2i"])
def test_condition_longer_than_the_null_condition_keeps_its_last_tokens(request, task, row_by_row):
    painter, reference = setup(request, task)
    limit = int(reference.arch["max_condition_length"])
    source = Image.open(io.BytesIO(WIDE)) if task == "edit" else None
    assert reference.encode(LONG, source).shape[0] > limit  # the case under test really truncates
    params = PaintParams(steps=STEPS, guidance_scale=4.5, resolution=RESOLUTION)
    rows = [row(task, "long", LONG, 31), row(task, "short", "red", 32, SQUARE)]
    compare(painter, reference, rows, params, row_by_row=row_by_row)


@pytest.mark.parametrize("task", ["edit", "t2i"])
def test_dim_sampling_defaults_thirty_steps_in_a_batch(request, task):
    """DIM's own settings (30 steps, guidance 7.5): the error stays in bounds over the whole schedule."""
    painter, reference = setup(request, task)
    params = PaintParams(steps=30, guidance_scale=7.5, resolution=RESOLUTION)
    rows = [row(task, "a", "make the sky purple", 233, SQUARE), row(task, "b", "add a small white cat", 5)]
    diffs = compare(painter, reference, rows, params, row_by_row=False)
    print(f"{task} 30 steps, batch of 2: max abs difference per row {diffs}")
