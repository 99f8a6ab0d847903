PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test surfaces clean

install: $(BIN)/optbench

$(BIN)/optbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

test: install
	MPLBACKEND=Agg $(BIN)/python -m pytest -q

# Redraw the pictures the README shows (committed under docs/).
figures: install
	MPLBACKEND=Agg $(BIN)/optbench surface --opt all --fn all --out results/readme --quiet

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
