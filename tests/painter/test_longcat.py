"""painter.kind longcat-image-edit: the tiny checkpoints through diffusers' own pipelines, our painter against
a direct pipeline call (parity), per-row seeds alone and in batches, sizes, checks naming the row or field,
render keys of the three kinds, and full-size parameter counts on the meta device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.painter.support import image_bytes, max_abs_diff, t2i_parity
from transforms.painter.base import PaintParams, PaintRequest
from transforms.painter.diffusers_checkpoint import CheckpointNotFound
from transforms.painter.diffusers_kind import load_pipeline
from transforms.painter.diffusers_painter import CallStyle, DiffusersPainter, crop_to_aspect, source_image
from transforms.painter.diffusers_processor import load_processor
from transforms.painter.handler import checkpoint_fingerprint
from transforms.painter.kinds import get_kind
from transforms.painter.longcat import facts
from transforms.painter.longcat.tiny import META_FILE, MODEL_INDEX, TEXT_PROCESSOR_DIR, ensure_tiny_checkpoint

STEPS = 2
KIND = facts.KIND
CPU = torch.device("cpu")
# guidance 4.5 > 1: classifier-free guidance against the negative prompt '' runs (two forwards per step)
PARAMS = PaintParams(steps=STEPS, guidance_scale=4.5, resolution=64)


def generators(seeds):
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


@pytest.fixture(scope="module")
def t2i_pipe():
    pipe = load_pipeline(ensure_tiny_checkpoint("t2i"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def edit_pipe():
    pipe = load_pipeline(ensure_tiny_checkpoint("edit"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def paint_t2i(pipe, prompts, seeds, height=64, width=96, output_type="np"):
    return pipe(
        prompts,
        height=height,
        width=width,
        num_inference_steps=STEPS,
        guidance_scale=facts.SAMPLING["t2i"]["guidance_scale"],
        generator=generators(seeds),
        output_type=output_type,
        **facts.T2I_FIXED,
    ).images


def paint_edit(pipe, image, prompt, seed, output_type="np"):
    return pipe(
        image,
        prompt,
        num_inference_steps=STEPS,
        guidance_scale=facts.SAMPLING["edit"]["guidance_scale"],
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type=output_type,
    ).images


@pytest.mark.parametrize("task", ["edit", "t2i"])
def test_tiny_folder_has_the_released_layout_and_is_reused(task, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = ensure_tiny_checkpoint(task)
    index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
    assert index["_class_name"] == facts.PIPELINE_CLASSES[task]
    assert index["text_processor"] == ["transformers", "Qwen2VLProcessor"]
    assert index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
    assert index["transformer"] == ["diffusers", "LongCatImageTransformer2DModel"]
    for part in ("transformer", "vae"):
        assert (folder / part / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "text_encoder" / "model.safetensors").is_file()
    assert (folder / "text_processor" / "preprocessor_config.json").is_file()
    assert json.loads((folder / META_FILE).read_text())["kind"] == facts.KIND
    stamp = (folder / MODEL_INDEX).stat().st_mtime_ns
    assert ensure_tiny_checkpoint(task) == folder  # a second call reuses the folder ...
    assert (folder / MODEL_INDEX).stat().st_mtime_ns == stamp  # ... without rebuilding it


def test_unknown_task_and_non_pipeline_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="task must be"):
        ensure_tiny_checkpoint("inpaint", tmp_path)
    with pytest.raises(CheckpointNotFound, match="model_index.json: cannot read it"):
        load_pipeline(tmp_path, dtype=torch.float32)
    with pytest.raises(FileNotFoundError, match="has no text_processor/ folder"):
        load_processor(tmp_path, TEXT_PROCESSOR_DIR)


def test_tiny_build_is_deterministic(tmp_path):
    """Two builds in separate caches give byte-identical weights (fixed seed, trained BPE)."""
    first, second = (
        ensure_tiny_checkpoint("t2i", tmp_path / "a"),
        ensure_tiny_checkpoint("t2i", tmp_path / "b"),
    )
    for part in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (first / part).read_bytes() == (second / part).read_bytes()


def test_tokenizer_keeps_qwen_special_tokens_whole(t2i_pipe):
    """The pipelines find <|vision_start|> and count <|image_pad|> tokens: each must be one token."""
    tokenizer = t2i_pipe.tokenizer
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(token)]
    assert t2i_pipe.text_encoder.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")


@pytest.mark.parametrize(("height", "width"), [(64, 96), (48, 32)])
def test_t2i_paints_the_requested_size(t2i_pipe, height, width):
    (image,) = paint_t2i(t2i_pipe, ["a red bicycle"], [7], height=height, width=width, output_type="pil")
    assert image.size == (width, height)
    assert np.asarray(image).std() > 0  # not a blank frame


@pytest.mark.parametrize("source_size", [(80, 48), (40, 64)])
def test_edit_paints_at_the_pipelines_own_size(edit_pipe, source_size):
    """The edit pipeline has no size argument: ~1 MP at the source's aspect, sides in multiples of 16."""
    source = Image.new("RGB", source_size, (200, 40, 30))
    (image,) = paint_edit(edit_pipe, source, "make it blue", seed=3, output_type="pil")
    width, height = facts.edit_output_size(*source_size)
    assert image.size == (width, height)
    assert width % facts.EDIT_SIZE_MULTIPLE == 0 and height % facts.EDIT_SIZE_MULTIPLE == 0
    assert abs(width * height - facts.EDIT_TARGET_AREA) < 0.05 * facts.EDIT_TARGET_AREA
    assert abs(width / height - source_size[0] / source_size[1]) < 0.05


