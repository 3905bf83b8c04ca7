# Two commands: `make run` (the whole workflow) and `make test` (the test suite).
# Both create .venv with Python 3.11+ and install this package into it, at the versions pinned in
# requirements.lock (`make lock` writes it anew; pyproject.toml keeps the ranges).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
SNAKEMAKE_ARGS ?=

.PHONY: run report test test-fast bench bench-gpu docs lint lock clean

$(BIN)/dyn: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e ".[test,slurm]"
	touch $@

# Pin every package anew at what pip resolves today (then run `make test`).
lock: $(BIN)/dyn
	$(BIN)/python tools/lock.py

run: $(BIN)/dyn
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

# One HTML page with Table 1 and every figure (after `make run`).
report: $(BIN)/dyn
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --report results/report.html $(SNAKEMAKE_ARGS)

# Two workers, one test file each at a time: the Slurm test spends most of its time waiting on the
# scheduler, and the other files run meanwhile.
test: $(BIN)/dyn
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -n 2 --dist loadfile

test-fast: $(BIN)/dyn
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m "not e2e"

bench: $(BIN)/dyn
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/bench.py
	$(BIN)/python tools/docs.py

# The docs' measured tables, written anew from results/ (after `make run` and `make bench`).
docs: $(BIN)/dyn
	$(BIN)/python tools/docs.py

bench-gpu: $(BIN)/dyn
	$(BIN)/python benchmarks/bench_gpu.py --compile

lint: $(BIN)/dyn
	$(BIN)/snakemake --lint

clean:
	rm -rf results resources .snakemake
