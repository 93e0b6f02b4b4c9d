"""Keep API keys out of everything dimflow stores or prints.

A key lives only in the environment variable the spec names (``designer.api_key_env``). A server may still
send it back: a proxy error page or a 200 reply that echoes the request headers puts ``Authorization: Bearer
<key>`` into an error, a blueprint, the design journal and the tables. So every text that is stored (both
tables, the journal) or shown passes through a ``Scrubber``, which removes

- the values of the named environment variables, read in the process that scrubs (every worker has the
  same environment as the designer that used the key), in any case-sensitive occurrence, and
- anything in the shape of a credential even when its value is not known here: an ``Authorization`` /
  ``Proxy-Authorization`` / ``api-key`` / ``x-api-key`` header line's value, a ``Bearer`` token, and
  OpenAI-style ``sk-...`` keys.

The shapes are narrow on purpose (a header name followed by a colon or ``=``; a bearer token of 16+
characters with a digit; ``sk-`` plus 16+ key characters), so ordinary blueprint prose is left alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

REDACTED = "[redacted]"
# Shorter values are not treated as secrets: replacing "ab" everywhere would mangle text for no gain.
MIN_SECRET_CHARS = 4

# Every shape below contains one of these: text without any (nearly all text) skips the shape regexes.
_TRIGGER = re.compile(r"(?i)bearer|authoriz|api-key|sk-")
_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|openai-api-key)(\"?\s*[:=]\s*\"?)"
    r"(?:(bearer|basic|token)\s+)?[^\s,;\"'}\]]+"
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+(?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{16,}")
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")


def _header(match: re.Match) -> str:
    scheme = f"{match.group(3)} " if match.group(3) else ""
    return f"{match.group(1)}{match.group(2)}{scheme}{REDACTED}"


class Scrubber:
    """Removes secrets from text; picklable (it holds variable names, never their values)."""

    def __init__(self, env_names: Iterable[str] = ()):
        self.env_names = tuple(sorted({name for name in env_names if name}))

    def secrets(self) -> list[str]:
        values = (os.environ.get(name, "").strip() for name in self.env_names)
        return sorted({v for v in values if len(v) >= MIN_SECRET_CHARS}, key=len, reverse=True)

    def bound(self) -> Callable[[str], str]:
        """The scrubbing function with this moment's secret values (read once: for many texts in a row)."""
        secrets = self.secrets()

        def scrub(text: str) -> str:
            for secret in secrets:
                if secret in text:
                    text = text.replace(secret, REDACTED)
            if _TRIGGER.search(text) is None:
                return text
            text = _HEADER.sub(_header, text)
            text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
            return _OPENAI_KEY.sub(REDACTED, text)

        return scrub

    def __call__(self, text: str) -> str:
        return self.bound()(text)

    def __repr__(self) -> str:
        return f"Scrubber(env_names={self.env_names!r})"