@pytest.mark.parametrize("prompts", [["one", "two"], ["one", "two", "three"]])
def test_edit_pipeline_cannot_batch_rows(edit_pipe, prompts):
    """diffusers 0.42.1: one instruction (and so one source) per call; the painter goes row by row."""
    assert facts.BATCHES_DIFFERENT_SOURCES == {"edit": False, "t2i": True}
    sources = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(len(prompts))]
    with pytest.raises(ValueError, match="list` of length 1"):
        edit_pipe(sources, prompts, num_inference_steps=STEPS)


def test_edit_seed_decides_the_image(edit_pipe):
    source = Image.new("RGB", (48, 48), (20, 120, 200))
    first = paint_edit(edit_pipe, source, "add a cat", seed=11)
    assert np.array_equal(first, paint_edit(edit_pipe, source, "add a cat", seed=11))  # bit-exact on CPU
    assert not np.array_equal(first, paint_edit(edit_pipe, source, "add a cat", seed=12))


def test_t2i_row_alone_or_in_a_batch(t2i_pipe):
    """One generator per row: a row's image does not depend on its batch, its neighbours or its place.

    Alone, repeated: bit-exact. In a batch: equal to rounding only. diffusers draws each row's noise from
    its own generator, but CPU matmul/conv kernels pick different blockings for different batch sizes
    (the transformer and VAE differ by ~1e-6 between batch 1 and 3; the text embeddings are identical).
    """
    prompts, seeds = ["a red car", "a blue cat", "a green lamp"], [1, 2, 3]
    together = paint_t2i(t2i_pipe, prompts, seeds)
    reversed_batch = paint_t2i(t2i_pipe, prompts[::-1], seeds[::-1])[::-1]
    for index, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        alone = paint_t2i(t2i_pipe, [prompt], [seed])
        assert np.array_equal(alone, paint_t2i(t2i_pipe, [prompt], [seed]))
        assert np.abs(together[index] - alone[0]).max() <= 1e-4
        assert np.abs(reversed_batch[index] - alone[0]).max() <= 1e-4
    assert np.abs(together[0] - together[1]).max() > 1e-2  # rows really differ: the check above can fail
    other_seed = paint_t2i(t2i_pipe, [prompts[0]], [99])
    assert np.abs(other_seed[0] - together[0]).max() > 1e-2


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_parameter_counts():
    """The configs in facts.py (third-party copies, see its docstring) built on the meta device."""
    from diffusers import AutoencoderKL, LongCatImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    encoder = facts.TEXT_ENCODER_CONFIG
    with torch.device("meta"):
        transformer = LongCatImageTransformer2DModel(**facts.TRANSFORMER_CONFIG)
        vae = AutoencoderKL(**facts.VAE_CONFIG)
        text_encoder = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(
                text_config=dict(encoder["text_config"]),
                vision_config=dict(encoder["vision_config"]),
                **{k: v for k, v in encoder.items() if k not in ("text_config", "vision_config")},
            )
        )
    width = 24 * 128
    double_block = (
        36 * width**2 + 30 * width + 4 * 128
    )  # FLUX-style: 2 streams of qkv/out/adaLN/FF + qk norms
    single_block = 15 * width**2 + 11 * width + 2 * 128  # adaLN, qkv, 4x MLP in, 5x->1x out, qk norms
    assert sum(count(block) for block in transformer.transformer_blocks) == 10 * double_block
    assert sum(count(block) for block in transformer.single_transformer_blocks) == 20 * single_block
    assert count(transformer) == 6_270_668_864  # "6B parameters" (README)
    assert count(vae) == 83_819_683
    assert count(text_encoder) == 8_292_166_656  # Qwen2.5-VL-7B with its untied lm_head
    assert count(text_encoder.lm_head) == 3584 * 152064
    assert count(text_encoder.model.visual) == 676_550_144


