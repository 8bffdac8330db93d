# One-command set-up on a fresh machine: a local virtual environment in .venv, the package
# installed into it (editable, with the test extras), then the job.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench validate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xtaljax demo --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	$(BIN)/python benchmarks/simulate.py --size small --out benchmarks/results/simulate_cpu.json

validate: $(STAMP)
	$(BIN)/python benchmarks/validate_pymatgen.py --out benchmarks/results/validate_pymatgen.json

clean:
	rm -rf $(VENV) out .pytest_cache
