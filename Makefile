# Everyday tasks. Each target creates .venv and installs the project on first use, at the
# exact versions of constraints.txt (`make lock` refreshes it; `make test-latest` tries the
# newest versions in .venv-latest).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := constraints.txt
LATEST := .venv-latest

.PHONY: demo test lint format bench clean gpu-wheels lock test-latest

# The build tools come from the lock too (no build isolation), so that a new setuptools
# cannot change how the editable install maps smash.* onto the folders.
$(STAMP): pyproject.toml $(LOCK)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) pip setuptools wheel
	$(BIN)/pip install --quiet --no-build-isolation -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m smash.train.demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_store_layout.py
	$(BIN)/python benchmarks/bench_sentence_split.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_teacher_pass.py
	$(BIN)/python benchmarks/bench_kernel.py --device cpu
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_trainer.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_target_fidelity.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_fewshot.py

clean:
	rm -rf $(VENV) $(LATEST) demo-out demo-t5 benchmarks/out

# Resolve the newest versions pyproject.toml allows and write them to constraints.txt.
lock: $(STAMP)
	$(BIN)/python .ci/lock.py

# The test suite against the newest resolvable versions, in a fresh .venv-latest; it prints
# where they differ from the lock and keeps them in .venv-latest/versions.txt.
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip setuptools wheel
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/python .ci/lock.py --compare
	$(LATEST)/bin/python -m pytest -q tests

# Wheels the GPU machine lacks (Python 3.12, x86_64), for benchmarks/gpu_check.sh.
# DeepSpeed ships only a source archive: build its (pure-Python, JIT-ops) wheel here.
GPU_WHEELS := webdataset==1.0.2 braceexpand==0.1.7 zstandard==0.25.0 \
	torchdata==0.11.0 hjson==3.1.0 pydantic==2.12.5 pydantic-core==2.41.5 \
	annotated-types==0.7.0 typing-inspection==0.4.2
gpu-wheels:
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
		-d .whl $(GPU_WHEELS)
	$(PY) -m pip wheel --no-deps -w .whl deepspeed==0.19.8
