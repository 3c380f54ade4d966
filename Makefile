# Everyday commands. Needs only python3 and make; the virtualenv is created on first use.
#   make run   run the rig with settings.yaml (defaults: everything simulated on this machine)
#   make test  lint and run the test suite
# Extra arguments for `rig run`: make run ARGS="--trials 20 --no-gui"

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?= --trials 300 --speed 25

.PHONY: run test lint bench clean distclean help

help:
	@echo "make run     run a session with settings.yaml (ARGS=\"...\" passes options to rig run)"
	@echo "make test    ruff + pytest (Qt offscreen)"
	@echo "make lint    ruff only"
	@echo "make bench   run every bench/*.py"
	@echo "make clean   remove caches and build files (keeps .venv and data/)"
	@echo "make distclean  also remove .venv"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependencies may have changed.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rig run $(ARGS)

test: export QT_QPA_PLATFORM = offscreen
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	@for f in bench/*.py; do \
		[ -e "$$f" ] || { echo "no benchmarks in bench/"; break; }; \
		echo "== $$f"; \
		$(BIN)/python "$$f" || exit 1; \
	done

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
