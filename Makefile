# gan-suite: `make help` lists the targets.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NAME   ?= cyclegan
PRESET ?= quick
DATA   ?=
RUNS   ?=
DATASET ?=
TEST_WORKERS ?= 2
# the base YAML is the paper; a preset adds experiments/presets/<PRESET>.yaml and, when it
# exists, experiments/presets/<PRESET>/<NAME>.yaml (the paper-specific part of the preset)
PRESET_FILES := $(wildcard experiments/presets/$(PRESET).yaml) $(wildcard experiments/presets/$(PRESET)/$(NAME).yaml)
# DATASET=digits|textures|faces: the paper on an embedded real dataset, layered last
DATASET_FILE := $(if $(DATASET),experiments/datasets/$(DATASET)/$(NAME).yaml)
CONFIGS := --config experiments/$(NAME).yaml $(addprefix --config ,$(PRESET_FILES) $(DATASET_FILE))

.PHONY: help install test lint format experiment translate compare bench sweep clean
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'
	@echo "  variables: NAME=$(NAME) PRESET=$(PRESET) DATA=<dataset root> DATASET=<digits|textures|faces> RUNS=<run dirs>"

install: $(STAMP) ## create .venv with torch 2.14.1 and the project (editable, dev extra); once

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,data]'
	touch $(STAMP)

test: install ## run the test suite (CPU, 2 pytest-xdist workers, < 10 min on 2 cores)
	$(PY) -m pytest -n $(TEST_WORKERS)

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

experiment: install ## train NAME with PRESET (quick: embedded data, <= 5 min CPU); DATA=root for real data; DATASET=digits|textures|faces
	@test -f experiments/$(NAME).yaml || { echo "unknown NAME=$(NAME); papers: $$(cd experiments && ls *.yaml | sed 's/.yaml//' | tr '\n' ' ')"; exit 2; }
	@test -z "$(DATASET)" || test -f "$(DATASET_FILE)" || { echo "no $(DATASET_FILE): DATASET=$(DATASET) is set up for NAME=$$(ls experiments/datasets/$(DATASET) 2>/dev/null | sed 's/.yaml//' | tr '\n' ' ') (datasets: $$(ls experiments/datasets | tr '\n' ' '))"; exit 2; }
	$(VENV)/bin/gan-suite fit $(CONFIGS) $(if $(DATA),--data.data_dir $(DATA))

translate: install ## translate a folder: make translate NAME=cyclegan INPUT=dir [CKPT=...] [DIRECTION=BtoA] [OUT=dir]
	@test -n "$(INPUT)$(LABELS)" || { echo "INPUT=<folder or image> is required (cGAN: LABELS=0,1,2)"; exit 2; }
	@# CKPT defaults to the newest runs/$(NAME)/*/checkpoints/last.ckpt
	@ckpt="$(CKPT)"; test -n "$$ckpt" || ckpt=$$(ls -t runs/$(NAME)/*/checkpoints/last.ckpt 2>/dev/null | head -1); \
	test -n "$$ckpt" || { echo "no runs/$(NAME)/*/checkpoints/last.ckpt: give CKPT=<checkpoint> (or train: make experiment NAME=$(NAME))"; exit 2; }; \
	set -x; $(VENV)/bin/gan-suite predict --ckpt_path "$$ckpt" $(if $(INPUT),--input "$(INPUT)") \
	  $(if $(DIRECTION),--direction $(DIRECTION)) $(if $(OUT),--out "$(OUT)") $(if $(SIZE),--size $(SIZE)) \
	  $(if $(ATTRIBUTES),--attributes "$(ATTRIBUTES)") $(if $(LABELS),--labels $(LABELS))

compare: install ## side-by-side metrics of finished runs: make compare RUNS="runs/a/x runs/b/y"
	$(VENV)/bin/gan-suite compare $(RUNS)

bench: install ## speed/memory benchmarks (prints figures; all sections with their defaults: well over half an hour); BENCH="train --papers cyclegan" runs a part
	$(PY) -m gan_suite.bench $(BENCH)

sweep: install ## W&B sweep of NAME (experiments/sweeps/NAME.yaml) + an agent here (COUNT=runs; `wandb login` first); DRY_RUN=1: 2 sampled runs, offline
	$(PY) -m gan_suite.sweep $(if $(DRY_RUN),dry-run,start $(if $(COUNT),--count $(COUNT))) $(NAME)

clean: ## remove caches (never runs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
