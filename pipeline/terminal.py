"""Text from manifests, tables and errors, made safe to show on an operator's terminal.

A hostile manifest can put escape sequences (set-title, clear-screen, colours), other control characters
or bidirectional overrides into ids, paths and error messages; printed raw, they act on the terminal. And
rich reads ``[...]`` in a printed string as markup. So everything dimflow prints that it did not write
itself goes through ``printable`` (plain strings) or ``text`` (rich renderables, no markup), which show such
characters as visible escapes (``\\x1b``, ``\\u202e``) and remove secrets (``transforms.secrets``).
"""

from __future__ import annotations

import unicodedata

from rich.text import Text

from transforms.secrets import Scrubber

# Bidirectional embeddings, overrides and isolates: they reorder what follows them on screen.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_scrub = Scrubber()


def set_secret_env_names(names: list[str]) -> None:
    """Also remove the values of these environment variables from everything shown (the job's API key)."""
    global _scrub
    _scrub = Scrubber(names)


def _unsafe(ch: str, keep_newlines: bool) -> bool:
    if ch == "\n" and keep_newlines:
        return False
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI


def _escape(ch: str) -> str:
    code = ord(ch)
    return _NAMED.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(value: object, *, keep_newlines: bool = False) -> str:
    """``value`` as text with control, line-separator and bidi characters escaped and secrets removed."""
    source = "" if value is None else str(value)
    if source.isprintable():
        return _scrub(source)
    return _scrub("".join(_escape(ch) if _unsafe(ch, keep_newlines) else ch for ch in source))


def text(value: object, style: str = "") -> Text:
    """A rich ``Text`` of ``printable(value)``: never parsed as markup."""
    return Text(printable(value), style=style)
