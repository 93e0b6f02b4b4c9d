"""DC-AE (diffusers AutoencoderDC): source preprocessing, encode, decode, and pixels out.

Preprocessing follows the reference's ``default_train`` transform: RGB, resize the short side to the
target resolution (bilinear, torchvision's default for PIL images, long side truncated), center crop
(torchvision rounds the offset with Python's round), to [0, 1], then (x - 0.5) / 0.5. For a non-square
target (``aspect: preserve``) the same steps cover the target instead: the side that is short relative to
the target's aspect is resized to the target's, then the center crop; for a square target that is exactly
the reference's transform. Latents are ``encode(x).latent * scaling_factor``; decoding divides by it.
Output quantisation matches ``torchvision.utils.save_image(normalize=True, value_range=(-1, 1))``: clamp,
(x + 1) / 2, x*255 + 0.5, truncate. torchvision itself is not needed.

Precision (``painter.vae_dtype``). What DIM does (showlab/DIM): ``DIMDecoder.generate`` encodes the source
with ``raw_images.to(self.vae_dtype)`` inside ``torch.autocast(device_type="cuda", dtype=self.vae_dtype)``
and ``DIMDecoder.latents2image`` decodes the same way (``models/modeling_dim.py``); ``self.vae_dtype`` is
``sana.vae_dtype`` (``models/sana_pipeline.py``: ``get_weight_dtype(config.vae.weight_dtype)``), and
``AEConfig.weight_dtype`` defaults to ``"float32"`` (``models/diffusion/utils/config.py``), which the released
configs (``models/sana1-5_config/1024ms/Sana_1600M_1024px_allqknorm_bf16_lr2e5*.yaml``) do not override.
``infer/demo_edit.py`` then casts the whole model, VAE included, with ``model.bfloat16()``. So DIM's VAE
holds bfloat16 weights and gets float32 inputs under a float32 CUDA autocast: the ops autocast casts
(convolutions, linear layers, matrix products) compute in float32 on the bfloat16 weights' values, while
the others keep their own dtypes; in particular diffusers' ``RMSNorm`` (the DC-AE's norm; diffusers 0.42)
casts its normalised output to its bfloat16 weight's dtype and scales and shifts it in bfloat16, so those
outputs are rounded to bfloat16.

``vae_precision`` maps the setting to what this process does:

- ``same``, or a float32 painter: the VAE runs plainly in the painter's dtype (what dimflow did before the
  setting existed).
- ``auto`` with a half painter dtype on CUDA: DIM's regime (half weights, float32 inputs, float32
  autocast).
- ``auto`` with a half painter dtype elsewhere (CPU, MPS): torch's autocast takes only half types there, so
  the VAE runs in float32 on a float32 copy of its half-rounded weights (loaded in the painter's dtype, then
  upcast): the same values DIM's convolutions and matrix products see, computed in float32 as DIM computes
  them; the RMSNorm outputs, which DIM rounds to bfloat16 and scales in bfloat16, stay float32 here: the
  one difference. Provenance names the regime (``vae_dtype``: ``float32-autocast`` vs
  ``float32-from-bfloat16``).

Large outputs decode in tiles with diffusers' own ``AutoencoderDC.tiled_decode`` (overlapping tiles,
linearly blended), one row at a time, so the decoder's peak memory is that of one tile whatever the output
size. Tiling is approximate (the decoder's attention sees one tile, and the seams are blended), so it is
used only above a pixel threshold; below it the decode is the plain one, bit for bit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderDC
from PIL import Image

from transforms.painter.base import VAE_DTYPES

# Tile geometry for tiled decoding, in output pixels: 1024 px tiles (one tile costs what one row of DIM's
# native 1024^2 output costs untiled), 896 px apart, so neighbours overlap and blend over 128 px (the same
# 1/8 overlap as diffusers' 512/448 default, with fewer seams).
TILE = 1024
TILE_STRIDE = 896


def build_vae(kwargs: dict[str, Any]) -> AutoencoderDC:
    return AutoencoderDC(**kwargs)


@dataclass(frozen=True)
class VaePrecision:
    """How the VAE runs: weights held in ``weight_dtype``, inputs cast to ``input_dtype``, inside
    ``torch.autocast(device_type, dtype=autocast_dtype)`` unless that is None. ``label`` is the provenance
    ``vae_dtype`` value."""

    weight_dtype: torch.dtype
    input_dtype: torch.dtype
    label: str
    autocast_dtype: torch.dtype | None = None
    device_type: str = "cpu"

    def context(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def vae_precision(vae_dtype: str, dtype: torch.dtype, device: torch.device) -> VaePrecision:
    """``painter.vae_dtype`` for a painter in ``dtype`` on ``device`` (see the module docstring)."""
    if vae_dtype not in VAE_DTYPES:
        raise ValueError(f"vae_dtype must be one of {VAE_DTYPES}, got {vae_dtype!r}")
    if vae_dtype == "same" or dtype == torch.float32:
        return VaePrecision(weight_dtype=dtype, input_dtype=dtype, label=_name(dtype))
    if device.type == "cuda":  # as DIM: half weights, float32 inputs under a float32 autocast
        return VaePrecision(
            weight_dtype=dtype,
            input_dtype=torch.float32,
            label="float32-autocast",
            autocast_dtype=torch.float32,
            device_type="cuda",
        )
    # CPU/MPS autocast refuses float32 (torch warns and disables it): float32 on the half-rounded weights.
    return VaePrecision(
        weight_dtype=torch.float32, input_dtype=torch.float32, label=f"float32-from-{_name(dtype)}"
    )


def source_pixels(image: Image.Image, size: int | tuple[int, int]) -> torch.Tensor:
    """PIL image -> float32 [3, H, W] in [-1, 1]; ``size`` is R (square R x R) or (width W, height H)."""
    return array_pixels(source_array(image, size))


def source_array(image: Image.Image, size: int | tuple[int, int]) -> np.ndarray:
    """The PIL half of ``source_pixels`` (RGB, resize, center crop): uint8 [H, W, 3]. No torch, so it can run
    on a helper thread without starting a second pool of torch worker threads."""
    target_w, target_h = (size, size) if isinstance(size, int) else size
    image = image.convert("RGB")
    width, height = image.size
    if width * target_h <= target_w * height:  # relatively taller than the target: fit the width
        resized = (target_w, int(target_w * height / width))
    else:
        resized = (int(target_h * width / height), target_h)
    image = image.resize(resized, Image.Resampling.BILINEAR)
    left = int(round((resized[0] - target_w) / 2.0))
    top = int(round((resized[1] - target_h) / 2.0))
    image = image.crop((left, top, left + target_w, top + target_h))
    return np.asarray(image, dtype=np.uint8)


def array_pixels(array: np.ndarray) -> torch.Tensor:
    """The torch half of ``source_pixels``: uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1]."""
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div(255.0)
    return (tensor - 0.5) / 0.5


def encode(vae: AutoencoderDC, pixels: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> scaled latents [B, C, H/f, W/f]."""
    return vae.encode(pixels).latent * scaling_factor


