"""The GPU levers: batched encoder, the null condition's keys/values shared (not copied per row),
``painter.vae_dtype`` and ``painter.compile`` modes; each keeps the exactness contracts."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from diffusers.models.transformers.sana_transformer import SanaAttnProcessor2_0
from PIL import Image

from tests.painter.support import image_bytes
from transforms.painter.base import PaintParams, PaintRequest, compile_mode
from transforms.painter.dim import vae
from transforms.painter.dim.attention import CachedCrossAttnProcessor, CrossKV, fold_bias
from transforms.painter.dim.dit import pad_conditions
from transforms.painter.dim.pipeline import DimPainter, load_dim_painter

PARAMS = PaintParams(steps=2, guidance_scale=7.5, resolution=64)
CPU = torch.device("cpu")


def picture(size=(80, 64), color=(10, 200, 30), mode="RGB") -> Image.Image:
    return Image.open(io.BytesIO(image_bytes(size, color=color, mode=mode)))


# ---------------------------------------------------------------------------------------------- encoder

MIXED = [
    ("red", picture()),
    ("a much longer prompt that describes the whole scene in detail, object by object, twice over", None),
    ("add a small white cat", picture((48, 72), color=(200, 40, 40), mode="RGBA")),
    ("snow", None),
]


def test_batched_encoder_equals_rows_alone_with_and_without_images(edit_painter):
    """Right padding + mask, image rows and text rows in one forward: each row's condition is its own."""
    encoder = edit_painter.encoder
    prompts, images = [p for p, _ in MIXED], [i for _, i in MIXED]
    mask = encoder.batch_inputs(prompts, images)["attention_mask"]
    lengths = mask.sum(dim=1).tolist()
    assert len(set(lengths)) == len(MIXED) and not bool(mask.all())  # padding really happened
    together = encoder.encode_batch(prompts, images)
    for (prompt, image), batched in zip(MIXED, together, strict=True):
        alone = encoder.encode(prompt, image)
        assert torch.equal(batched.token_ids, alone.token_ids)
        assert (batched.hidden - alone.hidden).abs().max() <= 1e-5
    # The image rows do carry image tokens, the text rows none (the mix is real).
    pad = encoder.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert [bool((c.token_ids == pad).any()) for c in together] == [True, False, True, False]


def test_one_row_is_exactly_the_unpadded_forward(edit_painter):
    """A batch of one is the plain single-row processor call and forward, bit for bit (the CPU contract)."""
    encoder = edit_painter.encoder
    prompt, image = "make it snow", picture()
    text = encoder.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        tokenize=False,
        add_generation_prompt=False,
    )
    plain = encoder.processor(text=[text], images=[encoder_image(encoder, image)], return_tensors="pt")
    ours = encoder.inputs(prompt, image)
    assert set(plain) == set(ours)
    for key in plain:
        assert torch.equal(plain[key], ours[key]), key
    with torch.inference_mode():
        hidden = encoder.model.model(**plain, use_cache=False).last_hidden_state[0]
    begin, end = encoder.user_span(plain["input_ids"][0])
    assert torch.equal(encoder.encode(prompt, image).hidden, hidden[begin:end])


def encoder_image(encoder, image):
    from transforms.painter.dim.encoder import encoder_image as resize

    return resize(image, encoder.image_size)


@pytest.mark.parametrize("row_by_row", [True, False])
def test_row_by_row_encodes_one_row_per_forward(edit_painter, row_by_row):
    painter = edit_painter
    calls: list[int] = []
    original = painter.encoder.encode_batch

    def spy(prompts, images):
        calls.append(len(prompts))
        return original(prompts, images)

    prompts = [p for p, _ in MIXED[:3]]
    images = [i for _, i in MIXED[:3]]
    painter.encoder.encode_batch = spy
    before = painter.row_by_row
    painter.row_by_row = row_by_row
    try:
        conditions = painter.conditions(prompts, images)
    finally:
        painter.row_by_row = before
        del painter.encoder.encode_batch
    assert calls == ([1, 1, 1] if row_by_row else [3])
    for condition, prompt, image in zip(conditions, prompts, images, strict=True):
        alone = painter.condition(prompt, image)  # the CPU default: row by row
        if row_by_row:
            assert torch.equal(condition, alone)
        else:
            assert (condition - alone).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------- null K/V


