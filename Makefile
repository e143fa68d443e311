# The two set-up commands of the README: `make demo` runs the main job, `make test` the whole suite.
# Both create .venv/ on first use and reinstall when setup.cfg changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Many fake CPU devices for the sharding tests; harmless for the rest. The hub is never reached: every
# checkpoint and tokenizer in the tests is written locally first.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 \
	TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/distil demo --workdir runs/demo

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

# The performance benchmarks of experiments/PERFORMANCE.md, one after another (~30 min on 2 CPU cores); each writes
# runs/bench/NAME.json and its printed tables to runs/bench/NAME.md.
BENCHES := step inference input_vs_step scaling precision
bench: $(STAMP)
	mkdir -p runs/bench
	for name in $(BENCHES); do \
		JAX_PLATFORMS=cpu $(BIN)/distil bench $$name --out runs/bench/$$name.json | tee runs/bench/$$name.md || exit 1; \
	done

clean:
	rm -rf $(VENV) runs .pytest_cache
