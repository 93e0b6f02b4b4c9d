"""Fixtures for the chart tests: each value set is rendered once per session (Helm's Go SDK, offline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.k8s import support


@dataclass(frozen=True)
class Render:
    name: str
    values: dict[str, Any]
    text: dict[str, str]  # template path -> rendered text
    docs: list[dict[str, Any]]  # installed objects
    jobs: list[dict[str, Any]]  # Job manifests embedded in the jobs ConfigMaps

    @property
    def all_docs(self) -> list[dict[str, Any]]:
        return self.docs + self.jobs


_CACHE: dict[str, Render] = {}


def rendered(name: str) -> Render:
    if name not in _CACHE:
        values = support.VALUE_SETS[name]
        text = support.render(values)
        docs = support.objects(text)
        _CACHE[name] = Render(name, values, text, docs, support.embedded_jobs(docs))
    return _CACHE[name]


@pytest.fixture(scope="module")
def default() -> Render:
    return rendered("default")


@pytest.fixture(scope="module")
def every() -> list[Render]:
    return [rendered(name) for name in sorted(support.VALUE_SETS)]
