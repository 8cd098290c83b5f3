# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test bench demo lint prior eval-prior eval-world pipelines images push images-test clean

# On a shared CPU, waiting OpenMP threads spin and slow everything 5-20x; let them sleep.
export OMP_WAIT_POLICY ?= PASSIVE

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to the CPU build (2.13.0) for development; GPU images install their own.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks

demo: install
	$(PY) -m pipelines.demo $(DEMO_ARGS)

lint: install
	$(VENV)/bin/ruff check dreamfusion tests benchmarks components pipelines

# Recompile the committed pipeline YAML (a test fails if it is stale).
pipelines: install
	$(PY) -m pipelines.compile

prior: install
	$(PY) -m dreamfusion.prior.train

eval-prior: install
	$(PY) -m dreamfusion.prior.evaluate --eta 1 --guidance 3 --t-start 999
	$(PY) -m dreamfusion.prior.evaluate_3d
	$(PY) -m dreamfusion.prior.evaluate_dmtet --card

# All 30 prompts of the shapes world through make demo's stages (about 35-50 min on 2 cores; resumable)
eval-world: install
	$(PY) -m dreamfusion.prior.evaluate_world --card

# Container images (images/cpu, images/gpu), tagged REGISTRY/dreamfusion-KIND:<package version>,
# built with docker, podman or buildah, whichever is here (images/build.sh lists its settings:
# BASE, TORCH_INDEX, WHEELS, PIP_CA, ENGINE). KIND=cpu or KIND=gpu builds one.
KIND ?= all
images:
	images/build.sh build $(KIND)

push:
	images/build.sh push $(KIND)

# Build the CPU image here from a Debian base made with debootstrap (no registry needed) and run
# the compiled pipeline's prompt-expansion and nerf-sds tasks in it (root, buildah, debootstrap).
images-test: install
	$(PY) -m pytest -q -s -m images tests/test_images.py

clean:
	rm -rf outputs .pytest_cache
