"""Build a designer provider from the job spec's ``designer`` section (a plain dict).

The dict is ``DesignerSpec.model_dump()``; keys a provider does not use are ignored here (the spec
itself rejects unknown keys), and keys the spec does not have yet take the provider class's defaults.
Building is cheap and touches no network, model or secret: the launcher builds a provider only to read
``config()`` for the render key; clients, keys and weights are acquired in ``setup()`` on the worker.
"""

from __future__ import annotations

from typing import Any

from transforms.designer.base import DesignerProvider
from transforms.designer.none import PassThroughDesigner
from transforms.vlm.spec_keys import LOCAL_KEYS, OPENAI_KEYS, provider_kwargs


def make_provider(config: dict[str, Any]) -> DesignerProvider:
    kind = config.get("kind", "none")
    if kind == "none":
        return PassThroughDesigner()
    if kind == "openai":
        from transforms.designer.openai_provider import OpenAIDesigner

        return OpenAIDesigner(**provider_kwargs(config, OPENAI_KEYS, keep_none=("seed", "base_url")))
    if kind == "local":
        from transforms.designer.local_provider import LocalDesigner

        return LocalDesigner(**provider_kwargs(config, LOCAL_KEYS))
    raise ValueError(f"designer.kind={kind!r} is unknown; expected one of: openai, local, none")
