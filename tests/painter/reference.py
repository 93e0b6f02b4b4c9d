"""A deliberately plain reference of DIM-4.6B sampling, written independently of the production painter.

It reads a checkpoint folder in the released layout (``model.safetensors`` with ``mllm.*``, ``projector.*``,
``decoder.vae.*``, ``decoder.model.*``) and renders one image at a time the way showlab/DIM does, so that
tests can hold the production painter (``transforms.painter.dim``) to it. Nothing here imports the
production DiT, pipeline, sampler or key map. What it does reuse, and why:

- ``transforms.painter.dim.config`` (``FULL_ARCH``, ``merge``): the released checkpoints ship weights only,
  so the architecture numbers (layer sizes, head counts, VAE config, encoder image size) are data that
  this repository keeps next to them; a folder's ``dimflow.json`` overrides them (the tiny preset writes
  one). It is read here exactly as a checkpoint folder describes itself, nothing more.
- transformers' ``Qwen2_5_VLForConditionalGeneration`` (encoder), its ``Qwen2VLImageProcessorPil`` (pixel
  patches) and the tokenizer; diffusers' ``AutoencoderDC`` (VAE). Their weights are loaded here from the
  safetensors file by stripping ``mllm.`` / ``decoder.vae.``.
- The DiT (SANA 1.5, NVlabs naming), the projector, classifier-free guidance and the flow DPM-Solver++ (2M)
  are written below in plain torch, straight from the released tensors.

Facts followed (showlab/DIM at the mirrored HEAD; file:line):

- Conversation: one user message, the source image (resized to a square, ``data/tos_dataset.py:180``)
  then the prompt as given (``:191``), rendered by the chat template without a generation prompt
  (``:228``); the condition is the last hidden state (``models/modeling_dim.py:751``, after the final norm)
  of the tokens after ``<|im_start|>``, ``user``, ``\\n`` up to the next ``<|im_end|>``
  (``data/tos_dataset.py:248-253``), projected by Linear-GELU-Linear (``mlp2x_gelu``, exact GELU). The
  prompt is not stripped (the dataset passes it through). Qwen's 3-axis rotary positions are those
  transformers 4.51 derives from the ids (``Reference.rope_positions``).
- Encoder image: RGBA composited on white, else converted to RGB (``utils/vision_process.py:87``), resized
  with PIL's default filter (bicubic) to ``smart_resize(1024, 1024)`` = 1036 px (``:74``, ``:141``); the
  folder's arch stores that value as ``encoder_image_size``.
- VAE input (``models/diffusion/data/transforms.py:38-44``): ``convert('RGB')``, resize the short side to
  the resolution (bilinear, torchvision's default for PIL), center crop, ``(x - 0.5) / 0.5``; latents are
  ``encode(x)[0] * scaling_factor`` (``models/modeling_dim.py:374``), decoded as ``decode(z / sf)``
  (``:403``).
- Condition length (``models/modeling_dim.py:244-268``): zero-padded to ``max_condition_length`` (8192)
  with a mask of ones on the N real tokens, or only the last 8192 kept. The null condition is the whole
  learned ``y_embedding`` (``:272``, ``:464``) under the *same* mask, i.e. its first N rows.
- DiT forward (``models/diffusion/model/nets/sana_multi_scale.py:541-645``, ``SanaMSChannelCond``):
  edit concatenates ``[noisy latent, source latent]`` on channels (``:559-561``; t2i runs ``SanaMS``
  without it, ``scripts/demo_t2i.sh``: ``--with_latents_condition False``); the timestep is
  truncated, ``timestep.long()`` (``:554``); ``y_proj`` and the y RMSNorm run on all 8192 tokens and the
  masked tokens are dropped before cross-attention (``:603-612``, xformers path).
- Block (``sana_multi_scale.py:134-147``, ``sana_blocks.py``): adaLN-single with a per-block 6-row
  scale-shift table; LiteLA linear self-attention with ReLU kernels, RMSNorm qk-norm over the whole hidden
  dim (eps 1e-5, ``sana_blocks.py:168,181``), a row of ones padded onto V and ``out[:-1] / (out[-1] +
  1e-8)`` (``:156,203``; eps 1e-8 from ``sana_multi_scale.py:89``); cross-attention with RMSNorm qk-norm
  (eps 1e-6, ``sana_blocks.py:63-64``) and softmax; GLUMBConv (1x1 conv + SiLU, depthwise 3x3, GLU with
  SiLU gate, 1x1 conv without bias; ``basic_modules.py:81-150``); final layer modulated by the *timestep
  embedding* (not the 6-way one) through a 2-row table (``sana_blocks.py:508``).
- Sampler (``models/diffusion/model/dpm_solver.py``): alpha_t = 1 - t, sigma_t = t (``:226-236``); times
  ``time_uniform_flow`` from t_T = 1 to t_0 = 1/1000 with the shift (``:1008-1012``); the model sees
  ``t * 1000`` (``:377``); velocity -> noise ``(1 - t) * v + x`` (``:401``; ``:689`` in the edit
  wrapper); CFG mixes noises ``u + g * (c - u)`` unless g == 1 or t is outside (0, 1) (``:431-444``,
  ``:719-733``); DPM-Solver++ data prediction
  ``x0 = (x - sigma * noise) / alpha`` (``:968``), computed here in the equivalent closed form
  ``x - t * v_guided`` (see ``Reference.render``); multistep order 2 with a first-order first step and,
  with ``lower_order_final``, a first-order last step (``:1809-1863``); the last time is 0, so the last
  step returns the data prediction. DIM fixes 30 steps and g = 7.5 (``models/modeling_dim.py:499,512``);
  here both are arguments.
- Batch size 1 everywhere (DIM asserts it); the two CFG branches are run as two batch-1 forwards, which
  equals DIM's [uncond, cond] batch with its block-diagonal mask.

The one deliberate shared convention with production is the initial noise (see ``initial_noise``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from transforms.painter.dim.config import FULL_ARCH, merge

MODEL_FILE = "model.safetensors"
ARCH_FILE = "dimflow.json"

# Constants of the reference (see the module docstring for where each comes from).
SELF_ATTN_QK_NORM_EPS = 1e-5
SELF_ATTN_DIVISION_EPS = 1e-8
CROSS_ATTN_QK_NORM_EPS = 1e-6
Y_NORM_EPS = 1e-5
LAYER_NORM_EPS = 1e-6
TIMESTEP_FREQUENCIES = 256
SOLVER_T_END = 1.0 / 1000  # t_0 of the flow noise schedule (total_N = 1000)


# ------------------------------------------------------------------------------------------------ loading


def read_arch(folder: Path, task: str) -> dict[str, Any]:
    """The folder's architecture: the full-size numbers, overridden by ``dimflow.json`` when present."""
    meta_file = folder / ARCH_FILE
    override: dict[str, Any] = {}
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("task") not in (None, task):
            raise ValueError(f"{folder} holds a {meta['task']!r} checkpoint, not {task!r}")
        override = meta.get("arch") or {}
    return merge(FULL_ARCH, override)


