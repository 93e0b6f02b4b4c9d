"""Which keys of a job-spec model section (``designer`` or ``judge``, plain dicts) become keywords of the
provider classes: the two sections take the same settings for the same kinds, so both registries pick them
here. Light on purpose: the registries import it without the providers' clients or models."""

from __future__ import annotations

from typing import Any

# <section>.<key> -> keyword of the openai provider class (``ChatEndpoint``'s settings and the model's).
OPENAI_KEYS = (
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
# <section>.<key> -> keyword of the local provider class.
LOCAL_KEYS = ("model", "max_tokens", "max_concurrency", "temperature", "device", "dtype")


def provider_kwargs(
    config: dict[str, Any], keys: tuple[str, ...], keep_none: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The provider's keyword arguments: the present ``keys``; an absent or None key keeps the class default,
    except the ``keep_none`` keys, whose None means something (no seed, the default endpoint, ...)."""
    return {k: config[k] for k in keys if k in config and (config[k] is not None or k in keep_none)}