def conditions(dit, lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    channels = dit.y_embedding.shape[1]
    return [torch.randn(n, channels, generator=generator) for n in lengths]


def test_null_keys_values_are_one_row_per_block(edit_painter):
    dit = edit_painter.modules.dit
    blocks = dit.transformer.transformer_blocks
    conds = conditions(dit, (3, 11, 7))
    with torch.inference_mode():
        cross = dit.cross_condition(conds, with_null=True, pad_multiple=8)
        expected_keys, expected_values = dit.caption_kv(dit.null_condition(16)[None])
    assert cross.batch_size == 6 and cross.lengths == (3, 11, 7)
    assert len(cross.null_keys) == len(cross.null_values) == len(blocks)
    for key, value, null_key, null_value in zip(
        cross.keys, cross.values, cross.null_keys, cross.null_values, strict=True
    ):
        assert key.shape[0] == value.shape[0] == 3  # the conditional rows only
        assert null_key.shape[0] == null_value.shape[0] == 1  # one copy, whatever the batch
        assert null_key.shape[2] == key.shape[2] == 16  # padded to a multiple of 8
    for got, want in zip(cross.null_keys + cross.null_values, expected_keys + expected_values, strict=True):
        assert torch.equal(got, want)
    assert cross.bias is not None and cross.bias.shape == (3, 1, 1, 16)


def test_no_null_rows_without_guidance(edit_painter):
    dit = edit_painter.modules.dit
    with torch.inference_mode():
        cross = dit.cross_condition(conditions(dit, (4, 9)), with_null=False)
    assert cross.null_keys is None and cross.null_values is None and cross.batch_size == 2


@pytest.mark.parametrize("lengths", [(3, 11, 7), (5, 5, 5), (6,)])
@pytest.mark.parametrize("with_null", [True, False])
def test_folded_attention_equals_stock_attention_on_expanded_rows(edit_painter, lengths, with_null):
    """Our attn2 with the shared null K/V (queries folded, masks folded) == diffusers' stock processor on the
    [null rows expanded per row, conditional rows] batch with the same padding masks."""
    dit = edit_painter.modules.dit
    attn = dit.transformer.transformer_blocks[1].attn2
    conds = conditions(dit, lengths, seed=len(lengths))
    rows = len(conds) * (2 if with_null else 1)
    tokens = 5  # query tokens per row
    generator = torch.Generator().manual_seed(7)
    hidden = torch.randn(rows, tokens, attn.to_q.in_features, generator=generator)
    with torch.inference_mode():
        cross = dit.cross_condition(conds, with_null=with_null)
        padded = cross.keys[1].shape[2]
        kv = CrossKV(
            cross.keys[1],
            cross.values[1],
            cross.bias,
            cross.null_keys[1] if with_null else None,
            cross.null_values[1] if with_null else None,
            fold_bias(cross.bias, tokens) if with_null else None,
        )
        ours = CachedCrossAttnProcessor()(attn, hidden, kv)
        captions = pad_conditions(conds, dtype=torch.float32, length=padded)
        if with_null:
            null = dit.null_condition(padded)[None].expand(len(conds), -1, -1)
            captions = torch.cat([null, captions])
        bias = None
        if cross.bias is not None:
            bias = cross.bias[:, 0].repeat(2 if with_null else 1, 1, 1)  # [rows, 1, L] additive
        stock = SanaAttnProcessor2_0()(attn, hidden, dit.project_captions(captions), bias)
    assert (cross.bias is None) == (len(set(lengths)) == 1)
    assert (ours - stock).abs().max() <= 1e-5


def test_fold_bias_keeps_each_rows_mask():
    bias = torch.zeros(3, 1, 1, 4)
    bias[1, ..., 2:] = float("-inf")
    bias[2, ..., 3:] = float("-inf")
    folded = fold_bias(bias, 2)
    assert folded.shape == (1, 1, 6, 4)
    for row in range(3):
        for token in range(2):
            assert torch.equal(folded[0, 0, row * 2 + token], bias[row, 0, 0])
    assert fold_bias(None, 2) is None


def test_a_mask_beside_precomputed_keys_values_is_refused(edit_painter):
    attn = edit_painter.modules.dit.transformer.transformer_blocks[0].attn2
    dit = edit_painter.modules.dit
    with torch.inference_mode():
        cross = dit.cross_condition(conditions(dit, (2,)), with_null=False)
        hidden = torch.zeros(1, 2, attn.to_q.in_features)
        with pytest.raises(ValueError, match="masks travel in the CrossKV"):
            CachedCrossAttnProcessor()(
                attn, hidden, CrossKV(cross.keys[0], cross.values[0]), torch.zeros(1, 1, 2)
            )


# ---------------------------------------------------------------------------------------------- vae_dtype


@pytest.mark.parametrize(
    ("setting", "dtype", "device", "weights", "inputs", "autocast", "label"),
    [
        ("auto", torch.float32, "cpu", torch.float32, torch.float32, None, "float32"),
        ("same", torch.float32, "cuda", torch.float32, torch.float32, None, "float32"),
        ("same", torch.bfloat16, "cpu", torch.bfloat16, torch.bfloat16, None, "bfloat16"),
        ("same", torch.float16, "cuda", torch.float16, torch.float16, None, "float16"),
        ("auto", torch.bfloat16, "cuda", torch.bfloat16, torch.float32, torch.float32, "float32-autocast"),
        ("auto", torch.float16, "cuda", torch.float16, torch.float32, torch.float32, "float32-autocast"),
        ("auto", torch.bfloat16, "cpu", torch.float32, torch.float32, None, "float32-from-bfloat16"),
        ("auto", torch.float16, "mps", torch.float32, torch.float32, None, "float32-from-float16"),
    ],
)
def test_vae_precision_per_setting_dtype_and_device(setting, dtype, device, weights, inputs, autocast, label):
    precision = vae.vae_precision(setting, dtype, torch.device(device))
    assert (precision.weight_dtype, precision.input_dtype, precision.autocast_dtype, precision.label) == (
        weights,
        inputs,
        autocast,
        label,
    )


def test_vae_dtype_is_checked():
    with pytest.raises(ValueError, match=r"vae_dtype must be one of \('auto', 'same'\), got 'float32'"):
        vae.vae_precision("float32", torch.bfloat16, CPU)


def test_cuda_auto_runs_the_vae_under_a_float32_cuda_autocast():
    precision = vae.vae_precision("auto", torch.bfloat16, torch.device("cuda"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU-only build warns that CUDA autocast is unavailable
        context = precision.context()
    assert isinstance(context, torch.autocast)
    assert (context.device, context.fast_dtype) == ("cuda", torch.float32)
    assert not isinstance(
        vae.vae_precision("same", torch.bfloat16, torch.device("cuda")).context(), torch.autocast
    )


@pytest.fixture(scope="module")
def bf16_auto(tiny_edit_dir):
    return load_dim_painter("tiny", "edit", dtype=torch.bfloat16, device=CPU)


def test_bfloat16_on_cpu_runs_the_vae_in_float32_on_rounded_weights(bf16_auto, tiny_edit_dir):
    """The default (auto) on CPU: the VAE holds float32 copies of its bfloat16-rounded weights, everything
    else bfloat16; provenance says so; and the image is close to the float32 painter's."""
    painter = bf16_auto
    modules = painter.modules
    for name in ("encoder", "projector", "dit"):
        assert {p.dtype for p in getattr(modules, name).parameters()} == {torch.bfloat16}, name
    parameters = list(modules.vae.parameters())
    assert {p.dtype for p in parameters} == {torch.float32}
    assert all(torch.equal(p, p.to(torch.bfloat16).float()) for p in parameters)  # bf16 values, exactly
    same = load_dim_painter("tiny", "edit", dtype=torch.bfloat16, device=CPU, vae_dtype="same")
    for ours, theirs in zip(parameters, same.modules.vae.parameters(), strict=True):
        assert torch.equal(ours, theirs.float())  # the same rounding as a bf16 VAE: only the compute differs
    row = PaintRequest(key="a", prompt="make the sky purple", seed=3, source=image_bytes())
    (painting,) = painter.paint([row], PARAMS)
    (plain,) = same.paint([row], PARAMS)
    assert (painting.fields["dtype"], painting.fields["vae_dtype"]) == ("bfloat16", "float32-from-bfloat16")
    assert (plain.fields["dtype"], plain.fields["vae_dtype"]) == ("bfloat16", "bfloat16")
    float32 = load_dim_painter("tiny", "edit", dtype=torch.float32, device=CPU)
    reference = float32.render([row], PARAMS)
    assert (painter.render([row], PARAMS) - reference).abs().max() < 0.5


def test_decode_feeds_the_vae_float32_on_cpu_auto(bf16_auto):
    seen: list[torch.dtype] = []
    decoder = bf16_auto.modules.vae.decoder
    handle = decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    try:
        latents = torch.zeros(1, bf16_auto.arch.latent_channels, 2, 2, dtype=torch.bfloat16)
        out = bf16_auto.decode(latents)
    finally:
        handle.remove()
    assert seen == [torch.float32] and out.dtype == torch.float32


def test_a_vae_in_the_wrong_dtype_is_refused(bf16_auto):
    """A DimPainter given modules that were not prepared for its vae_dtype fails loudly, naming both."""
    same = load_dim_painter("tiny", "edit", dtype=torch.bfloat16, device=CPU, vae_dtype="same")
    settings = dict(
        name="x",
        task="edit",
        arch=same.arch,
        modules=same.modules,
        encoder=same.encoder,
        checkpoint_sha256=same.checkpoint_sha256,
        dtype=torch.bfloat16,
        device=CPU,
    )
    with pytest.raises(
        ValueError, match=r"vae_dtype 'auto'.*torch.float32 weights.*holds \['torch.bfloat16'\]"
    ):
        DimPainter(**settings, vae_dtype="auto")
    assert DimPainter(**settings, vae_dtype="same").vae_precision.label == "bfloat16"


# ---------------------------------------------------------------------------------------------- compile


@pytest.mark.parametrize(
    ("value", "mode"),
    [(False, None), (True, "default"), ("default", "default"), ("max-autotune", "max-autotune")],
)
def test_compile_modes(value, mode):
    assert compile_mode(value) == mode


@pytest.mark.parametrize("value", ["yes", "true", "reduce-overhead", 0, 1, None, "Default"])
def test_other_compile_values_are_refused_naming_the_choices(value):
    with pytest.raises(ValueError, match=r"false, true \(= default\), default or max-autotune"):
        compile_mode(value)


def test_the_compile_mode_reaches_torch_compile(monkeypatch, tiny_edit_dir):
    seen: list[dict] = []

    def fake_compile(function, **options):
        seen.append(options)
        return function

    monkeypatch.setattr(torch, "compile", fake_compile)
    painter = load_dim_painter("tiny", "edit", dtype=torch.float32, device=CPU, compile="max-autotune")
    assert painter.compile == "max-autotune" and painter.modules.dit.compiled
    assert seen == [{"mode": "max-autotune"}]
    with pytest.raises(ValueError, match="max-autotune"):
        load_dim_painter("tiny", "edit", dtype=torch.float32, device=CPU, compile="fast")


@pytest.mark.parametrize(
    ("device", "mode", "multiple"),
    [
        ("cpu", False, 1),
        ("cpu", "max-autotune", 1),
        ("cuda", False, 8),
        ("cuda", "default", 8),
        ("cuda", "max-autotune", 64),
    ],
)
def test_condition_padding_multiple(device, mode, multiple):
    from types import SimpleNamespace

    stub = SimpleNamespace(device=torch.device(device), compile=mode)
    assert DimPainter._pad_multiple(stub) == multiple
