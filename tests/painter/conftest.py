"""Tiny DIM checkpoints built once per session (into $DIMFLOW_CACHE, a temp folder set by tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_edit_dir() -> str:
    from transforms.painter.dim.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint("edit")


@pytest.fixture(scope="session")
def tiny_t2i_dir() -> str:
    from transforms.painter.dim.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint("t2i")


@pytest.fixture(scope="session")
def edit_painter(tiny_edit_dir):
    import torch

    from transforms.painter.dim.pipeline import load_dim_painter

    return load_dim_painter("tiny", "edit", dtype=torch.float32, device=torch.device("cpu"))


@pytest.fixture(scope="session")
def t2i_painter(tiny_t2i_dir):
    import torch

    from transforms.painter.dim.pipeline import load_dim_painter

    return load_dim_painter("tiny", "t2i", dtype=torch.float32, device=torch.device("cpu"))
