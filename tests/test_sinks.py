"""The sinks table (edgekd/sinks/__init__.py): every output of `edgekd run`, the dashboard included, is one row;
a row is prepared before the model loads and built once the run's thresholds are known."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from contextlib import ExitStack

import numpy as np
import pytest

from edgekd import sinks
from edgekd.calibration import Thresholds
from edgekd.dashboard.board import LiveBoard
from edgekd.errors import EdgekdError
from edgekd.sinks import SINKS, JsonlSink, Result, SinkContext, SinkKind, build_sinks, prepare_sinks
from edgekd.stream.request import RunRequest


def _request(**values) -> RunRequest:
    return dataclasses.replace(RunRequest(model="m.onnx", source="clip.mp4"), **values)


def _context(logged: list) -> SinkContext:
    return SinkContext(25.0, lambda reason: None, Thresholds(1.0, 2.0), (0.0, 3.0), lambda: {"processed": 0},
                       {"model": "m.onnx", "source": "clip.mp4", "backend": "onnxruntime"}, logged.append)


def test_every_row_is_an_option_of_the_request_and_of_edgekd_run():
    import inspect

    from edgekd.cli.line_commands import run
    fields = {f.name for f in dataclasses.fields(RunRequest)}
    run_options = set(inspect.signature(run).parameters)
    assert {kind.option for kind in SINKS} <= fields & run_options
    assert "serve" in {kind.option for kind in SINKS}  # the dashboard is a row like the others


def test_the_dashboard_is_prepared_before_the_model_and_built_as_a_sink(tmp_path):
    logged = []
    request = _request(jsonl=tmp_path / "events.jsonl", serve="127.0.0.1:0")
    with ExitStack() as cleanup:
        prepared = prepare_sinks(request, cleanup)
        assert [kind.option for kind, _ in prepared] == ["jsonl", "serve"]
        dashboard = prepared[1][1]
        built = build_sinks(prepared, _context(logged))
        assert isinstance(built[0], JsonlSink) and isinstance(built[1], LiveBoard)
        assert logged == [f"info: dashboard at {dashboard.url}"]
        frame = np.zeros((32, 32, 3), np.uint8)
        result = Result(0, 0.0, None, frame, np.zeros((32, 32), np.float32), np.zeros((32, 32), np.uint8), 2.5,
                        True, True)
        for sink in built:
            sink.write(result, frame)
        with urllib.request.urlopen(f"{dashboard.url}api/status", timeout=10) as response:
            status = json.load(response)
        assert status["thresholds"]["image"] == 1.0 and status["backend"] == "onnxruntime"
        for sink in built:
            sink.close()
    assert json.loads((tmp_path / "events.jsonl").read_text())["score"] == 2.5


def test_a_taken_port_fails_in_prepare_and_what_was_prepared_is_closed(tmp_path):
    with ExitStack() as outer:
        first = prepare_sinks(_request(serve="127.0.0.1:0"), outer)[0][1]
        port = first.url.rstrip("/").rsplit(":", 1)[1]
        with pytest.raises(EdgekdError, match=port):
            with ExitStack() as cleanup:
                prepare_sinks(_request(serve=f"127.0.0.1:{port}"), cleanup)


def test_a_new_output_is_one_row(tmp_path, monkeypatch):
    written = []

    class CountingSink:
        def write(self, result, overlay):
            written.append(result.index)

        def close(self):
            written.append("closed")

    row = SinkKind("truth", lambda request: request.truth, lambda value, run: CountingSink())
    monkeypatch.setattr(sinks, "SINKS", (*SINKS, row))
    with ExitStack() as cleanup:
        prepared = prepare_sinks(_request(truth=tmp_path / "truth.json"), cleanup)
        [sink] = build_sinks(prepared, _context([]))
        sink.close()
    assert written == ["closed"]
