#!/usr/bin/env python
"""Throughput and latency of `edgekd serve` (a real tritonserver) with 1, 2 and 4 clients, against the local
runtime, in one run on this machine.

Each client is a camera: it sends one frame per request (uint8, the model's size) as soon as the previous answer
is back, for --seconds. The local reference runs the same artifact with edgekd's runtime in this process, one
frame per call (what `edgekd run` does when frames do not queue up), and with --batch frames per call (what it
does when they do). Turns are interleaved (local, 1, 2, 4 clients, local, ...) for --rounds rounds; medians are
reported, with the server's own mean batch size (Triton's statistics: images per model execution).
On a 2-core VM the server, its Python-backend stub and the clients share the same cores: the figures say what
the serving path costs here, not what a GPU server gives.

    python benchmarks/serve_throughput.py ARTIFACT.onnx
Writes benchmarks/results/serve-throughput/serve_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import itertools
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.bench.timing import timed_turn
from edgekd.machine import machine_info
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

RESULTS = folder_of("serve throughput")  # this study's folder (benchmarks/studies.py)
CLIENTS = (1, 2, 4)


def local_turn(runtime, frames: np.ndarray, batch: int, seconds: float) -> dict:
    """The local runtime for `seconds`, as one timed turn (edgekd/bench/timing.py), batch after batch of frames."""
    tensors = frames.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    batches = itertools.cycle([tensors[start:start + batch] for start in range(0, len(tensors) - batch + 1, batch)])
    latencies = timed_turn(lambda: runtime.run(next(batches)), seconds=seconds)
    return {"images_per_s": batch * len(latencies) / sum(latencies), "latency_ms_p50": 1e3 * float(np.median(latencies)),
            "latency_ms_p95": 1e3 * float(np.percentile(latencies, 95))}


def server_turn(address: str, model: str, frames: np.ndarray, clients: int, seconds: float) -> dict:
    import tritonclient.grpc as grpc
    stats_client = grpc.InferenceServerClient(address)
    def counts():
        stats = stats_client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        success = stats.get("inference_stats", {}).get("success", {})
        return (int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0)),
                int(success.get("count", 0)), int(success.get("ns", 0)))
    before = counts()
    latencies: list[list[float]] = [[] for _ in range(clients)]

    def camera(i: int) -> None:
        """One camera's requests for `seconds`, as one timed turn (edgekd/bench/timing.py)."""
        client = grpc.InferenceServerClient(address)
        requests = []
        for frame in frames[i::clients]:
            request = grpc.InferInput("frames", [1, *frame.shape], "UINT8")
            request.set_data_from_numpy(frame[None])
            requests.append(request)
        turn = itertools.cycle(requests)
        outputs = [grpc.InferRequestedOutput("score")]
        latencies[i] = timed_turn(lambda: client.infer(model, [next(turn)], outputs=outputs), seconds=seconds)
        client.close()
    started = time.perf_counter()
    threads = [threading.Thread(target=camera, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    after = counts()
    everything = [x for per in latencies for x in per]
    images, executions = after[0] - before[0], after[1] - before[1]
    requests, server_ns = after[2] - before[2], after[3] - before[3]
    server_ms = server_ns / requests / 1e6 if requests else None  # queue + compute inside Triton, per request
    per_client = [len(per) / elapsed for per in latencies]
    return {"images_per_s": len(everything) / elapsed, "latency_ms_p50": 1e3 * float(np.median(everything)),
            "server_ms_per_request": server_ms,
            "network_and_client_ms": 1e3 * float(np.mean(everything)) - server_ms if server_ms is not None else None,
            "per_client_images_per_s_min": min(per_client), "per_client_images_per_s_max": max(per_client),
            "latency_ms_p95": 1e3 * float(np.percentile(everything, 95)),
            "server_mean_batch": images / executions if executions else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="batch of the batched local reference")
    parser.add_argument("--name", default="serve_throughput")
    args = parser.parse_args()
    from edgekd.runtime import open_runtime
    from edgekd.serve.repository import describe, write_serving_repository
    from edgekd.serve.server import Ports, TritonServer, make_work_dir
    import socket
    ports = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    served = describe(args.artifact)
    runtime = open_runtime(args.artifact)
    h, w = runtime.input_size
    frames = np.random.default_rng(0).integers(0, 256, (64, h, w, 3), dtype=np.uint8)
    work = make_work_dir()
    server = TritonServer(write_serving_repository([served], work / "models", 16, 1), Ports(*ports), work, exit_timeout_s=5)
    server.start([served.name])
    turns: dict[str, list[dict]] = {}
    try:
        address = f"127.0.0.1:{ports[1]}"
        server_turn(address, served.name, frames, 1, 1.0)  # warm both paths before timing
        local_turn(runtime, frames, 1, 1.0)
        for round_ in range(args.rounds):
            for label, run in ([("local, 1 frame per call", lambda: local_turn(runtime, frames, 1, args.seconds)),
                                (f"local, {args.batch} frames per call", lambda: local_turn(runtime, frames, args.batch, args.seconds))]
                               + [(f"server, {n} client{'s' if n > 1 else ''}",
                                   (lambda n=n: server_turn(address, served.name, frames, n, args.seconds))) for n in CLIENTS]):
                turns.setdefault(label, []).append(run())
                print(f"round {round_ + 1}: {label}: {turns[label][-1]['images_per_s']:.1f} images/s", flush=True)
    finally:
        server.stop()
        runtime.close()
        shutil.rmtree(work, ignore_errors=True)
    reference = float(np.median([t["images_per_s"] for t in turns["local, 1 frame per call"]]))
    rows = []
    for label, results in turns.items():
        median = {k: float(np.median([r[k] for r in results if r.get(k) is not None])) if any(r.get(k) is not None for r in results)
                  else None for k in results[0]}
        rows.append({"setup": label, **median, "x_local_1": median["images_per_s"] / reference})
    report = {"name": args.name, "machine": machine_info(), "artifact": str(args.artifact), "model": served.model,
              "input_size": [h, w], "seconds_per_turn": args.seconds, "rounds": args.rounds, "rows": rows,
              "turns": turns, "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(RESULTS / f"{args.name}.json", json.dumps(report, indent=2).encode())
    fmt = lambda v, p=1: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    lines = [f"# `edgekd serve` beside the local runtime ({report['machine']['cpu']}, {report['machine']['cores']} cores)",
             "", f"{report['date']}; {served.model} `{args.artifact.name}` at {h}x{w}; medians of {args.rounds} interleaved "
             f"turns of {args.seconds:g} s. Server clients send one uint8 frame per gRPC request on loopback; the "
             "server, its Python-backend stub and the clients share this machine's cores.", "",
             "Per request, the time inside Triton (queue + compute, from its statistics) and the rest of the round "
             "trip (network, serialisation, the client) are shown apart.", "",
             "| setup | images/s | x local (1 frame per call) | per client images/s | latency p50 ms | latency p95 ms | "
             "in Triton ms | network + client ms | server mean batch |",
             "|---|---|---|---|---|---|---|---|---|"]
    def span(r):
        low, high = r.get("per_client_images_per_s_min"), r.get("per_client_images_per_s_max")
        return "n/a" if low is None else f"{low:.1f}-{high:.1f}"
    lines += [f"| {r['setup']} | {fmt(r['images_per_s'])} | {r['x_local_1']:.2f} | {span(r)} | {fmt(r['latency_ms_p50'])} | "
              f"{fmt(r['latency_ms_p95'])} | {fmt(r.get('server_ms_per_request'))} | {fmt(r.get('network_and_client_ms'))} | "
              f"{fmt(r.get('server_mean_batch'), 2)} |" for r in rows]
    write_bytes_atomic(RESULTS / f"{args.name}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
