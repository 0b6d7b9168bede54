# PixArt-Lab: `make repro` runs the embedded curriculum, `make test` runs the tests.
# Both create .venv and install what is missing (torch/torchvision pinned by constraints.txt).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export WANDB_SILENT ?= true
export PYTHONUNBUFFERED := 1

.PHONY: install repro test test-all clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## The main job: rebuild the corpus that data.dvc tracks (offline, deterministic), then the pipeline.
repro: $(STAMP)
	python -m pixart_lab.cli.corpus
	dvc repro

## The default test suite (fast); `make test-all` includes the slow tests.
test: $(STAMP)
	python -m pytest

test-all: $(STAMP)
	python -m pytest -m ''

clean:
	rm -rf logs wandb outputs .pytest_cache
