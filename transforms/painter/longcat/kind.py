"""``painter.kind: longcat-image-edit``: what the kind loads and how it is called (facts: ``facts.py``).

Edits: diffusers ``LongCatImageEditPipeline`` (meituan-longcat/LongCat-Image-Edit and models in its layout);
text-to-image: ``LongCatImagePipeline`` (meituan-longcat/LongCat-Image). ``painter.guidance_scale`` is the
pipelines' own ``guidance_scale`` (classifier-free guidance against the negative prompt '' when above 1).

- Edit rows: one per call (the pipeline refuses more than one prompt), no size argument: the pipeline
  paints about 1024² pixels at its source's aspect; the painter crops the source to the row's aspect and
  resizes the output to the row's size (``diffusers_painter``).
- Text-to-image rows batch on accelerators (one generator per row), always with ``enable_prompt_rewrite``
  off (it samples from the text encoder outside the rows' generators, over the whole call's prompts) and
  ``enable_cfg_renorm`` on (the model's recommendation and diffusers' default).
"""

from __future__ import annotations

from pathlib import Path

from transforms.painter.diffusers_kind import DiffusersKind, vae_config_value
from transforms.painter.longcat import facts

KIND = facts.KIND
PIPELINES = {task: (class_name,) for task, class_name in facts.PIPELINE_CLASSES.items()}


def call_style():
    """How both LongCat pipelines are called (see the module docstring)."""
    from transforms.painter.diffusers_painter import CallStyle

    return CallStyle(
        guidance_argument="guidance_scale",
        negative_prompt=facts.SAMPLING["edit"]["negative_prompt"],
        rows_per_call={"edit": 1, "t2i": None},
        fixed={"t2i": dict(facts.T2I_FIXED)},
        unsized={"edit": facts.edit_output_size},
    )


def _tiny(task: str) -> Path:
    from transforms.painter.longcat.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(task)


def grid(folder: Path) -> int:
    """Pixels per packed latent cell: the VAE's compression (2 ** (len(block_out_channels) - 1), as both
    pipelines compute ``vae_scale_factor``) times the transformer's 2x2 packing."""
    return 2 ** (len(vae_config_value(folder, "block_out_channels")) - 1) * 2


SPEC = DiffusersKind(name=KIND, pipelines=PIPELINES, tiny=_tiny, grid=grid, call_style=call_style)
locate = SPEC.locate
fingerprint = SPEC.fingerprint
load_painter = SPEC.load_painter
