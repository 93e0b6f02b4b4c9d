"""A Painter over a diffusers pipeline: edit rows through the kind's edit pipeline, text-to-image rows
through its text-to-image pipeline, with DIM's contracts.

- **Per-row seeds.** Each row gets its own ``torch.Generator`` seeded with the row's seed (on the CPU by
  default, so a row's noise is the same on any device), passed to the pipeline as one generator per row.
- **Batching** only where the pipeline really paints different rows in one call: ``CallStyle`` says how many
  rows of each task one call may take. diffusers 0.42.1's ``QwenImageEditPlusPipeline`` refuses more than one
  prompt ("currently only supports batch_size=1"), and a list of images there means several reference images
  for *one* prompt, so Qwen edit rows are painted one call per row on the device; ``QwenImagePipeline`` takes
  a list of prompts with a list of generators. On the CPU every row is painted alone (``row_by_row``), so an
  image is bit-identical whatever batch it came in; on accelerators batched rows agree with rows alone up to
  rounding (masked padding of the prompts).
- **Sizes.** ``square``: ``resolution``²; ``preserve``: an edit row at the bucket nearest its source's aspect
  (about ``resolution``² pixels, sides multiples of the pipeline's grid: the VAE's compression times the 2x2
  latent packing). Rows of one call share one size. A pipeline without a size argument (``CallStyle.unsized``:
  diffusers 0.42.1's ``LongCatImageEditPipeline`` paints about 1024² pixels at its source's aspect) gets the
  source center-cropped to the row's aspect (as DIM crops), and its output is resized (Lanczos) to the row's
  size; the size it painted is checked against what the style says it paints.
- **Native masks** (``CallStyle.masked``, ``mask.mode: native+composite``): an edit row whose request carries a
  mask is painted by the kind's inpainting pipeline, built once over the edit pipeline's own components (the
  same module objects: no second copy of the weights), one row per call. It is given the whole upright source
  (not cropped) and the mask binarised at 128 (white = may change, diffusers' "white is repainted"), paints
  at its own size for the source's aspect, and its output is resized (Lanczos) to the row's size: the same
  geometry as the source resampled to the output size, which the composite keeps outside the mask.
- **Checks** before any pixel is painted: the sampling parameters against the grid, every request against
  the task (a source for edits, none for text-to-image, a prompt, a seed in range), naming the row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from transforms.images import MASK_THRESHOLD as MASK_THRESHOLD  # the painters' threshold is the masks'
from transforms.images import ImageError, decode_mask
from transforms.painter.base import (
    DEFAULT_VAE_TILE_PIXELS,
    NOISE_DEVICES,
    Painting,
    PaintParams,
    PaintRequest,
    check_params,
    check_request,
    decode_source,
    source_size,
    valid_vae_tile_pixels,
)
from transforms.painter.dim import buckets


@dataclass(frozen=True)
class CallStyle:
    """How one kind's pipelines are called.

    ``guidance_argument``: the pipeline argument ``painter.guidance_scale`` goes to (``true_cfg_scale`` for
    Qwen-Image: classifier-free guidance against ``negative_prompt``; a scale <= 1 turns guidance off).
    ``rows_per_call``: task -> the most rows one pipeline call may paint (None: any number).
    ``fixed``: task -> further keyword arguments every call of that task gets.
    ``unsized``: task -> for pipelines that take no width/height, the (width, height) they paint for a source
    of a given (width, height).
    """

    guidance_argument: str
    negative_prompt: str | None
    rows_per_call: dict[str, int | None]
    guidance_threshold: float = 1.0  # guidance at or below this: no negative prompt (the pipeline skips CFG)
    fixed: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    unsized: Mapping[str, Callable[[int, int], tuple[int, int]]] = field(default_factory=dict)
    masked: MaskedCall | None = None  # how edit rows with a mask are painted (None: the kind takes no masks)


@dataclass(frozen=True)
class MaskedCall:
    """How a kind paints an edit row with a native mask.

    ``pipeline``: the diffusers class (built over the edit pipeline's components). ``painted_size``: the
    (width, height) it paints for a source of a given upright (width, height) (it takes no size argument).
    ``fixed``: further keyword arguments of every masked call.
    """

    pipeline: str
    painted_size: Callable[[int, int], tuple[int, int]]
    fixed: Mapping[str, Any] = field(default_factory=dict)


class DiffusersPainter:
    """A loaded diffusers pipeline behind the ``Painter`` protocol (one task: ``edit`` or ``t2i``)."""

    def __init__(
        self,
        *,
        name: str,
        task: str,
        pipeline: Any,
        style: CallStyle,
        checkpoint_sha256: str,
        dtype: torch.dtype,
        device: torch.device,
        grid: int,
        noise_device: str = "cpu",
        row_by_row: bool | None = None,
        vae_tile_pixels: int | None = DEFAULT_VAE_TILE_PIXELS,
        masked_pipeline: Any = None,
    ):
        """``grid``: the pixel multiple every output side must be. ``row_by_row`` (default: on for the CPU)
        paints one row per call whatever ``style`` allows, so an image never depends on its batch.
        ``vae_tile_pixels``: outputs with more pixels decode with the VAE's tiling (None: never).
        ``masked_pipeline``: the pipeline of ``style.masked`` (edit painters of kinds that take masks)."""
        if task not in style.rows_per_call:
            raise ValueError(f"task must be one of {sorted(style.rows_per_call)}, got {task!r}")
        if noise_device not in NOISE_DEVICES:
            raise ValueError(f"noise_device must be one of {NOISE_DEVICES}, got {noise_device!r}")
        if not valid_vae_tile_pixels(vae_tile_pixels):
            raise ValueError(f"vae_tile_pixels must be a positive integer or None, got {vae_tile_pixels!r}")
        if not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be a positive integer, got {grid!r}")
        if task in style.unsized and style.rows_per_call[task] != 1:
            raise ValueError(f"an unsized {task} pipeline paints one row per call (it sizes from one source)")
        self.name = name
        self.task = task
        self.pipeline = pipeline
        self.style = style
        self.checkpoint_sha256 = checkpoint_sha256
        self.dtype = dtype
        self.device = device
        self.grid = grid
        self.noise_device = noise_device
        self.row_by_row = device.type == "cpu" if row_by_row is None else bool(row_by_row)
        if (masked_pipeline is not None) != (task == "edit" and style.masked is not None):
            raise ValueError(
                f"a {task} painter takes a masked pipeline exactly when its style has a masked call "
                f"(style.masked: {style.masked!r}, masked_pipeline given: {masked_pipeline is not None})"
            )
        self.masked_pipeline = masked_pipeline
        self.vae_tile_pixels = vae_tile_pixels
        self._lock = threading.Lock()  # one call at a time on the pipeline, whatever the caller's threads

    @property
    def rows_per_call(self) -> int | None:
        """The most rows one pipeline call paints here (None: any number)."""
        return 1 if self.row_by_row else self.style.rows_per_call[self.task]

    def check(self, requests: Sequence[PaintRequest], params: PaintParams) -> None:
        check_params(params, grid=self.grid)
        for request in requests:
            check_request(request, self.task)
            if request.mask is not None and self.masked_pipeline is None:
                raise ValueError(
                    f"row {request.key!r}: the request carries a mask but painter {self.name} ({self.task}) "
                    "takes no native masks (mask.mode native+composite needs an edit painter of a kind that does)"
                )

    def output_size(self, request: PaintRequest, params: PaintParams) -> tuple[int, int]:
        """(width, height): square, or the source's aspect bucket (``preserve``, edit rows)."""
        size = source_size(request) if params.aspect == "preserve" and request.source is not None else None
        return buckets.output_size(size, params.resolution, self.grid, params.aspect)

    def calls(
        self, sizes: Sequence[tuple[int, int]], masked: Sequence[bool] | None = None
    ) -> list[list[int]]:
        """Indices of the rows painted by each pipeline call: one size per call, sizes in order of first
        appearance, at most ``rows_per_call`` rows each; rows with a native mask (``masked``) one per call."""
        masked = [False] * len(sizes) if masked is None else list(masked)
        groups: dict[tuple[tuple[int, int], bool], list[int]] = {}
        for index, (size, with_mask) in enumerate(zip(sizes, masked, strict=True)):
            groups.setdefault((size, with_mask), []).append(index)
        calls = []
        for (_, with_mask), group in groups.items():
            limit = 1 if with_mask else (self.rows_per_call or len(group))
            calls.extend(group[start : start + limit] for start in range(0, len(group), limit))
        return calls

    def generator(self, seed: int) -> torch.Generator:
        """The row's own generator: on the CPU (the same noise on any device), or on the accelerator."""
        device = "cpu" if self.noise_device == "cpu" else self.device
        return torch.Generator(device=device).manual_seed(seed)

    @property
    def sized(self) -> bool:
        """Whether this task's pipeline takes the size to paint (else see ``CallStyle.unsized``)."""
        return self.task not in self.style.unsized

    def painted_size(self, arguments: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) the pipeline paints for a call with these arguments, asked for ``size``: ``size``,
        or for an unsized or masked pipeline what it paints for the (cropped) source it is given."""
        image = arguments.get("image")
        image = image[0] if isinstance(image, list) else image
        if "mask_image" in arguments:
            assert self.style.masked is not None
            return self.style.masked.painted_size(*image.size)
        if self.sized:
            return size
        return self.style.unsized[self.task](*image.size)

    def pipeline_for(self, arguments: dict[str, Any]) -> Any:
        """The pipeline a call with these arguments goes to: the masked one for a row with a native mask."""
        return self.masked_pipeline if "mask_image" in arguments else self.pipeline

    def call_arguments(
        self, requests: Sequence[PaintRequest], params: PaintParams, size: tuple[int, int]
    ) -> dict[str, Any]:
        """The keyword arguments of one pipeline call painting ``requests`` at ``size`` (what a direct call of
        the pipeline takes, so tests can call it the same way)."""
        if any(request.mask is not None for request in requests):
            return self.masked_call_arguments(requests, params)
        width, height = size
        one = len(requests) == 1
        prompts = [request.prompt for request in requests]
        arguments: dict[str, Any] = {
            **self.style.fixed.get(self.task, {}),
            "prompt": prompts[0] if one else prompts,
            "num_inference_steps": params.steps,
            **({"width": width, "height": height} if self.sized else {}),
            self.style.guidance_argument: float(params.guidance_scale),
            "generator": self.generator(requests[0].seed)
            if one
            else [self.generator(r.seed) for r in requests],
            "output_type": "pil",
        }
        if self.style.negative_prompt is not None and params.guidance_scale > self.style.guidance_threshold:
            negative = self.style.negative_prompt
            arguments["negative_prompt"] = negative if one else [negative] * len(requests)
        if self.task == "edit":
            images = [source_image(request) for request in requests]
            if not self.sized:
                images = [crop_to_aspect(image, size) for image in images]
            arguments["image"] = images[0] if one else images
        return arguments

    def masked_call_arguments(self, requests: Sequence[PaintRequest], params: PaintParams) -> dict[str, Any]:
        """The keyword arguments of one masked pipeline call (one row): the whole upright source, its mask
        binarised in the pipeline's convention, no size (the pipeline sizes from the source)."""
        if len(requests) != 1 or self.style.masked is None:
            raise ValueError(
                f"a masked call paints one row of an edit painter that takes masks, got {requests}"
            )
        (request,) = requests
        image = source_image(request)
        arguments: dict[str, Any] = {
            **self.style.masked.fixed,
            "prompt": request.prompt,
            "image": image,
            "mask_image": mask_image(request, image.size),
            "num_inference_steps": params.steps,
            self.style.guidance_argument: float(params.guidance_scale),
            "generator": self.generator(request.seed),
            "output_type": "pil",
        }
        if self.style.negative_prompt is not None and params.guidance_scale > self.style.guidance_threshold:
            arguments["negative_prompt"] = self.style.negative_prompt
        return arguments

    def paint(self, requests: Sequence[PaintRequest], params: PaintParams) -> list[Painting]:
        """One ``Painting`` per request, in order. ``paint_s`` is each row's even share of the wall time;
        ``batch_size`` is the rows given."""
        requests = list(requests)
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            self.check(requests, params)
            sizes = [self.output_size(r, params) for r in requests]
            images: list[Image.Image | None] = [None] * len(requests)
            masked = [r.mask is not None for r in requests]
            for indices in self.calls(sizes, masked):
                rows = [requests[i] for i in indices]
                size = sizes[indices[0]]
                arguments = self.call_arguments(rows, params, size)
                painted_size = self.painted_size(arguments, size)
                self._set_vae_tiling(painted_size)
                pipeline = self.pipeline_for(arguments)
                output = pipeline(**arguments)
                painted = list(output.images)
                if len(painted) != len(rows):
                    raise RuntimeError(
                        f"{type(pipeline).__name__} returned {len(painted)} images for {len(rows)} rows"
                    )
                for index, image in zip(indices, painted, strict=True):
                    if image.size != painted_size:
                        raise RuntimeError(
                            f"row {requests[index].key!r}: the pipeline painted {image.size}, "
                            f"expected {painted_size}"
                        )
                    if image.size != size:  # an unsized or masked pipeline's output
                        image = image.resize(size, Image.Resampling.LANCZOS)
                    images[index] = image.convert("RGB")
            share = (time.perf_counter() - started) / max(len(requests), 1)
        dtype = str(self.dtype).removeprefix("torch.")
        fields = {
            "painter": self.name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "steps": params.steps,
            "guidance_scale": float(params.guidance_scale),
            "dtype": dtype,
            "vae_dtype": dtype,  # diffusers runs the VAE in the pipeline's dtype
            "device": str(self.device),
            "batch_size": len(requests),
        }
        paintings = []
        for request, image, (width, height) in zip(requests, images, sizes, strict=True):
            assert image is not None, request.key
            row_fields = {**fields, "width": width, "height": height}
            paintings.append(Painting(key=request.key, image=image, paint_s=share, fields=row_fields))
        return paintings

    def _set_vae_tiling(self, size: tuple[int, int]) -> None:
        """Tiled VAE decoding (bounded memory, approximate seams) only above ``vae_tile_pixels``."""
        vae = self.pipeline.vae
        if self.vae_tile_pixels is not None and size[0] * size[1] > self.vae_tile_pixels:
            vae.enable_tiling()
        else:
            vae.disable_tiling()


def crop_to_aspect(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The largest centered crop of ``image`` with the aspect of ``size`` (the image itself if it has it)."""
    width, height = image.size
    target_w, target_h = size
    if width * target_h == height * target_w:
        return image
    if width * target_h > height * target_w:  # too wide: keep the height
        crop_w, crop_h = max(1, round(height * target_w / target_h)), height
    else:
        crop_w, crop_h = width, max(1, round(width * target_h / target_w))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h))


def source_image(request: PaintRequest) -> Image.Image:
    """The row's source, upright (EXIF applied), as RGB: transparency over white, as DIM's encoder takes it."""
    image = decode_source(request)
    try:
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.split()[3])
            return background
        return image.convert("RGB")
    except Exception as exc:  # PIL raises several types for odd modes
        raise ValueError(
            f"row {request.key!r}: cannot convert the source image to RGB: {type(exc).__name__}: {exc}"
        ) from exc


def mask_image(request: PaintRequest, size: tuple[int, int]) -> Image.Image:
    """The row's mask as the inpainting pipelines take it: one channel, 255 = may change (repainted), 0 =
    kept, read as the fetch stage reads masks (``transforms.images.decode_mask``: upright, alpha or grey
    level, binarised at ``MASK_THRESHOLD``; diffusers' mask processor binarises at 0.5 of the same scale, so
    the mask given is what it paints by). It must have the source's upright ``size``, so it is refused
    above the source's pixel count before its pixels are decoded."""
    assert request.mask is not None
    try:
        mask = decode_mask(request.mask, max_pixels=size[0] * size[1], pixel_limit="the source's pixel count")
    except ImageError as exc:
        raise ValueError(f"row {request.key!r}: field mask: cannot decode the mask image: {exc}") from exc
    if mask.size != size:
        raise ValueError(
            f"row {request.key!r}: field mask: the mask is {mask.size[0]}x{mask.size[1]} but the source is "
            f"{size[0]}x{size[1]} (after EXIF orientation)"
        )
    return mask
