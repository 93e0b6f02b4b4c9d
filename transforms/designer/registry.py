"""Build a designer provider from the job spec's ``designer`` section (a plain dict).

The dict is ``DesignerSpec.model_dump()``; keys a provider does not use are ignored here (the spec
itself rejects unknown keys), and keys the spec does not have yet take the defaults below. Building is
cheap and touches no network, model or secret: the launcher builds a provider only to read ``config()``
for the render key; clients, keys and weights are acquired in ``setup()`` on the worker.
"""

from __future__ import annotations

from typing import Any

from transforms.designer.base import DesignerProvider
from transforms.designer.none import PassThroughDesigner

# designer.<key> -> keyword of the provider class; absent or None keys keep the class default.
_OPENAI_KEYS = (
    "model",
    "base_url",
    "api_key_env",
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrency",
    "timeout_s",
    "max_attempts",
    "temperature",
    "seed",
    "max_tokens",
    "workers",
)
_LOCAL_KEYS = ("model", "max_tokens", "max_concurrency", "temperature", "device", "dtype")


def make_provider(config: dict[str, Any]) -> DesignerProvider:
    kind = config.get("kind", "none")
    if kind == "none":
        return PassThroughDesigner()
    if kind == "openai":
        from transforms.designer.openai_provider import OpenAIDesigner

        return OpenAIDesigner(**_pick(config, _OPENAI_KEYS, keep_none=("seed", "base_url")))
    if kind == "local":
        from transforms.designer.local_provider import LocalDesigner

        return LocalDesigner(**_pick(config, _LOCAL_KEYS))
    raise ValueError(f"designer.kind={kind!r} is unknown; expected one of: openai, local, none")


def _pick(config: dict[str, Any], keys: tuple[str, ...], keep_none: tuple[str, ...] = ()) -> dict[str, Any]:
    """The provider's keyword arguments: present keys, with None meaning "default" unless meaningful."""
    return {k: config[k] for k in keys if k in config and (config[k] is not None or k in keep_none)}