# ------------------------------------------------------------------------------------------ the kind's painter


@pytest.fixture(scope="module")
def longcat_edit():
    return get_kind(KIND).load_painter("tiny", "edit", dtype=torch.float32, device=CPU)


@pytest.fixture(scope="module")
def longcat_t2i():
    return get_kind(KIND).load_painter("tiny", "t2i", dtype=torch.float32, device=CPU)


def reference_pipeline(task: str):
    """diffusers' own class and from_pretrained on the tiny folder (only the processor handed in)."""
    import diffusers

    folder = ensure_tiny_checkpoint(task)
    pipeline = getattr(diffusers, facts.PIPELINE_CLASSES[task]).from_pretrained(
        str(folder), text_processor=load_processor(folder, TEXT_PROCESSOR_DIR), dtype=torch.float32
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_the_kind_defaults_are_the_models_recommended_settings():
    from pipeline.spec import PainterSpec

    kind = get_kind(KIND)
    assert (kind.steps, kind.guidance_scale) == (
        facts.SAMPLING["edit"]["num_inference_steps"],
        facts.SAMPLING["edit"]["guidance_scale"],
    )
    assert (kind.checkpoint, kind.resolution) == (facts.CHECKPOINTS["edit"], 1024)
    spec = PainterSpec.model_validate({"kind": KIND})
    assert (spec.steps, spec.guidance_scale, spec.resolution) == (50, 4.5, 1024)
    assert (spec.checkpoint, spec.t2i_checkpoint) == ("meituan-longcat/LongCat-Image-Edit", None)
    explicit = PainterSpec.model_validate({"kind": KIND, "guidance_scale": 4.0, "t2i_checkpoint": "tiny"})
    assert (explicit.guidance_scale, explicit.steps, explicit.t2i_checkpoint) == (4.0, 50, "tiny")
    with pytest.raises(ValueError, match="painter.compile applies to painter.kind dim only"):
        PainterSpec.model_validate({"kind": KIND, "compile": "default"})


def test_edit_parity_with_a_direct_pipeline_call(longcat_edit, capsys):
    """The pipeline is the reference. A square row at 1024 is what the pipeline paints for a square source:
    the same pixels, no crop, no resize. A wide row in ``preserve`` at 64: the pipeline's output for the
    source cropped to the row's aspect, resized to the row's size."""
    reference = reference_pipeline("edit")
    square = PaintRequest("square", "make the background white", 7, image_bytes((64, 64)))
    wide = PaintRequest("wide", "add a soft shadow", 8, image_bytes((96, 64)))

    def direct(image, row):
        return reference(
            image=image,
            prompt=row.prompt,
            negative_prompt="",
            guidance_scale=PARAMS.guidance_scale,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(row.seed),
        ).images[0]

    (ours_square,) = longcat_edit.paint([square], PaintParams(STEPS, 4.5, 1024))
    expected_square = direct(source_image(square), square)
    assert ours_square.image.size == expected_square.size == (1024, 1024)
    preserve = PaintParams(STEPS, 4.5, 64, aspect="preserve")
    (ours_wide,) = longcat_edit.paint([wide], preserve)
    cropped = crop_to_aspect(source_image(wide), (80, 48))
    assert cropped.size == (96, 58)
    native = direct(cropped, wide)
    assert native.size == facts.edit_output_size(96, 58)
    expected_wide = native.resize((80, 48), Image.Resampling.LANCZOS)
    diffs = [max_abs_diff(ours_square.image, expected_square), max_abs_diff(ours_wide.image, expected_wide)]
    with capsys.disabled():
        print(f"\nlongcat edit parity: max abs pixel diff per row (square 1024, wide preserve 64) {diffs}")
    assert diffs == [0, 0]
    # the comparison can fail: another seed paints other pixels
    other = direct(source_image(square), PaintRequest("x", square.prompt, 99, None))
    assert max_abs_diff(other, expected_square) > 0


def test_t2i_parity_with_a_direct_pipeline_call_alone_and_batched(capsys):
    """Row by row (CPU default) against one direct call per row; batched (as on an accelerator) against one
    direct batched call."""
    reference = reference_pipeline("t2i")
    rows = [
        PaintRequest("cup", "a red cup on a wooden table", 1, None),
        PaintRequest("sky", 'a poster that says "SALE" over a calm sea', 2, None),
    ]

    def direct(prompts, seeds):
        return reference(
            prompt=prompts,
            negative_prompt=[""] * len(prompts),
            guidance_scale=PARAMS.guidance_scale,
            num_inference_steps=STEPS,
            width=64,
            height=64,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            enable_prompt_rewrite=False,
            enable_cfg_renorm=True,
        ).images

    found = t2i_parity(KIND, rows, PARAMS, direct)
    with capsys.disabled():
        print(f"\nlongcat t2i parity (max abs pixel diff per row; CPU kernels differ by batch size): {found}")
    assert found["alone"] == [0, 0] and found["batched"] == [0, 0]
    assert max(found["batch_vs_alone"]) <= 1  # one 8-bit level at most: rounding, not another row's noise


def test_an_edit_row_is_the_same_alone_or_in_a_batch(longcat_edit):
    """Edit rows go one per pipeline call on any device (the pipeline takes one prompt): a row's image is its
    image alone, bit for bit; the same source and prompt with another seed is another image."""
    rows = [
        PaintRequest("wide", "make the background white", 7, image_bytes((96, 64))),
        PaintRequest("wide-other-seed", "make the background white", 9, image_bytes((96, 64))),
    ]
    together = longcat_edit.paint(rows, PARAMS)
    for row, painting in zip(rows, together, strict=True):
        (alone,) = longcat_edit.paint([row], PARAMS)
        assert alone.image.tobytes() == painting.image.tobytes(), row.key
        assert painting.fields["batch_size"] == 2 and alone.fields["batch_size"] == 1
    assert together[0].image.tobytes() != together[1].image.tobytes()
    longcat_edit.row_by_row = False  # as on an accelerator: still one edit row per call
    try:
        assert longcat_edit.calls([(64, 64)] * 3) == [[0], [1], [2]]
    finally:
        longcat_edit.row_by_row = True


def test_a_t2i_row_is_the_same_alone_or_in_a_batch(longcat_t2i):
    rows = [
        PaintRequest("car", "a red car", 1, None),
        PaintRequest("cat", "a blue cat sitting on a green lamp in the rain", 2, None),
        PaintRequest("car-other-seed", "a red car", 3, None),
    ]
    together = longcat_t2i.paint(rows, PARAMS)
    reversed_order = longcat_t2i.paint(rows[::-1], PARAMS)[::-1]
    for row, painting, other in zip(rows, together, reversed_order, strict=True):
        (alone,) = longcat_t2i.paint([row], PARAMS)
        assert alone.image.tobytes() == painting.image.tobytes() == other.image.tobytes(), row.key
    assert together[0].image.tobytes() != together[2].image.tobytes()


def test_fields_sizes_and_aspect(longcat_edit):
    rows = [
        PaintRequest("wide", "x", 1, image_bytes((96, 64))),
        PaintRequest("tall-rgba", "y", 2, image_bytes((48, 80), mode="RGBA")),
    ]
    wide, tall = longcat_edit.paint(rows, PaintParams(1, 1.0, 64, aspect="preserve"))
    assert wide.image.size == (80, 48)  # the nearest 16-px bucket to 3:2 at ~64^2, not the ~1 MP painted
    assert tall.image.size[0] < tall.image.size[1] and tall.image.size[1] % 16 == 0
    assert wide.fields == {
        "painter": "longcat-image-edit:tiny-edit",
        "checkpoint_sha256": checkpoint_fingerprint("tiny", "edit", kind=KIND),
        "steps": 1,
        "guidance_scale": 1.0,
        "dtype": "float32",
        "vae_dtype": "float32",
        "device": "cpu",
        "batch_size": 2,
        "width": 80,
        "height": 48,
    }


def test_call_arguments_of_each_task(longcat_edit, longcat_t2i):
    """Edit calls take no size and get the source cropped to the row's aspect; text-to-image calls take the
    size and never rewrite prompts; guidance at or below 1 sends no negative prompt."""
    row = PaintRequest("wide", "x", 1, image_bytes((96, 64)))
    edit = longcat_edit.call_arguments([row], PaintParams(2, 4.5, 64), (64, 64))
    assert "width" not in edit and "height" not in edit and "enable_prompt_rewrite" not in edit
    assert edit["image"].size == (64, 64) and edit["negative_prompt"] == "" and edit["guidance_scale"] == 4.5
    assert longcat_edit.painted_size(edit, (64, 64)) == (1024, 1024)
    t2i_row = PaintRequest("t", "x", 1, None)
    off = longcat_t2i.call_arguments([t2i_row], PaintParams(2, 1.0, 64), (96, 64))
    assert "negative_prompt" not in off and off["guidance_scale"] == 1.0
    assert (off["width"], off["height"]) == (96, 64)
    assert off["enable_prompt_rewrite"] is False and off["enable_cfg_renorm"] is True
    assert longcat_t2i.painted_size(off, (96, 64)) == (96, 64)


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ((64, 64), (64, 64), (64, 64)),
        ((96, 64), (80, 48), (96, 58)),
        ((1, 1000), (64, 64), (1, 1)),
        ((1000, 1), (64, 64), (1, 1)),
        ((1000, 1), (16, 64), (1, 1)),  # a sliver: never an empty crop
        ((48, 80), (80, 48), (48, 29)),
        ((3, 5), (3, 5), (3, 5)),
    ],
)
def test_crop_to_aspect(source, target, expected):
    image = Image.new("RGB", source, (1, 2, 3))
    cropped = crop_to_aspect(image, target)
    assert cropped.size == expected
    if source[0] * target[1] == source[1] * target[0]:
        assert cropped is image