def set_tile_geometry(vae: AutoencoderDC, tile: int = TILE, stride: int = TILE_STRIDE) -> None:
    """Set the tile size and stride (output pixels) that ``tiled_decode`` uses, leaving diffusers' automatic
    tiling off: ``decode`` decides per call, so one module serves tiled and untiled calls from any thread."""
    grid = vae.spatial_compression_ratio
    if tile < grid or tile % grid or stride < grid or stride % grid or stride > tile:
        raise ValueError(
            f"VAE tiles must be multiples of the latent grid ({grid} px) with 0 < stride <= tile, "
            f"got tile {tile}, stride {stride}"
        )
    vae.enable_tiling(
        tile_sample_min_height=tile,
        tile_sample_min_width=tile,
        tile_sample_stride_height=stride,
        tile_sample_stride_width=stride,
    )
    vae.disable_tiling()


def decoded_pixels(vae: AutoencoderDC, latents: torch.Tensor) -> int:
    """Pixels per image that decoding ``latents`` [B, C, h, w] gives."""
    grid = vae.spatial_compression_ratio
    return latents.shape[-2] * latents.shape[-1] * grid * grid


def decode(
    vae: AutoencoderDC, latents: torch.Tensor, scaling_factor: float, tile_pixels: int | None = None
) -> torch.Tensor:
    """Scaled latents -> images in (about) [-1, 1]. Above ``tile_pixels`` pixels per image (None: never),
    each row decodes tile by tile (``set_tile_geometry`` sets the tiles)."""
    z = latents / scaling_factor
    if tile_pixels is None or decoded_pixels(vae, z) <= tile_pixels:
        return vae.decode(z, return_dict=False)[0]
    return torch.cat([vae.tiled_decode(row, return_dict=False)[0] for row in z.split(1)])


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] float32, clamped (the value quantised into pixels)."""
    return images.float().clamp(-1.0, 1.0).add(1.0).div(2.0)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    unit = to_unit(images)
    pixels = unit.mul(255.0).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(array) for array in pixels]
