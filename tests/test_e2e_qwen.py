"""End to end on the embedded Beam runner with painter.kind qwen-image-edit: the shared mixed manifest (edit
and text-to-image rows, good and bad) through the tiny Qwen checkpoints."""

from __future__ import annotations

import pytest

from tests.e2e_support import check_kind_end_to_end

pytestmark = pytest.mark.slow


def test_mixed_manifest_through_the_qwen_kind(tmp_path):
    check_kind_end_to_end(tmp_path / "qwen", "qwen-image-edit", guidance_scale=4.0)  # the kind's default