class _StubPipeline:
    """A pipeline that paints a fixed size, whatever it is asked (for the painter's own checks)."""

    def __init__(self, size):
        self.size = size
        self.vae = type(
            "Vae", (), {"enable_tiling": lambda self: None, "disable_tiling": lambda self: None}
        )()

    def __call__(self, **arguments):
        return type("Output", (), {"images": [Image.new("RGB", self.size)]})()


def _stub_painter(size, rows_per_call=1):
    style = CallStyle(
        guidance_argument="guidance_scale",
        negative_prompt="",
        rows_per_call={"edit": rows_per_call},
        unsized={"edit": facts.edit_output_size},
    )
    return DiffusersPainter(
        name="stub",
        task="edit",
        pipeline=_StubPipeline(size),
        style=style,
        checkpoint_sha256="0" * 64,
        dtype=torch.float32,
        device=CPU,
        grid=16,
    )


def test_an_unsized_pipeline_is_checked_and_paints_one_row_per_call():
    with pytest.raises(ValueError, match="unsized edit pipeline paints one row per call"):
        _stub_painter((1024, 1024), rows_per_call=None)
    row = PaintRequest("odd-size", "x", 1, image_bytes((64, 64)))
    with pytest.raises(RuntimeError, match=r"row 'odd-size': the pipeline painted \(512, 512\), expected"):
        _stub_painter((512, 512)).paint([row], PARAMS)
    (painting,) = _stub_painter((1024, 1024)).paint([row], PARAMS)
    assert painting.image.size == (64, 64)  # resized to the row's size


