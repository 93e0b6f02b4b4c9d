"""Shared test setup: nothing may reach the network, and caches live in a per-session folder."""

from __future__ import annotations

import os
import tempfile

# Set before anything imports huggingface_hub / transformers, and inherited by Beam worker processes.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("DIMFLOW_CACHE", tempfile.mkdtemp(prefix="dimflow-test-cache-"))

import pytest  # noqa: E402

from tests.fakes.gcs import gcs_emulator  # noqa: E402


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """One gcp-storage-emulator on 127.0.0.1 for the session; its env is set in os.environ meanwhile."""
    with gcs_emulator(tmp_path_factory.mktemp("gcs")) as env:
        yield env
