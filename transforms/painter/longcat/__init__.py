"""LongCat-Image(-Edit) painter kind (``painter.kind: longcat-image-edit``): facts, tiny checkpoints, loading."""
