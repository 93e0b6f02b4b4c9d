"""Fixtures for tests of the ``openai`` providers (designer and judge): a known fake key in the environment,
the fake OpenAI-compatible server (``tests.fakes.openai_server``), and set-up providers pointed at it with
fast test limits. A conftest imports the fixtures it uses (``api_key``, ``fake_server``) and builds its own
provider fixture with ``set_up_providers``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.fakes.openai_server import FakeOpenAI

KEY_ENV = "DIMFLOW_TEST_DESIGNER_KEY"
FAKE_KEY = "sk-dimflow-fake-7Hq2ZxW9pL4sT1vB"

# Endpoint settings for tests: limits far above what a test sends, short timeouts and backoff.
FAST_ENDPOINT: dict[str, Any] = dict(
    requests_per_minute=60_000,
    tokens_per_minute=100_000_000,
    max_concurrency=8,
    timeout_s=2.0,
    max_attempts=3,
    backoff_base_s=0.02,
    backoff_max_s=0.1,
)

P = TypeVar("P")


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


def set_up_providers(provider_class: Callable[..., P], model: str) -> Iterator[Callable[..., P]]:
    """The body of a provider fixture (``yield from`` it): yields ``build(server, **overrides)``, which
    makes a set-up ``provider_class`` for ``model`` on ``server`` with the fake key and ``FAST_ENDPOINT``
    (``overrides`` win); every provider built is torn down after the test."""
    built: list[Any] = []

    def build(server: FakeOpenAI, **overrides) -> P:
        settings = dict(model=model, base_url=server.base_url, api_key_env=KEY_ENV, **FAST_ENDPOINT)
        settings.update(overrides)
        provider = provider_class(**settings)
        provider.setup()
        built.append(provider)
        return provider

    yield build
    for provider in built:
        provider.teardown()
