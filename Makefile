# Two entry points: `make demo` and `make test`. Both create or refresh .venv first.
# CI pins a local CPU torch with TORCH_SPEC=torch==2.13.0; users get the normal (CUDA) build.
# TORCH_SPEC is repeated with the extras so torchvision resolves to the build matching torch.
comma := ,
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch
EXTRAS ?= dev,farm,learned,triton
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(subst =,_,$(subst /,_,$(TORCH_SPEC)))-$(subst $(comma),_,$(EXTRAS))
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/rna-engine demo --out $(DEMO_OUT)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: venv lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/run.py --suite small

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache .mypy_cache
