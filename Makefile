# molmoe-gym: `make demo` runs the main job on the embedded default, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo experiments install bench clean

# torch is installed before the project, as a CPU build, so that the project's unpinned `torch`
# requirement is already met and pip does not pull the multi-GB CUDA build (PyPI's Linux torch).
# In order, the first that works:
#   1. torch is importable already: keep it;
#   2. the pinned CPU build torch==$(TORCH_VERSION)+cpu from the configured indexes / wheel folders
#      (PyPI has no `+cpu` builds, so this never pulls CUDA);
#   3. a CPU build from PyTorch's CPU wheel index $(TORCH_CPU_INDEX), the pin or the newest below it;
#   4. whatever pip finds (PyPI: CUDA on Linux), with a line saying so.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# an unreachable index fails in seconds rather than minutes
TORCH_INDEX_OPTS ?= --retries 1 --timeout 20

# the suite runs in TEST_WORKERS processes (pytest-xdist; a test file's tests stay in one process, so its module
# fixtures are built once); TEST_WORKERS=0 runs it in this process. The 15 slowest tests are named: the suite must stay
# under 10 minutes on the 2-core CI machine.
TEST_WORKERS ?= 2

# (re)install when pyproject.toml changes
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null \
	  || $(PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" \
	  || { echo "make: torch==$(TORCH_VERSION)+cpu not found; trying PyTorch's CPU index $(TORCH_CPU_INDEX)"; \
	       $(PY) -m pip install -q $(TORCH_INDEX_OPTS) --index-url $(TORCH_CPU_INDEX) "torch>=2.4,<=$(TORCH_VERSION)"; } \
	  || { echo "make: WARNING: no CPU build of torch found (torch==$(TORCH_VERSION)+cpu, $(TORCH_CPU_INDEX)): falling back to whatever pip finds (on Linux from PyPI, a multi-GB CUDA build)"; \
	       $(PY) -m pip install -q torch; }
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

demo: $(STAMP)
	$(PY) -m experiments.demo --out outputs/demo

# every experiment + report (experiments.pipeline); resumable. CACHE=path for another cache
# (default: the committed live-built cache; EXP_ARGS=--synthetic for the SYNTHETIC one), EXP_ARGS="--quick --seeds 0 1 2 --only ..."
EXP_OUT ?= outputs/experiments
experiments: $(STAMP)
	$(PY) -m experiments.pipeline --out $(EXP_OUT) $(if $(CACHE),--cache $(CACHE)) $(EXP_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf outputs .pytest_cache
