PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

README_SURFACES := bowl rosenbrock himmelblau saddle

.PHONY: install test regress baselines bench figures headline clean

install: $(BIN)/optbench

$(BIN)/optbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

test: install
	MPLBACKEND=Agg $(BIN)/python -m pytest -q
	$(BIN)/optbench regress
	$(BIN)/optbench bench --quick

# Time the training step beside PyTorch (when importable) and the machine's bounds;
# benchmarks/RESULTS.md records what it gave.
bench: install
	$(BIN)/optbench bench

# The convergence numbers of benchmarks/suites/ against their committed baselines.
regress: install
	$(BIN)/optbench regress

# Rewrite the baselines after an intended change (review the diff before committing it).
baselines: install
	$(BIN)/optbench regress --update

# Redraw the pictures the README shows (the only results committed, under docs/img/).
figures: install
	$(BIN)/optbench surface --opt all $(addprefix --fn ,$(README_SURFACES)) --out results --quiet
	mkdir -p docs/img
	for s in $(README_SURFACES); do cp results/surface/$$s/trajectories.png docs/img/$$s.png; done
	$(BIN)/optbench surface --opt sgd --opt momentum --opt adam --opt lion --opt sf_adamw --fn double_well \
		--starts grid:9 --no-trajectories --out results/robustness --quiet
	cp results/robustness/surface/double_well/robustness.png docs/img/robustness_double_well.png
	$(BIN)/optbench mnist --compare all --name readme --out results --quiet
	cp results/mnist/readme/loss.png docs/img/mnist_loss.png
	cp results/mnist/readme/accuracy.png docs/img/mnist_accuracy.png
	$(BIN)/optbench mnist --compare all --seeds 5 --name readme-seeds --out results --quiet
	cp results/mnist/readme-seeds/accuracy.png docs/img/mnist_seeds_accuracy.png

# The README's headline result: the performance profile over the problem set (every surface with
# a minimum from 5 x 5 starts, MNIST and Fashion-MNIST with 5 seeds, tuned lrs) and its tables.
# About an hour on 2 cores.
headline: install
	$(BIN)/optbench profile --out results/headline --quiet
	cp results/headline/profile-set/profile/profile.png docs/img/profile_headline.png
	$(BIN)/python benchmarks/headline_tables.py results/headline/profile-set

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
