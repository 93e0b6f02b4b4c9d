"""End to end on the embedded Beam runner with painter.kind longcat-image-edit: the shared mixed manifest
(edit and text-to-image rows, good and bad) through the tiny LongCat checkpoints, apache-2.0 in provenance."""

from __future__ import annotations

import pytest

from tests.e2e_support import check_kind_end_to_end

pytestmark = pytest.mark.slow


def test_mixed_manifest_through_the_longcat_kind(tmp_path):
    # guidance 4.5: LongCat-Image-Edit's recommendation, the kind's default where the spec sets none
    check_kind_end_to_end(tmp_path / "longcat", "longcat-image-edit", guidance_scale=4.5)
