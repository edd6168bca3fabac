# bcnb's two commands on a fresh machine with Python 3.11 (see README.md):
#   make demo    set up .venv, then run notebooks 01-04 and 06 headless on the built-in dataset
#   make test    set up .venv, then lint and run the whole test suite (what CI runs)
#   make check   the fast loop while working: lint, then every test not marked slow
# and, for the course:
#   make lab     open the notebooks in JupyterLab
#   make book    the course as a static HTML site from a run's executed notebooks (RUN=runs/demo)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# JupyterLab refuses to run as root (as in containers and CI) unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup demo test check lab book clean

# The stamp is rebuilt whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,book]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/bcnb reproduce --out runs/demo --config configs/demo.yaml

# nbval runs every notebook at its defaults except 05, which trains five backbones at 224x224
# (about 4.5 minutes on 2 cores, VGG19 alone 2.5); tests/test_notebooks.py runs 05 through
# papermill instead, small, and checks its tables.
# One pytest process per core and one more, at most four (each holds its own TensorFlow): much
# of a test's time is spent waiting for a kernel or a command it started, and the extra process
# works meanwhile (on 2 cores, the CPUs busy 183% of the time with three, 171% with two: the
# suite 590 s against 639 s). Which tests share a process is decided in tests/conftest.py.
PYTEST_PROCESSES := -n $(shell $(PYTHON) -c "import os; print(min((os.cpu_count() or 1) + 1, 4))") \
	--dist loadfile --no-loadscope-reorder
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_PROCESSES) tests notebooks --nbval-lax --ignore=notebooks/05_compare_backbones.ipynb

check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_PROCESSES) -m "not slow" tests

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG)

# The course as a book: docs/course.md, the run's executed notebooks (make demo first, or
# RUN=runs/x for another run), data_instructions.md and the README, in build/book/html.
RUN ?= runs/demo
book: setup
	$(BIN)/python scripts/build_book.py --run $(RUN) --out build/book

clean:
	rm -rf $(VENV) runs
