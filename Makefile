# make setup: a virtual environment in .venv with CPU torch first (so nothing pulls a CUDA build),
#             then genbound with its test and optional libraries, then the Debian data packages.
# make demo:  pretrain the MLP on Fashion-MNIST, fine-tune it on MNIST-5k with lora, cla, rcla and c3la,
#             then compute their bounds (paper, Theorem 1, compression).
# make test:  the CPU test suite (slow and GPU tests are marked and skipped).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
DEBS   := wordnet-base dataset-fashion-mnist
DEMO   ?= runs/demo

.PHONY: setup data demo test lint clean-demo

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

demo: setup
	test -f $(DEMO)/base-mlp/genbound-base.json || $(BIN)/genbound pretrain --model mlp --data fashion-mnist \
	    --hidden 256 256 --epochs 2 --batch-size 128 --lr 2e-3 --quiet --out $(DEMO)/base-mlp
	@for m in lora cla rcla c3la; do \
	  k=1; [ $$m = c3la ] && k=3; \
	  test -f $(DEMO)/$$m/genbound.json || $(BIN)/genbound train --model $(DEMO)/base-mlp --data mnist-5k \
	    --method $$m --rank 8 --alpha 16 --chain $$k --epochs 5 --batch-size 64 --lr 3e-3 --quiet \
	    --out $(DEMO)/$$m || exit 1; \
	done
	@echo; echo "fine-tuned on mnist-5k from the self-pretrained MLP ($(DEMO)):"
	@for m in lora cla rcla c3la; do $(BIN)/genbound info --ckpt $(DEMO)/$$m; done
	@for m in lora cla c3la; do echo; $(BIN)/genbound compute --ckpt $(DEMO)/$$m --loss ce --smoothing 0.1 \
	    --compress --compress-bits 1 2 3 --qat-steps 200 --json $(DEMO)/$$m/compute.json || exit 1; done

test: setup
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check genbound tests

clean-demo:
	rm -rf $(DEMO)
