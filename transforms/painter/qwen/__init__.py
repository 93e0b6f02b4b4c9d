"""The ``qwen-image-edit`` painter kind: Qwen-Image-Edit (diffusers ``QwenImageEditPlusPipeline``) for edits and
Qwen-Image (``QwenImagePipeline``) for text-to-image, behind ``transforms.painter.diffusers_painter``."""
