"""The MLP connector between the encoder's hidden states and the DiT's caption space."""

from __future__ import annotations

from torch import nn


def build_projector(in_features: int, out_features: int) -> nn.Sequential:
    """Linear, GELU, Linear (keys 0.* and 2.*).

    The reference builds ``mlp2x_gelu`` with ``nn.GELU()``: the exact (erf) GELU, not the tanh form.
    """
    return nn.Sequential(
        nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features)
    )
