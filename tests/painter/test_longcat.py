"""LongCat kind: tiny checkpoints through diffusers' own pipelines, per-row seeds, full-size parameter counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from transforms.painter.longcat import facts
from transforms.painter.longcat.load import load_pipeline, load_text_processor
from transforms.painter.longcat.tiny import META_FILE, MODEL_INDEX, ensure_tiny_checkpoint

STEPS = 2


def generators(seeds):
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


@pytest.fixture(scope="module")
def t2i_pipe():
    pipe = load_pipeline(ensure_tiny_checkpoint("t2i"), "t2i")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def edit_pipe():
    pipe = load_pipeline(ensure_tiny_checkpoint("edit"), "edit")
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
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(tmp_path, "edit")
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        load_text_processor(tmp_path)


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
