# The two commands of the README: `make run` and `make test`. Both create .venv when missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test test-fast lint package package-gpu clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[onnx,litert]"
	touch $@

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e ".[test,cluster,onnx,litert]"
	touch $@

run: $(STAMP)
	$(BIN)/bottleneck-studio

lint: $(TEST_STAMP)
	$(BIN)/ruff check app tests benchmarks
	$(BIN)/lint-imports

test: $(TEST_STAMP)
	$(BIN)/lint-imports
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q --durations=10

# the inner loop: the tests not marked slow (real backbones, CLI subprocesses) or ray; make
# test runs them all (CI)
test-fast: $(TEST_STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m "not slow and not ray" --durations=10

package: $(STAMP)
	bash packaging/build.sh

# the GPU build (full TensorFlow + its CUDA runtime, ~3.2 GB .deb), then its check: not in CI
# (it downloads ~3 GB of CUDA wheels); run it before a change to packaging lands
package-gpu: $(STAMP)
	TF_VARIANT=gpu bash packaging/build.sh
	bash packaging/check_deb.sh dist/gpu/bottleneck-studio-gpu_$$($(BIN)/python packaging/project.py version)_$$(dpkg --print-architecture).deb

clean:
	rm -rf build dist $(VENV)
