"""DC-AE (diffusers AutoencoderDC): source preprocessing, encode, decode, and pixels out.

Preprocessing follows the reference's ``default_train`` transform: RGB, resize the short side to the
target resolution (bilinear, torchvision's default for PIL images, long side truncated), center crop
(torchvision rounds the offset with Python's round), to [0, 1], then (x - 0.5) / 0.5. Latents are
``encode(x).latent * scaling_factor``; decoding divides by it. Output quantisation matches
``torchvision.utils.save_image(normalize=True, value_range=(-1, 1))``: clamp, (x + 1) / 2, x*255 + 0.5,
truncate. torchvision itself is not needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderDC
from PIL import Image


def build_vae(kwargs: dict[str, Any]) -> AutoencoderDC:
    return AutoencoderDC(**kwargs)


def source_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """PIL image -> float32 [3, R, R] in [-1, 1]."""
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
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div(255.0)
    return (tensor - 0.5) / 0.5


def encode(vae: AutoencoderDC, pixels: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """[B, 3, R, R] in [-1, 1] -> scaled latents [B, C, R/f, R/f]."""
    return vae.encode(pixels).latent * scaling_factor


def decode(vae: AutoencoderDC, latents: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Scaled latents -> images in (about) [-1, 1]."""
    return vae.decode(latents / scaling_factor, return_dict=False)[0]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] float32, clamped (the value quantised into pixels)."""
    return images.float().clamp(-1.0, 1.0).add(1.0).div(2.0)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    unit = to_unit(images)
    pixels = unit.mul(255.0).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(array) for array in pixels]
