# One-word entry points. `make lab` and `make test` set everything up themselves (idempotent); the
# day-to-day targets below them need only the .venv that `make setup` made, and start at once.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Jupyter refuses to run as root unless told; containers and CI often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
export D2L_EXT_PRESET ?=
# Matplotlib's font cache of our own: the shared one in ~/.cache/matplotlib is written by whichever
# install runs first, and one written by an install whose fonts were gone made every figure with
# mathtext (a log axis) print 21 findfont warnings here, a slide's worth of stderr.
export MPLCONFIGDIR ?= $(CURDIR)/build/matplotlib
# Every test tier runs in the ci preset, as `make test` (and CI) runs it, with a run cache of its own.
# `make test` empties it first, so each run trains afresh once (the first tier that asks for it: the
# browser test, which also measures the memory of that training) and later tiers replay that run;
# the key (d2l_ext/runs.py) holds the code, so an edit between two tiers can never replay stale runs.
TEST_RUNS := $(CURDIR)/build/test-runs
PYTEST := D2L_EXT_PRESET=ci D2L_EXT_RUNS=$(TEST_RUNS) $(BIN)/pytest
LINT := $(BIN)/ruff check . && $(BIN)/ruff format --check .
CHECK := $(BIN)/python tools/export.py --check && $(BIN)/python tools/exercises.py --check && \
	$(BIN)/python tools/slides.py --check

.PHONY: help lab test setup venv unit notebooks browser binder site lint format export check hooks bench gpu-check slides warm memory exercises html lock clean

help:  ## list the targets
	@awk -F ':.*## ' '/^[a-z-]+:.*## /{printf "  make %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

lab: setup  ## prepare everything and open JupyterLab on the notebooks
	$(BIN)/jupyter lab $(ROOT_FLAG) notebooks/

# In `make test` the lecture notebooks run top to bottom in the browser tier (JupyterLab, a fresh
# session's empty run cache, any error output fails) and again in the site's build (replayed); nbval would be a third
# run of the same cells, so here it runs the solutions only (`make notebooks` runs both).
test: setup  ## prepare everything, then lint, the export check and every tier (what CI runs)
	$(LINT)
	$(CHECK)
	rm -rf $(TEST_RUNS)
	$(PYTEST) tests $(wildcard solutions) --nbval-lax

setup:  ## data set, .venv with exactly the lock (requirements.txt), d2l without its pins, this package
	PYTHON=$(PYTHON) VENV=$(VENV) bash tools/setup.sh

venv:
	@test -x $(BIN)/python -a -x $(BIN)/ruff -a -x $(BIN)/pytest || \
		{ echo "$(VENV) is missing or has no test tools: run \`make setup\` first." >&2; exit 1; }

unit: venv  ## the fast tier: d2l_ext, the exporter, the repository (under a minute)
	$(PYTEST) tests -m unit

notebooks: venv  ## every notebook and the exercises' solutions under nbval (ci preset); a section alone
	$(PYTEST) notebooks $(wildcard solutions) tests/test_sections_run.py --nbval-lax

browser: venv  ## the notebooks in JupyterLab in headless Chromium (tests/test_lab_e2e.py)
	$(PYTEST) tests -m browser

binder: venv  ## the Binder recipe from the real repo2docker (tests/test_binder.py)
	$(PYTEST) tests -m binder

site: venv  ## the course website built in the ci preset and read in Chromium (tests/test_site.py)
	$(PYTEST) tests -m site

lint: venv  ## ruff check and format check, code and notebooks
	$(LINT)

format: venv  ## fix lint, format, strip notebook outputs, and write the notebooks' slide metadata
	$(BIN)/ruff check --fix . ; $(BIN)/ruff format .
	$(BIN)/nbstripout --keep-id notebooks/*.ipynb $(wildcard solutions/*.ipynb)
	$(BIN)/python tools/slides.py

export: venv  ## regenerate d2l_ext's topic modules from the notebooks' #@save cells
	$(BIN)/python tools/export.py

exercises: venv  ## regenerate exercises/ (students' notebooks and checks) from solutions/
	$(BIN)/python tools/exercises.py

check: venv  ## fail when the topic modules, exercises/ or slide metadata differ from what their sources give
	$(CHECK)

hooks: venv  ## install the git pre-commit hook (.pre-commit-config.yaml) in this clone
	$(BIN)/pre-commit install

bench: setup  ## time to accuracy: the book's settings against the demo preset
	$(BIN)/python benchmarks/time_to_accuracy.py

gpu-check: setup  ## the full preset (the book's settings) of every lecture training, on a CUDA GPU
	$(BIN)/python benchmarks/full_preset.py

slides: setup  ## the notebooks as static reveal.js slides, executed under the preset in force, in build/slides/
	$(BIN)/python tools/slides.py --check
	$(BIN)/jupyter nbconvert --to slides --execute --ExecutePreprocessor.timeout=3600 \
		--SlidesExporter.reveal_scroll=True --output-dir build/slides notebooks/[0-9][0-9]_*.ipynb

warm: setup  ## before the lecture: train every run of the notebooks into the run cache (preset in force)
	$(BIN)/python tools/warm.py

html: setup  ## the course website (Jupyter Book): every notebook executed (demo preset), in build/html/
	$(BIN)/python tools/site.py build

lock: venv  ## resolve pyproject.toml anew (uv): requirements.txt and binder/requirements.txt; then `make setup`
	$(BIN)/python tools/lock.py

memory: setup  ## peak memory and wall time of every notebook in the demo preset (Binder's limit)
	$(BIN)/python tools/warm.py --memory --preset demo --record build/memory/demo.json

clean:
	rm -rf $(VENV) build
