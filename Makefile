# vidpipe: `make demo` and `make test` do all set-up on a fresh machine.
#
# The virtual environment lives in .venv. PyTorch is installed first and only if missing:
#   - on a machine with a local CPU wheel or a CUDA GPU, `pip install torch==$(TORCH_VERSION)` does the right thing;
#   - on a CPU-only machine without one, `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu`
#     avoids downloading gigabytes of CUDA libraries.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
DEMO_OUT ?= outputs/demo

.PHONY: install test demo lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif [ -n "$(TORCH_INDEX)" ]; then \
		$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) "torch==$(TORCH_VERSION)"; \
	else \
		$(PY) -m pip install --quiet --prefer-binary "torch==$(TORCH_VERSION)"; \
	fi
	@# NOTE: uv resolves and installs the rest in about 30 s where pip takes 80 (torch, already there, is kept);
	@# pip does it if uv cannot be had.
	($(PY) -m pip install --quiet uv && $(VENV)/bin/uv pip install --quiet --python $(PY) --compile-bytecode -e ".[dev]") \
		|| $(PY) -m pip install --quiet --prefer-binary -e ".[dev]"
	touch $@

# NOTE: two pytest workers, one test file each at a time (module fixtures such as a warm server stay with their
# file): the suite is mostly CPU-bound, but a serial run leaves a core idle about 28 % of the time (servers starting,
# leases running out, processes stopping), and two workers took it from 560 s to 445 s here. The longest files run
# first (tests/conftest.py LONGEST_FIRST; xdist would otherwise order files by their number of tests). `make test PYTEST_ARGS="-n 0"` runs it in one process.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/vidpipe simulate --gpus 4 --strategy pp --steps 28 --samples 12 --step-ms 20 --device cpu \
		--json $(DEMO_OUT)/simulate.json
	$(VENV)/bin/vidpipe generate examples/sunset.png --model tiny --gpus 2 --strategy pp --samples 2 \
		--steps 8 --frames 8 --height 64 --width 96 --device cpu --format mp4,gif --overwrite \
		--out $(DEMO_OUT) --json $(DEMO_OUT)/generate.json
	@echo
	@echo "simulate report: $(DEMO_OUT)/simulate.json"
	@echo "videos:          $$(ls $(DEMO_OUT)/*.mp4 | tr '\n' ' ')"
	@echo "generate report: $(DEMO_OUT)/generate.json"

lint: install
	$(VENV)/bin/ruff check vidpipe tests

format: install
	$(VENV)/bin/ruff format vidpipe tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs
