"""Static checks of the Dockerfiles (nothing here can build them): non-root numeric user matching the
chart, pinned dependencies installed as the Makefile does, model cache on the volume, no secrets."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.k8s import support

DOCKERFILES = ["k8s/Dockerfile", "k8s/Dockerfile.cuda"]


def _instructions(path: str) -> list[str]:
    text = (support.REPO / path).read_text()
    text = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile(path):
    lines = _instructions(path)
    values = support.chart().values["podSecurityContext"]
    users = [line for line in lines if line.startswith("USER ")]
    assert users == [f"USER {values['runAsUser']}:{values['runAsGroup']}"]
    assert lines.index(users[0]) > max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    env = " ".join(line for line in lines if line.startswith("ENV "))
    assert "HF_HOME=/cache/huggingface" in env and "DIMFLOW_CACHE=/cache/dimflow" in env
    runs = [line for line in lines if line.startswith("RUN ")]
    install = next(i for i, line in enumerate(runs) if "torch==2.13.0" in line)
    assert "-r requirements.lock" in runs[install] and runs[install].index("torch==2.13.0") < runs[
        install
    ].index("-r requirements.lock")
    assert any("pip install --no-deps ." in line for line in runs)
    assert 'ENTRYPOINT ["dimflow"]' in lines
    assert 'VOLUME ["/cache"]' in lines
    for line in lines:
        if line.startswith(("ENV ", "ARG ")):
            assert not re.search(r"(API_?KEY|TOKEN|SECRET|PASSWORD)\s*=", line, re.I), line
    assert not any(line.startswith(("COPY .", "ADD ")) and "/" not in line.split()[1] for line in lines)


def test_cuda_image_uses_a_cuda_torch():
    text = (support.REPO / "k8s/Dockerfile.cuda").read_text()
    assert re.search(r"ARG BASE_IMAGE=pytorch/pytorch:2\.13\.0-cuda[\d.]+-cudnn\d+-runtime", text)
    assert "torch.version.cuda" in text


def test_images_match_the_project():
    pyproject = tomllib.loads((support.REPO / "pyproject.toml").read_text())
    # console_main: main with the Ctrl-C / SIGTERM handling
    assert pyproject["project"]["scripts"]["dimflow"] == "pipeline.cli:console_main"
    assert "torch==2.13.0" in pyproject["project"]["dependencies"]
    lock = (support.REPO / "requirements.lock").read_text().splitlines()
    assert lock[1] == "torch==2.13.0"
    values = support.chart().values
    assert (
        values["images"]["cpu"]["tag"] == values["images"]["cuda"]["tag"] == pyproject["project"]["version"]
    )
    assert support.chart().metadata["appVersion"] == pyproject["project"]["version"]


def test_dockerignore_sends_only_the_package():
    lines = [
        line
        for line in (support.REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "requirements.lock", "README.md", "pipeline", "transforms"}
