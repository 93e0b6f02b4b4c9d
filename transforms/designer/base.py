"""The designer seam: (instruction, source image) -> edit blueprint.

Providers (``none``, ``openai``, ``local``) implement ``DesignerProvider``. The Beam stage hands them
batches, so a local model can batch on its device and a remote client can fan requests out under its
rate limits; either way each request gets exactly one ``Design`` or ``DesignFailure`` back, in order.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class DesignerSetupError(RuntimeError):
    """The provider cannot start on this worker (missing API key, bad settings, unloadable model)."""


@dataclass(frozen=True)
class DesignRequest:
    key: str  # row id, for error messages
    instruction: str
    # The source's original encoded bytes, read again for this call (transforms.reread); None for
    # text-to-image rows, and for every row when the provider does not look at images (needs_image).
    image: bytes | None


@dataclass(frozen=True)
class Design:
    blueprint: str
    attempts: int = 1  # calls made for this row (retries included); 0 when no model was asked
    tokens_in: int | None = None  # from the reply's usage (prompt tokens), when the backend reports it
    tokens_out: int | None = None
    latency_s: float = 0.0  # wall time from the row's first call to its final reply, retries included


@dataclass(frozen=True)
class DesignFailure:
    """A row the designer could not serve; ``error`` is the reason written to provenance."""

    error: str
    attempts: int = 1
    tokens_in: int | None = None  # a reply that was refused or unparseable was still paid for
    tokens_out: int | None = None
    latency_s: float = 0.0


class DesignerProvider(abc.ABC):
    """One designer backend. Built once per worker (``setup``), then called with batches."""

    #: Short name written to provenance ``designer`` (e.g. ``none``, ``openai:gpt-4o``).
    name: str

    #: Whether ``design`` looks at the source image. Records carry no image bytes, so the design stage
    #: reads each source again for a provider that does (a storage read per row); one that never looks
    #: at pixels sets this False and gets ``image=None`` without any read.
    needs_image: bool = True

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes the blueprint (model, prompt version, temperature, seed, ...).

        It enters ``design_key`` and ``render_key``; secrets and rate limits never do.
        """

    def preflight(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Cheap check, on the machine that starts the run, that ``setup`` can work (a key that is set, a
        model that can be found): raises ``DesignerSetupError`` so a run that would fail every row is
        refused before it starts. Loads nothing heavy and sends no request."""

    def setup(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Acquire clients/models; called once per worker before the first batch."""

    def teardown(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Release what ``setup`` acquired."""

    @abc.abstractmethod
    def design(self, requests: Sequence[DesignRequest]) -> list[Design | DesignFailure]:
        """Return one result per request, in order; per-row problems are ``DesignFailure``, not raises."""
