"""The ``none`` designer: the instruction itself is the blueprint (DIM without a designer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transforms.designer.base import Design, DesignerProvider, DesignFailure, DesignRequest


class PassThroughDesigner(DesignerProvider):
    name = "none"
    needs_image = False  # the instruction is the blueprint: no pixels, so no source read at design

    def config(self) -> dict[str, Any]:
        return {"kind": "none"}

    def design(self, requests: Sequence[DesignRequest]) -> list[Design | DesignFailure]:
        return [Design(blueprint=request.instruction, attempts=0, latency_s=0.0) for request in requests]
