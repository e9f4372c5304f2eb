"""/metrics for Prometheus: the run's counters and the stats line's figures, read from the runner when scraped (no
second set of counters to keep in step)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

# run counter -> (metric name without _total, help)
COUNTERS = {
    "captured": ("edgekd_frames_captured", "Frames read from the source."),
    "processed": ("edgekd_frames_processed", "Frames scored and handed to the outputs."),
    "dropped": ("edgekd_frames_dropped", "Live frames dropped because newer ones were waiting."),
    "corrupt": ("edgekd_frames_corrupt", "Frames that could not be decoded and were skipped."),
    "lost": ("edgekd_frames_lost", "Frames a remote runtime (--server) could not score."),
    "defect_frames": ("edgekd_defect_frames", "Frames whose verdict was DEFECT."),
    "reconnects": ("edgekd_source_reconnects", "Times a lost camera or stream came back."),
    "batches": ("edgekd_inference_batches", "Inference calls (micro-batches)."),
}


class RunCollector:
    def __init__(self, board, request_counts):
        self.board, self.request_counts = board, request_counts  # request_counts(): {outcome: count}, a copy

    def collect(self):
        status = self.board.status()
        yield InfoMetricFamily("edgekd_run", "What this runner runs.",
                               value={k: str(status.get(k) or "") for k in ("model", "source", "backend")})
        stats = status["stats"] or {}
        for key, (name, text) in COUNTERS.items():
            yield CounterMetricFamily(name, text, value=stats.get(key, 0))
        yield GaugeMetricFamily("edgekd_fps", "Frames per second over the last few hundred frames.",
                                value=stats.get("fps", 0.0))
        stage = GaugeMetricFamily("edgekd_stage_milliseconds", "Mean time per frame of each pipeline stage.",
                                  labels=["stage"])
        for name, value in (stats.get("stage_ms") or {}).items():
            if value is not None:
                stage.add_metric([name], value)
        yield stage
        latency = GaugeMetricFamily("edgekd_latency_milliseconds", "Capture-to-output latency.", labels=["quantile"])
        for quantile, key in (("0.5", "latency_ms_p50"), ("0.95", "latency_ms_p95")):
            if key in stats:
                latency.add_metric([quantile], stats[key])
        yield latency
        if status["score"] is not None:
            yield GaugeMetricFamily("edgekd_last_score", "Image score of the newest frame.", value=status["score"])
            yield GaugeMetricFamily("edgekd_verdict_defect", "1 while the verdict is DEFECT, else 0.",
                                    value=float(status["verdict"] == "defect"))
        if status["thresholds"]:
            threshold = GaugeMetricFamily("edgekd_threshold", "The thresholds in use.", labels=["kind"])
            for kind, value in status["thresholds"].items():
                threshold.add_metric([kind], value)
            yield threshold
        if status["last_frame_age_s"] is not None:
            yield GaugeMetricFamily("edgekd_last_frame_age_seconds", "Seconds since the newest frame was scored.",
                                    value=status["last_frame_age_s"])
        messages = CounterMetricFamily("edgekd_output_messages", "Line output messages (MQTT, webhook) by what "
                                       "happened to them: queued, sent, spooled (waited for the receiver), dropped "
                                       "(spool full), retries.", labels=["output", "state"])
        pending = GaugeMetricFamily("edgekd_output_pending", "Messages waiting in an output's spool.", labels=["output"])
        for output, counts in (stats.get("outputs") or {}).items():
            for state in ("queued", "sent", "spooled", "dropped", "retries"):
                if state in counts:
                    messages.add_metric([output, state], counts[state])
            if "pending" in counts:
                pending.add_metric([output], counts["pending"])
        yield messages
        yield pending
        yield GaugeMetricFamily("edgekd_dashboard_viewers", "Open live streams.", value=status["viewers"])
        answered = CounterMetricFamily("edgekd_dashboard_requests", "Dashboard requests, by outcome.", labels=["outcome"])
        for outcome, count in sorted(self.request_counts().items()):
            answered.add_metric([outcome], count)
        yield answered


def metrics_registry(board, request_counts) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(board, request_counts))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
