"""``painter.kind: qwen-image-edit``: what the kind loads and how it is called.

Edits: diffusers ``QwenImageEditPlusPipeline`` (Qwen/Qwen-Image-Edit-2511, Qwen/Qwen-Image-Edit-2509, and
models in the same layout); text-to-image: ``QwenImagePipeline`` (Qwen/Qwen-Image). ``painter.guidance_scale``
is the pipelines' ``true_cfg_scale`` (classifier-free guidance against the negative prompt " ", as the
model cards' examples call it); the pipelines' own ``guidance_scale`` is for guidance-distilled
transformers (``guidance_embeds``), which these are not, so it is not passed.

Edit rows whose request carries a mask (``mask.mode: native+composite``) are painted by
``QwenImageEditInpaintPipeline`` over the same loaded components (white = repainted, as diffusers documents):
note it is diffusers' inpainting variant of the first Qwen-Image-Edit pipeline (one source image, its prompt
template), run with whichever edit weights the job loads.
"""

from __future__ import annotations

from pathlib import Path

from transforms.painter.diffusers_kind import DiffusersKind, vae_config_value

KIND = "qwen-image-edit"
# task -> the diffusers pipeline classes (model_index.json ``_class_name``) this kind paints it with
PIPELINES = {"edit": ("QwenImageEditPlusPipeline",), "t2i": ("QwenImagePipeline",)}
# Edit rows with a native mask (mask.mode native+composite): diffusers' inpainting edit pipeline, over the edit
# pipeline's components (same six: scheduler, vae, text_encoder, tokenizer, processor, transformer). Its
# strength 1.0 starts the masked region from pure noise, as diffusers' own example calls it (its default 0.6
# would start from the noised source); outside the mask it keeps the source's latents at every step.
INPAINT_PIPELINE = "QwenImageEditInpaintPipeline"
INPAINT_STRENGTH = 1.0


def call_style():
    """How both Qwen pipelines are called (see the module docstring and ``diffusers_painter``)."""
    from transforms.painter.diffusers_painter import CallStyle, MaskedCall

    # diffusers 0.42.1 QwenImageEditPlusPipeline.__call__ raises for more than one prompt; QwenImagePipeline
    # takes a list of prompts and one generator per prompt.
    return CallStyle(
        guidance_argument="true_cfg_scale",
        negative_prompt=" ",
        rows_per_call={"edit": 1, "t2i": None},
        masked=MaskedCall(
            pipeline=INPAINT_PIPELINE, painted_size=inpaint_painted_size, fixed={"strength": INPAINT_STRENGTH}
        ),
    )


def inpaint_painted_size(width: int, height: int) -> tuple[int, int]:
    """What diffusers 0.42.1's ``QwenImageEditInpaintPipeline`` paints for a source of (width, height): it
    ignores ``width``/``height`` and paints about 1024^2 pixels at the source's aspect, sides rounded to 32 (a
    multiple of the 16-px grid its floor division then keeps); the painter checks the size it painted."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_inpaint import calculate_dimensions

    painted_width, painted_height, _ = calculate_dimensions(1024 * 1024, width / height)
    return painted_width, painted_height


def _tiny(task: str) -> Path:
    from transforms.painter.qwen.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(task)


def grid(folder: Path) -> int:
    """Pixels per packed latent cell: the VAE's spatial compression (2 ** len(temperal_downsample), as the
    pipelines compute it) times the transformer's 2x2 packing."""
    downsamples = len(vae_config_value(folder, "temperal_downsample"))
    return 2**downsamples * 2


SPEC = DiffusersKind(name=KIND, pipelines=PIPELINES, tiny=_tiny, grid=grid, call_style=call_style)
locate = SPEC.locate
fingerprint = SPEC.fingerprint
load_painter = SPEC.load_painter
