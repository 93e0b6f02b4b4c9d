# Every target creates .venv and installs the pinned dependencies on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU torch wheel lies on this disk; pointing pip at it keeps a CUDA build from being pulled.
TORCH_WHEELS ?= /opt/wheels
PIP_FIND := $(if $(wildcard $(TORCH_WHEELS)),--find-links $(TORCH_WHEELS))

# checkov (the manifests' security scan in tests/k8s) lives in its own venv: its pins clash with
# ours (it would downgrade packaging and cachetools).
TOOLS_VENV := .venv-tools
IMAGE_TAG ?= 0.1.0
IMAGE_PREFIX ?=

.PHONY: venv tools demo test lint clean k8s-base images

venv: $(VENV)/.installed

tools: $(TOOLS_VENV)/.installed

$(TOOLS_VENV)/.installed: requirements-tools.lock
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q -r requirements-tools.lock
	$(TOOLS_VENV)/bin/checkov --version
	touch $@

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_FIND) torch==2.13.0
	$(BIN)/pip install -q $(PIP_FIND) -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

demo: venv
	$(BIN)/dimflow run jobs/demo.yaml

test: venv tools
	$(BIN)/python -m pytest -q tests

# Regenerate k8s/base and the GKE overlay's patches from helm/dimflow (tests/k8s checks they match).
k8s-base: venv
	$(BIN)/python k8s/render_base.py

# Container images (needs docker; nothing in the tests builds them), named as the chart's defaults
# (images.cpu/cuda.repository, tag); IMAGE_PREFIX=REGISTRY/PATH/ to push them somewhere.
images:
	docker build -f k8s/Dockerfile -t $(IMAGE_PREFIX)dimflow:$(IMAGE_TAG) .
	docker build -f k8s/Dockerfile.cuda -t $(IMAGE_PREFIX)dimflow-cuda:$(IMAGE_TAG) .

lint: venv
	$(BIN)/ruff check pipeline transforms tests benchmarks k8s
	$(BIN)/ruff format --check pipeline transforms tests benchmarks k8s

clean:
	rm -rf $(VENV) $(TOOLS_VENV) build *.egg-info demo-output demo-apache-output