def _read_tensors(model_file: Path, prefix: str, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    with safe_open(str(model_file), framework="pt") as handle:
        return {
            key[len(prefix) :]: handle.get_tensor(key).to(device=device, dtype=dtype)
            for key in handle.keys()
            if key.startswith(prefix)
        }


def _load_encoder(model_file: Path, arch: dict[str, Any], dtype: torch.dtype, device: str):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    enc = arch["encoder"]
    config = Qwen2_5_VLConfig(
        text_config=dict(enc["text_config"]),
        vision_config=dict(enc["vision_config"]),
        image_token_id=enc["image_token_id"],
        video_token_id=enc["video_token_id"],
        vision_start_token_id=enc["vision_start_token_id"],
        vision_end_token_id=enc["vision_end_token_id"],
        tie_word_embeddings=enc["tie_word_embeddings"],
    )
    # The released names are transformers 4.x's (visual.*, model.*, lm_head.*); transformers maps them.
    state = _read_tensors(model_file, "mllm.", dtype, "cpu")
    hf_logging.disable_progress_bar()
    try:
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
        )
    finally:
        hf_logging.enable_progress_bar()
    problems = {name: keys for name, keys in info.items() if keys}
    if problems:
        raise ValueError(f"encoder weights did not load cleanly: {problems}")
    return model.to(device).eval().requires_grad_(False)


def _load_vae(model_file: Path, arch: dict[str, Any], dtype: torch.dtype, device: str):
    from diffusers import AutoencoderDC

    vae = AutoencoderDC(**arch["vae"])
    vae.load_state_dict(_read_tensors(model_file, "decoder.vae.", dtype, "cpu"), strict=True)
    return torch.nn.Module.to(vae, device=device, dtype=dtype).eval().requires_grad_(False)


