"""Painters behind one seam (``base``): the DIM model (``dim``) and the Beam ModelHandler (``handler``).

Keep this module import-light: the pipeline imports ``base`` while building the graph.
"""
