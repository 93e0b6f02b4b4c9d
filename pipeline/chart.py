"""Render the dimflow Helm chart offline with the Helm Go SDK (helm-python-sdk): no helm binary, no cluster.

`dimflow submit` takes its Job manifests from here, so the chart stays the single description of what
runs on the cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_CHART = Path(__file__).resolve().parents[1] / "helm" / "dimflow"


def render_chart(
    chart_dir: str | Path, *, release: str, namespace: str, values: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every object the chart renders for these values (NOTES.txt and empty documents left out)."""
    import helm_python as helm

    chart = helm.Chart.load(str(chart_dir))
    rendered = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(rendered[path]) if doc)
    return objects


def merge_values(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; nested mappings merge key by key (as ``helm -f a.yaml -f b.yaml`` does)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge_values(merged[key], value)
            else:
                merged[key] = value
    return merged