@pytest.mark.parametrize(
    ("task", "request_", "message"),
    [
        ("edit", PaintRequest("no-source", "x", 1, None), "row 'no-source': task is 'edit'"),
        ("t2i", PaintRequest("has-source", "x", 1, image_bytes()), "row 'has-source': task is 't2i'"),
        ("edit", PaintRequest("neg-seed", "x", -1, image_bytes()), "row 'neg-seed': seed"),
        ("edit", PaintRequest("garbage", "x", 1, b"\x89PNG not really"), "row 'garbage': cannot decode"),
    ],
)
def test_bad_requests_name_the_row(longcat_edit, longcat_t2i, task, request_, message):
    painter = longcat_edit if task == "edit" else longcat_t2i
    with pytest.raises(ValueError, match=message):
        painter.paint([request_], PARAMS)


def test_checkpoint_names_and_their_errors(tmp_path):
    edit_dir, t2i_dir = ensure_tiny_checkpoint("edit"), ensure_tiny_checkpoint("t2i")
    assert checkpoint_fingerprint(str(edit_dir), "edit", kind=KIND) == checkpoint_fingerprint(
        "tiny", "edit", kind=KIND
    )
    with pytest.raises(CheckpointNotFound, match="is a LongCatImagePipeline.*painter.t2i_checkpoint"):
        checkpoint_fingerprint(str(t2i_dir), "edit", kind=KIND)
    with pytest.raises(CheckpointNotFound, match="is a LongCatImageEditPipeline.*painter.checkpoint"):
        checkpoint_fingerprint(str(edit_dir), "t2i", kind=KIND)
    with pytest.raises(
        CheckpointNotFound, match="'meituan-longcat/LongCat-Image-Edit' is not a local folder.*offline"
    ):
        checkpoint_fingerprint("meituan-longcat/LongCat-Image-Edit", "edit", kind=KIND)
    with pytest.raises(ValueError, match="multiple of the latent grid \\(16 px"):
        checkpoint_fingerprint("tiny", "edit", PaintParams(2, 4.5, 72), kind=KIND)
    no_vae = tmp_path / "no-vae-config"
    import shutil

    shutil.copytree(edit_dir, no_vae)
    (no_vae / "vae" / "config.json").unlink()
    with pytest.raises(CheckpointNotFound, match="cannot read the VAE's block_out_channels"):
        checkpoint_fingerprint(str(no_vae), "edit", PARAMS, kind=KIND)
    with pytest.raises(ValueError, match="painter.compile applies to painter.kind dim only"):
        get_kind(KIND).load_painter("tiny", "edit", dtype=torch.float32, device=CPU, compile="default")


