# wan2: `make demo` installs and runs the whole chain; `make test` installs and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export WANDB_MODE ?= offline

.PHONY: install demo test test-slow test-gpu test-slurm bench eval lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

demo: install
	$(PY) scripts/demo.py $(if $(from_scratch),--from-scratch,)

test: install
	$(VENV)/bin/pytest -q -m "not slow" -n 2 --dist loadfile

test-slow: install
	$(VENV)/bin/pytest -q -m slow

test-gpu: install  # the GPU-marked tests (a torch with CUDA in the venv): block swap, offload, memory vs plan
	$(VENV)/bin/pytest -q -m gpu -p no:xdist -rA tests

test-slurm: install  # a real one-node SLURM cluster (as root: installs Debian's slurm-wlm and munge once)
	command -v slurmctld >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq slurmctld slurmd slurm-client munge)
	$(VENV)/bin/pytest -q tests/test_slurm_live.py

bench: install
	$(PY) scripts/bench.py --out outputs/bench.json

eval: install  # make eval args='ckpt=EXPORT num_videos=96'
	$(PY) evaluate.py $(args)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf outputs data/cache data/shards
