"""DC-AE (diffusers AutoencoderDC): source preprocessing, encode, decode, and pixels out.

Preprocessing follows the reference's ``default_train`` transform: RGB, resize the short side to the
target resolution (bilinear, torchvision's default for PIL images, long side truncated), center crop
(torchvision rounds the offset with Python's round), to [0, 1], then (x - 0.5) / 0.5. For a non-square
target (``aspect: preserve``) the same steps cover the target instead: the side that is short relative to
the target's aspect is resized to the target's, then the center crop; for a square target that is exactly
the reference's transform. Latents are ``encode(x).latent * scaling_factor``; decoding divides by it.
Output quantisation matches ``torchvision.utils.save_image(normalize=True, value_range=(-1, 1))``: clamp,
(x + 1) / 2, x*255 + 0.5, truncate. torchvision itself is not needed.

Precision (``painter.vae_dtype``): DIM encodes and decodes with the VAE's inputs in float32 under
``torch.autocast(device_type="cuda", dtype=float32)`` while its weights are in the model dtype
(showlab/DIM ``models/modeling_dim.py``: ``DIMDecoder.latents2image`` does ``latents.to(self.vae_dtype)``
then ``with torch.autocast(device_type="cuda", dtype=self.vae_dtype): self.vae_decode(latents)``, and
``DIMDecoder.generate`` encodes the source the same way, ``raw_images.to(self.vae_dtype)`` under that
autocast; ``vae_dtype`` is ``sana.vae_dtype`` (``models/sana_pipeline.py``), i.e.
``AEConfig.weight_dtype`` = "float32" in ``models/diffusion/utils/config.py``, which the released
``Sana_1600M_1024px_*.yaml`` configs do not override; ``infer/demo_edit.py`` then casts the whole model,
VAE included, with ``model.bfloat16()``). So with bf16 weights the convolutions and matrix products run
in float32 on the bf16 weights' values, while ops outside autocast's list keep their dtypes (diffusers'
RMSNorm casts back to its bf16 weight's dtype). ``vae_precision`` gives that regime for ``auto`` when the
painter runs in bfloat16/float16 (CUDA only: torch's autocast takes float32 on CUDA alone), and plain
model-dtype VAE calls for ``same`` or a float32 painter.

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
    """How the VAE is called: its inputs cast to ``input_dtype``, inside ``torch.autocast(device_type,
    dtype=autocast_dtype)`` unless ``autocast_dtype`` is None."""

    input_dtype: torch.dtype
    autocast_dtype: torch.dtype | None = None
    device_type: str = "cpu"

    def context(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)


def vae_precision(vae_dtype: str, dtype: torch.dtype, device: torch.device) -> VaePrecision:
    """``auto``: as DIM (float32 inputs under float32 autocast) when the painter's ``dtype`` is a half type;
    ``same``: the VAE runs in ``dtype`` like the rest. In float32 both are plain float32 calls."""
    if vae_dtype not in VAE_DTYPES:
        raise ValueError(f"vae_dtype must be one of {VAE_DTYPES}, got {vae_dtype!r}")
    if vae_dtype == "same" or dtype == torch.float32:
        return VaePrecision(input_dtype=dtype)
    if device.type != "cuda":
        raise ValueError(
            f"painter.vae_dtype 'auto' runs the VAE as DIM does, float32 inputs under torch.autocast(float32), "
            f"which torch supports on CUDA only; on {device.type} with painter dtype "
            f"{str(dtype).removeprefix('torch.')} set painter.vae_dtype: same (or painter.dtype: float32)"
        )
    return VaePrecision(input_dtype=torch.float32, autocast_dtype=torch.float32, device_type="cuda")


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
