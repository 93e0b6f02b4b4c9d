# Every target creates .venv and installs the pinned dependencies on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU torch wheel lies on this disk; pointing pip at it keeps a CUDA build from being pulled.
TORCH_WHEELS ?= /opt/wheels
PIP_FIND := $(if $(wildcard $(TORCH_WHEELS)),--find-links $(TORCH_WHEELS))

.PHONY: venv demo test lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_FIND) torch==2.13.0
	$(BIN)/pip install -q $(PIP_FIND) -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

demo: venv
	$(BIN)/dimflow run jobs/demo.yaml

test: venv
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/ruff check pipeline transforms tests benchmarks
	$(BIN)/ruff format --check pipeline transforms tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info demo-output
