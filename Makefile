# gan-suite: `make help` lists the targets.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NAME   ?= cyclegan
PRESET ?= quick
DATA   ?=
RUNS   ?=
# the base YAML is the paper; a preset adds experiments/presets/<PRESET>.yaml and, when it
# exists, experiments/presets/<PRESET>/<NAME>.yaml (the paper-specific part of the preset)
PRESET_FILES := $(wildcard experiments/presets/$(PRESET).yaml) $(wildcard experiments/presets/$(PRESET)/$(NAME).yaml)
CONFIGS := --config experiments/$(NAME).yaml $(addprefix --config ,$(PRESET_FILES))

.PHONY: help install test lint format experiment compare bench sweep clean
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'
	@echo "  variables: NAME=$(NAME) PRESET=$(PRESET) DATA=<dataset root> RUNS=<run dirs>"

install: $(STAMP) ## create .venv with torch 2.14.1 and the project (editable, dev extra); once

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install ## run the test suite (CPU, < 10 min on 2 cores)
	$(PY) -m pytest

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

experiment: install ## train NAME with PRESET (quick: embedded data, <= 5 min CPU); DATA=root for real data
	$(VENV)/bin/gan-suite fit $(CONFIGS) $(if $(DATA),--data.data_dir $(DATA))

compare: install ## side-by-side metrics of finished runs: make compare RUNS="runs/a/x runs/b/y"
	$(VENV)/bin/gan-suite compare $(RUNS)

bench: install ## speed/memory benchmarks (prints figures)
	$(PY) -m gan_suite.bench

sweep: install ## create a W&B sweep for NAME (needs `wandb login`), then run `wandb agent <id>`
	$(VENV)/bin/wandb sweep experiments/sweeps/$(NAME).yaml

clean: ## remove caches (never runs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
