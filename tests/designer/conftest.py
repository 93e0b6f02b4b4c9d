"""Fixtures for the designer tests: the fake OpenAI-compatible server and key (``tests.fakes.openai_fixtures``),
a set-up OpenAI designer, test images."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from tests.fakes.openai_fixtures import (  # noqa: F401 - fixtures and names the designer tests use
    FAKE_KEY,
    KEY_ENV,
    api_key,
    fake_server,
    set_up_providers,
)
from transforms.designer.openai_provider import OpenAIDesigner


def png_bytes(width: int = 64, height: int = 48, noise: bool = False) -> bytes:
    """A PNG; with ``noise`` its JPEG cannot be small, which exercises the byte bound."""
    if noise:
        pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    else:
        image = Image.new("RGB", (width, height), (40, 120, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def designer(api_key) -> Iterator[Callable[..., OpenAIDesigner]]:  # noqa: F811 - the imported fixture
    """``designer(server, **overrides)``: a set-up provider with fast test defaults."""
    yield from set_up_providers(OpenAIDesigner, model="gpt-test")