def _processor_folder(folder: Path, name: str) -> str:
    """A folder inside the checkpoint, else an HF repo id (its tokenizer / processor / template files)."""
    local = folder / name
    if local.is_dir():
        return str(local)
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=name, allow_patterns=["*.json", "*.jinja", "*.txt"])


def load_reference(folder: Path, task: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Everything a render needs, read from a checkpoint folder in the released layout."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if task not in ("edit", "t2i"):
        raise ValueError(f"task must be 'edit' or 't2i', got {task!r}")
    folder = Path(folder)
    model_file = folder / MODEL_FILE
    arch = read_arch(folder, task)
    processor = _processor_folder(folder, str(arch["processor"]))
    tokenizer = AutoTokenizer.from_pretrained(processor)
    template = _chat_template(processor) or tokenizer.chat_template
    dit = _read_tensors(model_file, "decoder.model.", dtype, device)
    dit.pop("pos_embed", None)  # a zero buffer: the reference runs without positional embedding
    if dit["y_embedder.y_embedding"].shape[0] != int(arch["max_condition_length"]):
        raise ValueError("y_embedding must have max_condition_length rows (the reference's null condition)")
    channels_in = dit["x_embedder.proj.weight"].shape[1]
    latent = int(arch["vae"]["latent_channels"])
    if channels_in != latent * (2 if task == "edit" else 1):
        raise ValueError(f"{model_file}: the DiT takes {channels_in} input channels, not a {task} checkpoint")
    return Reference(
        task=task,
        arch=arch,
        device=device,
        dtype=dtype,
        encoder=_load_encoder(model_file, arch, dtype, device),
        tokenizer=tokenizer,
        chat_template=template,
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(processor),
        projector=_read_tensors(model_file, "projector.", dtype, device),
        dit=dit,
        vae=_load_vae(model_file, arch, dtype, device),
    )


def _chat_template(processor: str) -> str | None:
    folder = Path(processor)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    return None


# ------------------------------------------------------------------------------------------------ images


def encoder_image(image: Image.Image, size: int) -> Image.Image:
    """What Qwen sees: RGBA over white (else plain RGB), resized to a size x size square (bicubic)."""
    if image.mode == "RGBA":
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
    else:
        flat = image.convert("RGB")
    return flat.resize((size, size), Image.Resampling.BICUBIC)


def vae_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """What the VAE encodes: short side to ``resolution`` (bilinear), center crop, [-1, 1]; [1, 3, R, R]."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    short, long = min(width, height), max(width, height)
    new_long = int(resolution * long / short)
    new_size = (resolution, new_long) if width <= height else (new_long, resolution)
    rgb = rgb.resize(new_size, Image.Resampling.BILINEAR)
    top = int(round((new_size[1] - resolution) / 2.0))
    left = int(round((new_size[0] - resolution) / 2.0))
    rgb = rgb.crop((left, top, left + resolution, top + resolution))
    unit = torch.from_numpy(np.array(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ((unit - 0.5) / 0.5)[None]


def initial_noise(seed: int, channels: int, side: int) -> torch.Tensor:
    """The one deliberate shared convention with production (``sampler.initial_noise``, noise_device "cpu"):
    each row draws float32 N(0, 1) noise of shape [1, C, h, w] from its own CPU ``torch.Generator`` seeded
    with the row's seed. (DIM itself draws once from a CUDA generator seeded 233, batch size 1.)"""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((1, channels, side, side), generator=generator, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ DiT


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in float32, weight applied, cast back."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * normed).to(x.dtype)


def linear(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


def timestep_frequencies(t: torch.Tensor, dim: int = TIMESTEP_FREQUENCIES) -> torch.Tensor:
    """[cos, sin] of t * 10000^(-i / half), i = 0 .. half - 1."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def linear_self_attention(x: torch.Tensor, w: dict[str, torch.Tensor], p: str, heads: int) -> torch.Tensor:
    """LiteLA: ReLU-kernel linear attention, qk RMSNorm over all heads, V padded with a row of ones."""
    batch, tokens, hidden = x.shape
    q, k, v = F.linear(x, w[f"{p}.qkv.weight"], w.get(f"{p}.qkv.bias")).chunk(3, dim=-1)
    q = rms_norm(q, w[f"{p}.q_norm.weight"], SELF_ATTN_QK_NORM_EPS)
    k = rms_norm(k, w[f"{p}.k_norm.weight"], SELF_ATTN_QK_NORM_EPS)
    head_dim = hidden // heads
    # [B, N, C] -> [B, heads, head_dim, N]
    q, k, v = (t.transpose(1, 2).reshape(batch, heads, head_dim, tokens) for t in (q, k, v))
    q, k = torch.relu(q), torch.relu(k)
    ones = torch.ones((batch, heads, 1, tokens), dtype=v.dtype, device=v.device)
    v_padded = torch.cat([v, ones], dim=2)  # [B, h, d + 1, N]
    vk = v_padded @ k.transpose(-1, -2)  # [B, h, d + 1, d]
    out = (vk @ q).float()  # [B, h, d + 1, N]; the division in float32 (DIM casts half types up here)
    out = out[:, :, :-1] / (out[:, :, -1:] + SELF_ATTN_DIVISION_EPS)
    out = out.to(x.dtype).reshape(batch, hidden, tokens).transpose(1, 2)
    return linear(out, w, f"{p}.proj")


def cross_attention(x: torch.Tensor, y: torch.Tensor, w: dict[str, torch.Tensor], p: str, heads: int):
    """Softmax attention from the image tokens x [1, N, C] to the kept condition tokens y [1, L, C]."""
    batch, tokens, hidden = x.shape
    head_dim = hidden // heads
    q = rms_norm(linear(x, w, f"{p}.q_linear"), w[f"{p}.q_norm.weight"], CROSS_ATTN_QK_NORM_EPS)
    k, v = linear(y, w, f"{p}.kv_linear").chunk(2, dim=-1)  # kv_linear stacks [k; v] on its outputs
    k = rms_norm(k, w[f"{p}.k_norm.weight"], CROSS_ATTN_QK_NORM_EPS)
    q = q.reshape(batch, tokens, heads, head_dim).transpose(1, 2).float()
    k = k.reshape(batch, -1, heads, head_dim).transpose(1, 2).float()
    v = v.reshape(batch, -1, heads, head_dim).transpose(1, 2).float()
    weights = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(head_dim), dim=-1)
    out = (weights @ v).to(x.dtype).transpose(1, 2).reshape(batch, tokens, hidden)
    return linear(out, w, f"{p}.proj")


def glu_mbconv(x: torch.Tensor, w: dict[str, torch.Tensor], p: str, rows: int, cols: int) -> torch.Tensor:
    """1x1 conv + SiLU -> depthwise 3x3 -> split, x * SiLU(gate) -> 1x1 conv (no bias)."""
    batch, tokens, hidden = x.shape
    grid = x.transpose(1, 2).reshape(batch, hidden, rows, cols)
    grid = F.silu(F.conv2d(grid, w[f"{p}.inverted_conv.conv.weight"], w[f"{p}.inverted_conv.conv.bias"]))
    depth_w = w[f"{p}.depth_conv.conv.weight"]
    grid = F.conv2d(
        grid, depth_w, w[f"{p}.depth_conv.conv.bias"], padding=depth_w.shape[-1] // 2, groups=depth_w.shape[0]
    )
    value, gate = grid.chunk(2, dim=1)
    grid = F.conv2d(
        value * F.silu(gate), w[f"{p}.point_conv.conv.weight"], w.get(f"{p}.point_conv.conv.bias")
    )
    return grid.reshape(batch, hidden, tokens).transpose(1, 2)


def dit_forward(
    w: dict[str, torch.Tensor],
    arch: dict[str, Any],
    x: torch.Tensor,
    timestep: torch.Tensor,
    caption: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """One SANA forward, batch 1. x [1, C_in, h, w]; timestep [1] (already truncated to an integer);
    caption [1, L_max, caption_channels] (zero padded); mask [1, L_max] (1 on kept tokens) -> [1, C_out, h, w]."""
    if x.shape[0] != 1:
        raise ValueError("the reference runs batch size 1")
    dtype = w["x_embedder.proj.weight"].dtype
    self_heads = int(arch["dit"]["num_attention_heads"])
    cross_heads = int(arch["dit"]["num_cross_attention_heads"])
    patch = w["x_embedder.proj.weight"].shape[-1]
    rows, cols = x.shape[-2] // patch, x.shape[-1] // patch

    # patch embedding: a conv with kernel = stride = patch, then tokens in row-major order
    h = F.conv2d(x.to(dtype), w["x_embedder.proj.weight"], w["x_embedder.proj.bias"], stride=patch)
    h = h.flatten(2).transpose(1, 2)  # [1, N, C]
    hidden = h.shape[-1]

    # timestep embedding and adaLN-single
    t_emb = timestep_frequencies(timestep).to(dtype)
    t_emb = linear(F.silu(linear(t_emb, w, "t_embedder.mlp.0")), w, "t_embedder.mlp.2")  # [1, C]
    t6 = linear(F.silu(t_emb), w, "t_block.1")  # [1, 6C]

    # caption: projection MLP (tanh GELU) and RMSNorm on every one of the L_max tokens, then keep the masked-in
    y = linear(caption.to(dtype), w, "y_embedder.y_proj.fc1")
    y = linear(F.gelu(y, approximate="tanh"), w, "y_embedder.y_proj.fc2")
    y = rms_norm(y, w["attention_y_norm.weight"], Y_NORM_EPS)
    y = y[:, mask[0] != 0]  # [1, L_kept, C]

    blocks = sorted({int(k.split(".")[1]) for k in w if k.startswith("blocks.")})
    for index in blocks:
        p = f"blocks.{index}"
        table = w[f"{p}.scale_shift_table"][None] + t6.reshape(1, 6, hidden)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = table.chunk(6, dim=1)
        normed = F.layer_norm(h, (hidden,), eps=LAYER_NORM_EPS)
        h = h + gate_msa * linear_self_attention(
            modulate(normed, shift_msa, scale_msa), w, f"{p}.attn", self_heads
        )
        h = h + cross_attention(h, y, w, f"{p}.cross_attn", cross_heads)
        normed = F.layer_norm(h, (hidden,), eps=LAYER_NORM_EPS)
        h = h + gate_mlp * glu_mbconv(modulate(normed, shift_mlp, scale_mlp), w, f"{p}.mlp", rows, cols)

    # final layer: modulated by the timestep embedding through its own 2-row table
    shift, scale = (w["final_layer.scale_shift_table"][None] + t_emb[:, None]).chunk(2, dim=1)
    h = modulate(F.layer_norm(h, (hidden,), eps=LAYER_NORM_EPS), shift, scale)
    h = linear(h, w, "final_layer.linear")  # [1, N, p * p * C_out]

    # unpatchify: (rows, cols, p, q, c) -> (c, rows * p, cols * q)
    channels = h.shape[-1] // (patch * patch)
    h = h.reshape(1, rows, cols, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return h.reshape(1, channels, rows * patch, cols * patch)


# ------------------------------------------------------------------------------------------------ sampler


def flow_times(steps: int, shift: float) -> torch.Tensor:
    """steps + 1 times from ~1 down to exactly 0 (float32): shifted 1 - linspace(1, 1/1000), reversed."""
    s = 1.0 - torch.linspace(1.0, SOLVER_T_END, steps + 1)
    return (shift * s / (1 + (shift - 1) * s)).flip(dims=[0])


def half_log_snr(t: torch.Tensor) -> torch.Tensor:
    """lambda(t) = log(alpha_t / sigma_t) with alpha_t = 1 - t, sigma_t = t (+inf at t = 0)."""
    return torch.log(1 - t) - torch.log(t)


def dpm_solver_pp_2m(data_prediction, x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Multistep DPM-Solver++ of order 2 on the flow schedule; first and last steps of order 1."""
    steps = times.shape[0] - 1
    if steps < 2:
        raise ValueError("the reference's multistep order-2 solver needs at least 2 steps")
    history: list[tuple[torch.Tensor, torch.Tensor]] = [(times[0], data_prediction(x, times[0]))]
    for step in range(1, steps + 1):
        t = times[step]
        s0, m0 = history[-1]
        sigma_ratio = t / s0
        alpha_t = 1 - t
        h = half_log_snr(t) - half_log_snr(s0)
        phi = torch.expm1(-h)  # -1 at t = 0: the last step lands on the data prediction
        if step == 1 or step == steps:
            x = sigma_ratio * x - alpha_t * phi * m0
        else:
            s1, m1 = history[-2]
            r0 = (half_log_snr(s0) - half_log_snr(s1)) / h
            d1 = (m0 - m1) / r0
            x = sigma_ratio * x - alpha_t * phi * m0 - 0.5 * alpha_t * phi * d1
        if step < steps:
            history = [history[-1], (t, data_prediction(x, t))]
    return x


# ------------------------------------------------------------------------------------------------ reference


@dataclass
class Reference:
    task: str
    arch: dict[str, Any]
    device: str
    dtype: torch.dtype
    encoder: Any
    tokenizer: Any
    chat_template: str | None
    image_processor: Any
    projector: dict[str, torch.Tensor]
    dit: dict[str, torch.Tensor]
    vae: Any
    timings: dict[str, float] = field(default_factory=lambda: {"encoder": 0.0, "dit": 0.0, "vae": 0.0})

    # -------------------------------------------------------------------------------------- timing

    def _sync(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)

    def _clock(self, stage: str, started: float) -> None:
        self._sync()
        self.timings[stage] += time.perf_counter() - started

    # -------------------------------------------------------------------------------------- encoder

    def encoder_inputs(self, prompt: str, source: Image.Image | None) -> dict[str, torch.Tensor]:
        """Token ids (image pads expanded) and pixel patches for the one-turn conversation."""
        content: list[dict[str, Any]] = []
        if source is not None:
            content.append({"type": "image"})
        content.append({"type": "text", "text": prompt})
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=False,
        )
        inputs: dict[str, torch.Tensor] = {}
        if source is not None:
            size = int(self.arch["encoder_image_size"])
            vision = self.image_processor(images=[encoder_image(source, size)], return_tensors="pt")
            grid = vision["image_grid_thw"]
            merge_size = int(self.arch["encoder"]["vision_config"].get("spatial_merge_size", 2))
            image_tokens = int(grid[0].prod()) // (merge_size * merge_size)
            pad = "<|image_pad|>"
            if text.count(pad) != 1:
                raise ValueError(f"expected one {pad} in the rendered conversation")
            text = text.replace(pad, pad * image_tokens)
            inputs["pixel_values"] = vision["pixel_values"].to(self.device, self.dtype)
            inputs["image_grid_thw"] = grid.to(self.device)
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        inputs["input_ids"] = ids.to(self.device)
        inputs["attention_mask"] = torch.ones_like(ids).to(self.device)
        inputs["position_ids"] = self.rope_positions(ids[0].tolist(), inputs.get("image_grid_thw")).to(
            self.device
        )
        return inputs

    def rope_positions(self, ids: list[int], grid_thw: torch.Tensor | None) -> torch.Tensor:
        """Qwen2.5-VL's 3-axis (temporal, height, width) rotary positions, [3, 1, L], as transformers 4.51
        (DIM's version) derives them from the ids: text tokens count up on all three axes; an image's
        merged patches sit at (start, start + row, start + col); the text after it resumes at the largest
        position used + 1. Passed explicitly, so the result does not depend on how a transformers version
        infers them (5.x falls back to 1-D positions unless it is also given ``mm_token_type_ids``)."""
        image_token = int(self.arch["encoder"]["image_token_id"])
        merge = int(self.arch["encoder"]["vision_config"].get("spatial_merge_size", 2))
        rows: list[tuple[int, int, int]] = []
        next_position = 0
        index = 0
        while index < len(ids):
            if ids[index] != image_token:
                rows.append((next_position,) * 3)
                next_position += 1
                index += 1
                continue
            if grid_thw is None:
                raise ValueError("image tokens without an image grid")
            frames, height, width = (int(v) for v in grid_thw[0])
            if frames != 1:
                raise ValueError("a still image has one temporal patch")
            h, w = height // merge, width // merge
            rows.extend(
                (next_position, next_position + r, next_position + c) for r in range(h) for c in range(w)
            )
            next_position += max(h, w)
            index += h * w
        return torch.tensor(rows, dtype=torch.long).T[:, None, :]

    def user_span(self, ids: list[int]) -> tuple[int, int]:
        """[begin, end): after <|im_start|>, 'user', '\\n' up to the next <|im_end|> (one user turn)."""
        tok = self.tokenizer
        im_start = tok.convert_tokens_to_ids("<|im_start|>")
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        user = tok("user")["input_ids"][0]
        newline = tok("\n")["input_ids"][0]
        begins = [i for i in range(3, len(ids)) if ids[i - 3 : i] == [im_start, user, newline]]
        if len(begins) != 1:
            raise ValueError(f"expected one user turn, found {len(begins)}")
        end = ids.index(im_end, begins[0])
        return begins[0], end

    @torch.inference_mode()
    def encode(self, prompt: str, source: Image.Image | None) -> torch.Tensor:
        """The projected condition [N, caption_channels] of the user turn (not yet padded or truncated)."""
        inputs = self.encoder_inputs(prompt, source)
        out = self.encoder(**inputs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        hidden = out.hidden_states[-1][0]  # after the final norm
        p = self.projector
        projected = F.linear(hidden, p["0.weight"], p["0.bias"])
        projected = F.linear(F.gelu(projected), p["2.weight"], p["2.bias"])
        begin, end = self.user_span(inputs["input_ids"][0].tolist())
        return projected[begin:end]

    def pad_or_truncate(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, C] -> caption [1, L_max, C] (zero padded, or the last L_max tokens) and mask [1, L_max]."""
        limit = int(self.arch["max_condition_length"])
        tokens, channels = condition.shape
        if tokens < limit:
            caption = torch.cat([condition, condition.new_zeros((limit - tokens, channels))])
            mask = torch.cat([torch.ones(tokens), torch.zeros(limit - tokens)])
        else:
            caption = condition[-limit:]
            mask = torch.ones(limit)
        return caption[None], mask[None].to(torch.long).to(condition.device)

    # -------------------------------------------------------------------------------------- render

    @torch.inference_mode()
    def render(
        self,
        prompt: str,
        source: Image.Image | None,
        seed: int,
        *,
        steps: int,
        guidance_scale: float,
        resolution: int,
    ) -> torch.Tensor:
        """One image, decoded: [1, 3, R, R] float32 (about [-1, 1], not clamped)."""
        if (source is None) != (self.task == "t2i"):
            raise ValueError(
                f"task {self.task!r}: the source must be {'None' if self.task == 't2i' else 'given'}"
            )
        vae_cfg = self.arch["vae"]
        scaling = float(vae_cfg["scaling_factor"])
        grid = 2 ** (len(vae_cfg["encoder_block_out_channels"]) - 1)
        if resolution % grid:
            raise ValueError(f"resolution {resolution} is not a multiple of {grid}")

        started = time.perf_counter()
        condition = self.encode(prompt, source)
        caption, mask = self.pad_or_truncate(condition)
        null_caption = self.dit["y_embedder.y_embedding"][None]  # all L_max rows, same mask
        self._clock("encoder", started)

        started = time.perf_counter()
        source_latent = None
        if source is not None:
            pixels = vae_pixels(source, resolution).to(self.device, self.dtype)
            source_latent = self.vae.encode(pixels).latent * scaling
        self._clock("vae", started)

        started = time.perf_counter()
        sampler = self.arch["sampler"]
        train_steps = int(sampler["num_train_timesteps"])
        noise = initial_noise(seed, int(vae_cfg["latent_channels"]), resolution // grid).to(self.device)

        def velocity(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x_in = x.to(self.dtype)
            if source_latent is not None:  # noisy latent first, then the source latent
                x_in = torch.cat([x_in, source_latent.to(self.dtype)], dim=1)
            model_t = (t * train_steps).reshape(1).long().to(torch.float32)
            return dit_forward(self.dit, self.arch, x_in, model_t, y, mask).float()

        def data_prediction(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # The reference turns each branch's velocity v into a noise prediction (1 - t) * v + x, mixes
            # the noises u + g * (c - u), and takes x0 = (x - t * noise) / (1 - t). The noise is affine in v
            # with the same x and the same coefficient in both branches, so this is exactly
            # x0 = x - t * (v_u + g * (v_c - v_u)), which is what is computed here: the literal float32
            # chain divides by 1 - t = 3.3e-4 at the first step and loses ~3 digits to cancellation
            # (up to ~5e-4 on the tiny preset's images), which is rounding, not semantics.
            t = t.to(x.device)
            v = velocity(x, t, caption)
            if guidance_scale != 1.0 and 0.0 < float(t) < 1.0:  # else the reference runs cond only
                v_uncond = velocity(x, t, null_caption)
                v = v_uncond + guidance_scale * (v - v_uncond)
            return x - t * v

        times = flow_times(steps, float(sampler["flow_shift"]))
        latents = dpm_solver_pp_2m(data_prediction, noise, times.to(self.device))
        self._clock("dit", started)

        started = time.perf_counter()
        image = self.vae.decode(latents.to(self.dtype) / scaling, return_dict=False)[0].float()
        self._clock("vae", started)
        return image
