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
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps nvidia-pytriton==0.7.0  # the tritonserver binary
	touch $@

setup: $(STAMP)

# The whole path on built-in data: synthesise -> train -> evaluate -> export INT8 -> build an engine (when
# TensorRT or TensorRT-RTX is installed) -> calibrate on a clip of good parts -> run on a line video with
# defects at known frames, printing detected vs true defect frames.
demo: setup
	$(BIN)/edgekd data synth $(DATA) --categories $(CATEGORY) --seed 0 --overwrite
	$(BIN)/edgekd train --config configs/rd_lite0.yaml --data $(DATA) --category $(CATEGORY) --out $(RUN) --overwrite
	$(BIN)/edgekd eval $(RUN)/model.ckpt --data $(DATA) --category $(CATEGORY)
	$(BIN)/edgekd predict $(RUN)/model.ckpt $(DATA)/$(CATEGORY)/test/good/000.png \
		$(DATA)/$(CATEGORY)/test/scratch/000.png $(DATA)/$(CATEGORY)/test/hole/000.png --out $(RUN)/preds
	$(BIN)/edgekd export $(RUN)/model.ckpt --precision int8 --int8-for onnxruntime --out $(RUN)/export
	@if $(BIN)/python -c "import tensorrt_rtx" 2>/dev/null || $(BIN)/python -c "import tensorrt" 2>/dev/null; then \
		$(BIN)/edgekd export $(RUN)/model.ckpt --precision int8 --out $(RUN)/export && \
		$(BIN)/edgekd build-engine $(RUN)/export/$(CATEGORY).int8.onnx --batch 1,4,8 --out $(RUN)/engines; \
	else echo "no TensorRT or TensorRT-RTX here: skipping the engine build"; fi
	$(BIN)/edgekd data video $(DATA) $(RUN)/good_parts.mp4 --category $(CATEGORY) --frames 100 --defect-every 0 --normal-part first --seed 1
	$(BIN)/edgekd data video $(DATA) $(RUN)/line.mp4 --category $(CATEGORY) --frames 200 --defect-every 10 --normal-part second
	$(BIN)/edgekd calibrate $(RUN)/export/$(CATEGORY).int8-ort.onnx --source $(RUN)/good_parts.mp4 --frames 100
	$(BIN)/edgekd run --model $(RUN)/export/$(CATEGORY).int8-ort.onnx --source $(RUN)/line.mp4 \
		--jsonl $(RUN)/line.jsonl --truth $(RUN)/line.json --stats-every 0

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) data runs preds
