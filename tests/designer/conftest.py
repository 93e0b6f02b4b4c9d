"""Fixtures for the designer tests: a fake OpenAI-compatible server, a known fake key, test images."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from tests.fakes.openai_server import FakeOpenAI
from transforms.designer.openai_provider import OpenAIDesigner

KEY_ENV = "DIMFLOW_TEST_DESIGNER_KEY"
FAKE_KEY = "sk-dimflow-fake-7Hq2ZxW9pL4sT1vB"


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
def api_key(monkeypatch) -> str:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    return FAKE_KEY


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeOpenAI]]:
    """``fake_server(limit=..., window_s=..., ...)`` starts a server that is stopped after the test."""
    started: list[FakeOpenAI] = []

    def start(**options) -> FakeOpenAI:
        server = FakeOpenAI(expected_key=FAKE_KEY, **options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def designer(api_key) -> Iterator[Callable[..., OpenAIDesigner]]:
    """``designer(server, **overrides)``: a set-up provider with fast test defaults."""
    built: list[OpenAIDesigner] = []

    def build(server: FakeOpenAI, **overrides) -> OpenAIDesigner:
        settings = dict(
            model="gpt-test",
            base_url=server.base_url,
            api_key_env=KEY_ENV,
            requests_per_minute=60_000,
            tokens_per_minute=100_000_000,
            max_concurrency=8,
            timeout_s=2.0,
            max_attempts=3,
            backoff_base_s=0.02,
            backoff_max_s=0.1,
        )
        settings.update(overrides)
        provider = OpenAIDesigner(**settings)
        provider.setup()
        built.append(provider)
        return provider

    yield build
    for provider in built:
        provider.teardown()
