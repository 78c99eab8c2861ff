# One-word entry points. `make lab` and `make test` set everything up themselves (idempotent).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Jupyter refuses to run as root unless told; containers and CI often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
export D2L_EXT_PRESET ?=

.PHONY: lab test setup unit notebooks lint format export check bench memory clean

lab: setup  ## prepare everything and open JupyterLab on the notebooks
	$(BIN)/jupyter lab $(ROOT_FLAG) notebooks/

test: setup  ## prepare everything, then lint, unit tests and every notebook in the ci preset
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	D2L_EXT_PRESET=ci $(BIN)/pytest tests notebooks --nbval-lax

setup:  ## data set, .venv with torch, d2l (without its pins) and this package
	PYTHON=$(PYTHON) VENV=$(VENV) bash tools/setup.sh

unit: setup
	$(BIN)/pytest tests

notebooks: setup
	D2L_EXT_PRESET=ci $(BIN)/pytest notebooks --nbval-lax

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup  ## fix lint, format, and strip notebook outputs
	$(BIN)/ruff check --fix . ; $(BIN)/ruff format .
	$(BIN)/nbstripout notebooks/*.ipynb

export: setup  ## regenerate d2l_ext's topic modules from the notebooks' #@save cells
	$(BIN)/python tools/export.py

check: setup
	$(BIN)/python tools/export.py --check

bench: setup  ## time to accuracy: the book's settings against the demo preset
	$(BIN)/python benchmarks/time_to_accuracy.py

memory: setup  ## peak memory and wall time of every notebook in the demo preset (Binder's limit)
	$(BIN)/python tools/measure_memory.py

clean:
	rm -rf $(VENV) build
