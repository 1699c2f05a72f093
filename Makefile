# rlnas developer and user entry points. Every target installs what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED ?= ../shared
DATA ?= data
ARGS ?=
# TensorBoard listens on this address; TB_HOST=0.0.0.0 serves it on every interface
TB_HOST ?= localhost

.PHONY: install data test lint format search tensorboard clean bench help

help:
	@echo "make search       install if needed, then run the default (quick) search end to end"
	@echo "make test         run the test suite"
	@echo "make install      create $(VENV) with the pinned stack"
	@echo "make data         extract ../shared archives into $(DATA)/"
	@echo "make scenes       build the detection scenes $(DATA)/scenes-300 from the Imagenette photos"
	@echo "make campaign-128 ResNet-50 / Imagenette at 128 px, a0 to comparisons (hours; rerun resumes)"
	@echo "make lint         ruff"
	@echo "make bench        the benchmarks under experiments/ (slow, needs a quiet machine)"
	@echo "make tensorboard  serve runs under outputs/ on $(TB_HOST) (TB_HOST=0.0.0.0: all interfaces)"
	@echo "make clean        remove caches and outputs (keeps $(VENV) and $(DATA))"

$(STAMP): setup.cfg setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: pip takes these two from the local disk here
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data: $(DATA)/.extracted

$(DATA)/.extracted:
	@mkdir -p $(DATA)
	@if [ -d "$(SHARED)/data" ]; then \
	  for a in cifar10 imagenette-128 coco128; do \
	    if [ -f "$(SHARED)/data/$$a.tar.gz" ] && [ ! -d "$(DATA)/$$a" ]; then \
	      echo "extracting $$a"; tar xzf "$(SHARED)/data/$$a.tar.gz" -C $(DATA); fi; \
	  done; \
	  if [ -f "$(SHARED)/models/pedestrian-detection-adas-0002.tar.gz" ] && [ ! -d "$(DATA)/pedestrian-detection-adas-0002" ]; then \
	    mkdir -p $(DATA)/pedestrian-detection-adas-0002; \
	    tar xzf "$(SHARED)/models/pedestrian-detection-adas-0002.tar.gz" -C $(DATA)/pedestrian-detection-adas-0002; fi; \
	  touch $@; \
	else \
	  echo "$(SHARED)/data not found: skipping extraction. rlnas falls back to torchvision's CIFAR-10"; \
	  echo "download, or set dataset.root=<ImageFolder root> on the command line."; \
	fi

.PHONY: campaign-128
campaign-128: install data
	bash experiments/campaign_128.sh $(ARGS)

.PHONY: scenes
scenes: install data
	$(PY) experiments/make_detection_scenes.py --source $(DATA)/imagenette-128 --out $(DATA)/scenes-300 $(ARGS)

test: install data
	$(PY) -X faulthandler -m pytest -q --skip-interpreter-teardown $(ARGS)

lint: install
	$(VENV)/bin/ruff check rlnas tests experiments

format: install
	$(VENV)/bin/ruff check --fix rlnas tests experiments
	$(VENV)/bin/ruff format rlnas tests experiments

search: install data
	$(VENV)/bin/rlnas-search experiment=quick $(ARGS)

bench: install data
	$(PY) experiments/bench_latency_oracle.py
	$(PY) experiments/bench_accuracy_oracle.py

tensorboard: install
	$(VENV)/bin/tensorboard --logdir outputs --host $(TB_HOST)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
