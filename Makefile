# The two entry points of the README. Both set up a local virtual environment (.venv) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekd-installed
DATA := data/synth
CATEGORY := wood
RUN := runs/$(CATEGORY)

.PHONY: setup demo test clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints-cpu.txt torch
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints-cpu.txt -e ".[dev]"
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/edgekd data synth $(DATA) --categories $(CATEGORY) --seed 0 --overwrite
	$(BIN)/edgekd train --config configs/rd_lite0.yaml --data $(DATA) --category $(CATEGORY) --out $(RUN)
	$(BIN)/edgekd eval $(RUN)/model.ckpt --data $(DATA) --category $(CATEGORY)
	$(BIN)/edgekd predict $(RUN)/model.ckpt $(DATA)/$(CATEGORY)/test/good/000.png \
		$(DATA)/$(CATEGORY)/test/scratch/000.png $(DATA)/$(CATEGORY)/test/hole/000.png --out $(RUN)/preds

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) data runs preds