def test_render_keys_differ_between_all_three_kinds_for_the_same_row(tmp_path):
    """Same row, settings and checkpoint name: the kind (in the painter config) and each kind's checkpoint
    hash give each kind its own render key, for edit and text-to-image rows alike."""
    from pipeline.edit import painter_config
    from pipeline.run import job_keys
    from pipeline.spec import JobSpec
    from transforms.schema import render_key

    keys = {}
    for kind in ("dim", "qwen-image-edit", KIND):
        spec = JobSpec.model_validate(
            {
                "name": "keys",
                "manifest": str(tmp_path / "m.jsonl"),
                "output": str(tmp_path / "out"),
                "painter": {
                    "kind": kind,
                    "checkpoint": "tiny",
                    "t2i_checkpoint": "tiny",
                    "resolution": 64,
                    "steps": 4,
                    "guidance_scale": 3.0,
                },
            }
        )
        job = job_keys(spec)
        assert job.painter_config == painter_config(spec) and job.painter_config["kind"] == kind
        assert job.checkpoint_sha256["edit"] == checkpoint_fingerprint("tiny", "edit", kind=kind)
        for mode in ("edit", "t2i"):
            keys[kind, mode] = render_key(
                source_sha256="a" * 64 if mode == "edit" else None,
                instruction="make it red",
                designer_config=job.designer_config,
                painter_config={**job.painter_config, "mode": mode},
                checkpoint_sha256=job.checkpoint_sha256[mode],
                seed=233,
            )
    assert len(set(keys.values())) == 6, keys
