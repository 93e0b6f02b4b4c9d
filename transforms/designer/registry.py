"""Build a designer provider from the job spec's ``designer`` section (a plain dict)."""

from __future__ import annotations

from typing import Any

from transforms.designer.base import DesignerProvider
from transforms.designer.none import PassThroughDesigner


def make_provider(config: dict[str, Any]) -> DesignerProvider:
    kind = config.get("kind", "none")
    if kind == "none":
        return PassThroughDesigner()
    raise NotImplementedError(
        f"designer.kind={kind!r} is not available in this build; use designer.kind=none "
        "(the openai and local providers are tracked in the designer issue)"
    )
