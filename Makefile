# snaketune: `make demo` runs the demo experiment end to end; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.snaketune-installed
DEMO := examples/demo
export HF_HUB_OFFLINE := 1

.PHONY: venv demo test test-full crash-sweep lint format clean-demo bench

venv: $(STAMP)

# torch first, pinned: anything that pulls an unpinned torch would fetch a multi-GB CUDA build.
$(STAMP): requirements.lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: venv
	$(PY) -m snaketune demo --dest $(DEMO)
	$(VENV)/bin/snakemake --config experiment=$(DEMO)/experiment_summary.md
	$(PY) -m snaketune results $(DEMO)

test: venv lint
	$(VENV)/bin/pytest -q

# `make test-full`: the tests CI leaves out (pytest marker `full`): full-size Qwen2.5-0.5B-Instruct, a
# full-size Llama-3.2-1B resume and both families' parity (README: Supported models; BENCHMARKS.md).
test-full: venv
	$(VENV)/bin/pytest -q -m full

# `make crash-sweep`: the workflow killed at every job start and end (and every save and record in
# between) while the experiment changes, each rerun compared with the uninterrupted result
# (tests/test_crash_sweep.py, pytest marker `sweep`; ~25 min on 2 cores; figures in BENCHMARKS.md).
crash-sweep: venv
	$(VENV)/bin/pytest -q -m sweep --durations=0

lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/snakefmt --check Snakefile workflow
	$(VENV)/bin/snakemake --lint --config experiment=$(DEMO)/experiment_summary.md

format: venv
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/snakefmt Snakefile workflow

# `make bench`: planning, per-job and Slurm figures against their anchors (BENCHMARKS.md). Takes
# ~15 min; the Slurm part needs root (it starts scripts/slurm-sandbox if down, stops it after).
bench: venv
	$(PY) benchmarks/bench_plan.py
	$(PY) benchmarks/bench_jobs.py
	$(PY) benchmarks/bench_evaluations.py
	$(PY) benchmarks/bench_step_state.py
	$(PY) benchmarks/bench_slurm.py
	$(PY) benchmarks/bench_slurm_scale.py

clean-demo:
	rm -rf $(DEMO)/models $(DEMO)/data $(DEMO)/ck-outputs $(DEMO)/results $(DEMO)/logs $(DEMO)/.snaketune $(DEMO)/.snakemake $(DEMO)/run-experiment.log
	find $(DEMO) -mindepth 1 -maxdepth 1 -type d -exec test -e '{}/setup_finetune.yaml' ';' -exec rm -rf '{}' +

# `make demo-slurm`: the demo on a throw-away local Slurm cluster (scripts/slurm-sandbox, needs
# root), submitted through `--profile profiles/slurm` (+ the sandbox overlay: fast polling, the
# sandbox's account/partition, jobs sized for its 2-CPU node). It runs in a copy of the demo
# (examples/demo-slurm), started afresh each time, so its results come from Slurm, not from a
# `make demo` run. The sandbox is stopped afterwards, also when the run fails or is interrupted.
DEMO_SLURM := examples/demo-slurm
.PHONY: demo-slurm
demo-slurm: venv
	$(PY) -m snaketune demo --dest $(DEMO)
	rm -rf $(DEMO_SLURM)
	mkdir -p $(DEMO_SLURM)
	cp -a $(DEMO)/experiment_summary.md $(DEMO)/models $(DEMO)/data $(DEMO_SLURM)/
	trap 'scripts/slurm-sandbox stop' EXIT; trap 'exit 130' INT TERM; \
	scripts/slurm-sandbox start && \
	$(VENV)/bin/snakemake --profile profiles/slurm --profile profiles/slurm-sandbox \
	  --config experiment=$(CURDIR)/$(DEMO_SLURM)/experiment_summary.md && \
	$(PY) -m snaketune results $(DEMO_SLURM)
