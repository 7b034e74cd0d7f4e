# Two commands for a newcomer:
#   make book   build the rendered book (executes every notebook) into _build/html
#   make test   the full test suite CI runs: unit tests and doctests, nbval over every notebook
#               in _toc.yml, the book built from nbval's run, and the browser test of the built pages
# Both create the virtual environment .venv from the pinned requirements on first use.
# Environment: CONGEAL_DATA (data folder), CONGEAL_MODE (quick|full, default quick).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# nbval's run of each notebook, kept for the book build of `make test` (book/conftest.py)
EXECUTED = _build/executed-notebooks
export CONGEAL_MODE ?= quick
export PYTHONUNBUFFERED = 1

.PHONY: book tested-book test unit fast notebooks browser env clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

book/_static/vendor/mathjax/tex-mml-chtml.js: book/tools/fetch_vendor_js.py | env
	$(BIN)/python book/tools/fetch_vendor_js.py

# One torch thread, as nbval's kernels run: the pages then show exactly the numbers the notebook
# tests checked (a float reduction's result can depend on the thread count). The notebooks are
# executed one per core into a fresh cache first, then rendered (book/tools/execute_notebooks.py).
book: env book/_static/vendor/mathjax/tex-mml-chtml.js
	OMP_NUM_THREADS=1 $(BIN)/python book/tools/execute_notebooks.py --warningiserror --keep-going

# The same build from the notebooks as `make notebooks` (nbval) has just executed them, each kept
# with its outputs and widget state: `make test` runs every notebook once, and its pages show the
# run the notebook tests checked.
tested-book: env book/_static/vendor/mathjax/tex-mml-chtml.js
	$(BIN)/python book/tools/execute_notebooks.py --executed $(EXECUTED) --warningiserror --keep-going

unit: env
	OMP_NUM_THREADS=1 $(BIN)/pytest -m "not browser" -q -n 2

# The developer loop: no real data, no backbones (tests marked slow, see tests/conftest.py). CI runs unit.
fast: env
	$(BIN)/pytest -m "not browser and not slow" -q

# Two notebooks at a time (pytest-xdist, a notebook stays on one worker), one thread each: two
# kernels with two threads each would fight for a 2-core machine's cores. The slowest notebooks go
# first (in the order given, not xdist's own), so the two workers finish close together. The per-cell
# limit is _config.yml's (an hour: Chapter 7's longest cell waits about 10 minutes for its CUB runs here).
# Each notebook that passes is also written to $(EXECUTED), with its outputs, for tested-book. The
# five slowest cells are listed at the end: the longest must stay well inside the per-cell limit.
notebooks: env
	OMP_NUM_THREADS=1 $(BIN)/pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=3600 -n 2 --dist loadfile --no-loadscope-reorder --durations=5 --executed-notebooks $(EXECUTED) $$($(BIN)/python tests/toc_notebooks.py --longest-first)

browser: env
	$(BIN)/pytest -m browser -q

test: unit notebooks tested-book browser

clean:
	rm -rf _build
