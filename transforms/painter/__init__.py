"""Painters behind one seam (``base``): the kinds registry (``kinds``), DIM (``dim``), diffusers-pipeline
painters (``diffusers_painter``, ``diffusers_checkpoint``; the Qwen kind in ``qwen``) and the Beam
ModelHandler (``handler``).

Keep this module import-light: the pipeline imports ``base`` and ``kinds`` while building the graph.
"""
