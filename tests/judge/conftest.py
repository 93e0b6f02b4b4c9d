"""Fixtures for the judge tests: the designer tests' fake server and key, plus a set-up OpenAI judge."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator

import pytest
from PIL import Image

from tests.designer.conftest import KEY_ENV, api_key, fake_server  # noqa: F401 - fixtures reused here
from tests.fakes.openai_server import FakeOpenAI
from transforms.judge.openai_judge import OpenAIJudge


def image_bytes(width: int, height: int, colour: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def verdict_json(
    follow: float = 8, quality: float = 9, preservation: float | None = 7, reason: str = "ok"
) -> str:
    """A reply in dimflow's rubric's JSON shape (``preservation=None`` leaves it out, as for text-to-image)."""
    document: dict = {"instruction_following": follow, "visual_quality": quality}
    if preservation is not None:
        document["preservation"] = preservation
    document["reason"] = reason
    return json.dumps(document)


@pytest.fixture
def judge(api_key) -> Iterator[Callable[..., OpenAIJudge]]:  # noqa: F811 - the imported fixture
    """``judge(server, **overrides)``: a set-up OpenAI judge with fast test defaults."""
    built: list[OpenAIJudge] = []

    def build(server: FakeOpenAI, **overrides) -> OpenAIJudge:
        settings = dict(
            model="judge-test",
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
        provider = OpenAIJudge(**settings)
        provider.setup()
        built.append(provider)
        return provider

    yield build
    for provider in built:
        provider.teardown()
