# Two commands on a fresh machine: `make serve` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
DATA ?= ../shared/data/celeba_subset
# The bundle `make serve` serves: on CPUs the int8 sibling of models/celeba-64 (`make quantize`), judged as good and
# about half the CPU per face (docs/benchmarks.md); MODEL=models/celeba-64 for float32.
MODEL ?= $(or $(FACEVAE_MODEL),models/celeba-64-int8)

.PHONY: serve test lint bench train card quantize

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Serving needs no TensorFlow: onnxruntime (CPU) only.
$(VENV)/.serve-deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[cpu]"
	touch $@

# Tests also train a tiny model, so they need the training extra.
$(VENV)/.test-deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[cpu,train,dev]"
	touch $@ $(VENV)/.serve-deps

serve: $(VENV)/.serve-deps  ## start the service on the bundled int8 model at http://$(HOST):$(PORT)
	$(PY) -m service --model $(MODEL) --host $(HOST) --port $(PORT)

test: $(VENV)/.test-deps  ## lint, then the whole test suite
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

train: $(VENV)/.test-deps  ## retrain the default bundle from scratch (2-3 hours on 2 CPU cores: the VAE 45-90 min, resumable; the editor and its classifiers 50-70)
	$(PY) -m training train --data $(DATA) --out models/celeba-64 --resume
	$(PY) -m training edits --data $(DATA) --bundle models/celeba-64
	$(PY) -m training card --data $(DATA) --bundle models/celeba-64

quantize: $(VENV)/.test-deps  ## write models/celeba-64-int8 from models/celeba-64 (int8, calibrated; about a minute)
	$(PY) -m training quantize --bundle models/celeba-64 --out models/celeba-64-int8 --data $(DATA)

bench: $(VENV)/.test-deps  ## every benchmark (about 30 min on 2 cores); results in bench/results/, see docs/benchmarks.md
	$(PY) -m bench.bench_service
	$(PY) -m bench.bench_encoding
	$(PY) -m bench.bench_load --sweep
	$(PY) -m bench.bench_cpu
	$(PY) -m bench.bench_training_speed --data $(DATA)
	$(PY) -m bench.bench_quality --train-classifier --model models/celeba-64 --old-bundle-rev fa49e45
	$(PY) -m bench.bench_entanglement --model models/celeba-64
