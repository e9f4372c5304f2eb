"""`edgekd run`: frames in, defect masks out. Capture, preprocess, inference, postprocess and the sinks each run in
their own thread, joined by bounded queues:

    capture -> [newest frames] -> preprocess -> [batchable] -> infer -> [results] -> postprocess -> [out] -> sinks

Live sources keep only the newest frames (real time beats completeness; drops are counted); files and folders
deliver every frame. Inference takes whatever frames have queued up, up to --batch, as one batch.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edgekd.data.images import resize_rgb, to_model_input
from edgekd.errors import EdgekdError
from edgekd.runtime.base import Runtime, RuntimeUnavailable
from edgekd.calibration import Thresholds
from edgekd.stream.detect import Hysteresis, apply_reject_rule, defect_regions, frame_is_defective
from edgekd.stream.service import ServiceNotifier
from edgekd.sinks import Result, Sink, annotate
from edgekd.stream.sources import CORRUPT, END, LOST, OK, Source
from edgekd.stream.stats import RunStats
from edgekd.viz import colour_range

DONE = object()  # end of stream, passed down the stages
BUDGET_MARGIN = 1.25  # --max-latency-ms: the inference time a batch is expected to take, with this margin
NAMED_CORRUPT = 20  # unreadable frames named in the summary (all are counted)


@dataclass
class RunOptions:
    thresholds: Thresholds
    min_area: int = 0
    hysteresis: tuple[int, int] = (1, 1)
    max_batch: int = 8
    max_frames: int | None = None
    stats_every: float = 5.0  # seconds between stats lines; 0 = none
    reconnect_timeout: float = 0.0  # give up on a lost live source after this long; 0 = never
    live_queue: int = 2  # frames a live source may hold before the oldest is dropped
    mm_per_px: float | None = None  # the frame's scale: regions carry sizes in mm (edgekd/region_sizes.py)
    reject_rule: Any = None  # a RejectRule (edgekd/stream/reject.py): which defective parts are rejected
    max_latency_ms: float | None = None  # the verdict's budget from capture: older frames are dropped before inference
    parts: Any = None  # a PartGrouper (edgekd/stream/parts.py): frames grouped into parts, one verdict each
    names: dict | None = None  # model, source: what part messages call them


@dataclass
class _Frame:
    index: int
    timestamp: float
    position: float | None
    image: np.ndarray
    captured: float  # perf_counter at capture
    name: str | None = None  # the file a folder source read it from
    tensor: np.ndarray | None = None
    amap: np.ndarray | None = None
    score: float = 0.0
    inferred: float = 0.0  # perf_counter when its inference finished


class _NewestQueue:
    """A bounded queue whose put() never blocks: when full, the oldest frame makes room and is counted as dropped."""

    def __init__(self, size: int, on_drop):
        self.queue, self.on_drop = queue.Queue(maxsize=size), on_drop

    def put(self, item, timeout=None) -> None:
        while True:
            try:
                self.queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    dropped = self.queue.get_nowait()
                    if dropped is DONE:  # never drop the end marker
                        self.queue.put_nowait(dropped)
                        return
                    self.on_drop()
                except queue.Empty:
                    pass

    def get(self, timeout=None):
        return self.queue.get(timeout=timeout)

    def get_nowait(self):
        return self.queue.get_nowait()


class Runner:
    def __init__(self, source: Source, runtime: Runtime, sinks: list[Sink], options: RunOptions, log=print):
        self.source, self.runtime, self.sinks, self.options, self.log = source, runtime, sinks, options, log
        self.stats = RunStats()
        self._stopping = threading.Event()  # drain what is queued, then finish
        self._aborted = threading.Event()  # a stage failed: finish now
        self.failure: BaseException | None = None
        capture_out = _NewestQueue(options.live_queue, lambda: self.stats.count("dropped")) \
            if source.drops_when_busy else queue.Queue(maxsize=4)
        self.queues = [capture_out, queue.Queue(maxsize=2 * options.max_batch), queue.Queue(maxsize=8),
                       queue.Queue(maxsize=8)]
        self.vmin, self.vmax = colour_range(runtime.info.score_stats, options.thresholds.pixel)
        self.hysteresis = Hysteresis(*options.hysteresis)
        self.active_sinks = list(sinks)
        self.stopped_by: str | None = None  # what stopped the run before its source ended (a signal, the window)
        self._outage: list | None = None  # [since, frames lost] while a remote runtime is unavailable
        self.service = ServiceNotifier()  # systemd's watchdog, fed only while frames are processed
        self.lost_outputs: list[dict] = []  # sinks that failed and were stopped, with the reason
        self.corrupt_names: list[str] = []  # the first unreadable frames (file names in a folder), for the summary
        self._infer_per_frame_s = 0.0  # measured by warm_up and every batch (the latency budget's estimate)
        self._tail_s = 0.0  # from inference done to the outputs written: postprocess, queues, sinks (ditto)
        self._inbox_done = False  # the inference stage has seen the end of the stream

    # -- control ----------------------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self, reason: str | None = None) -> None:
        """Stop capturing; frames already in flight are finished and the sinks closed cleanly. `reason` (a signal's
        name) goes into the summary: a run cut short is not a complete one."""
        if reason and self.stopped_by is None:
            self.stopped_by = reason
        self._stopping.set()

    def _put(self, box, item) -> bool:
        while not self._aborted.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, box):
        while not self._aborted.is_set():
            try:
                return box.get(timeout=0.1)
            except queue.Empty:
                continue
        return DONE

    def _thread(self, name: str, body) -> threading.Thread:
        def guarded():
            try:
                body()
            except BaseException as exc:  # one failed stage ends the run; the error is raised from run()
                if self.failure is None:
                    self.failure = exc
                self._aborted.set()
        thread = threading.Thread(target=guarded, name=f"edgekd-{name}", daemon=True)
        thread.start()
        return thread

    # -- stages -----------------------------------------------------------------------------------------------
    def _capture(self) -> None:
        out, index, limit = self.queues[0], 0, self.options.max_frames
        while not self._stopping.is_set() and not self._aborted.is_set() and (limit is None or index < limit):
            started = time.perf_counter()
            read = self.source.read()
            if read.status == OK:
                self.stats.stage("capture", time.perf_counter() - started)
                self.stats.count("captured")
                frame = _Frame(index, time.time(), read.timestamp, read.image, time.perf_counter(), read.name)
                index += 1
                if not self._put(out, frame):
                    return
            elif read.status == CORRUPT:
                self.stats.count("corrupt")
                if len(self.corrupt_names) < NAMED_CORRUPT:
                    self.corrupt_names.append(read.name or f"frame {index + self.stats.counts['corrupt'] - 1}")
            elif read.status == END:
                break
            elif read.status == LOST and not self._reconnect():
                break
        self._put(out, DONE)

    def _reconnect(self) -> bool:
        """Back off 0.5 s, 1 s, 2 s ... 10 s between attempts; False when stopped or past --reconnect-timeout."""
        self.log(f"warning: {self.source.description} lost: reconnecting")
        lost_at, delay = time.monotonic(), 0.5
        while not self._stopping.is_set() and not self._aborted.is_set():
            timeout = self.options.reconnect_timeout
            if timeout and time.monotonic() - lost_at > timeout:
                raise EdgekdError(f"{self.source.description} lost and not back after {timeout:g} s "
                                  "(--reconnect-timeout): check the camera or stream")
            if self._stopping.wait(delay):
                return False
            if self.source.reopen():
                self.stats.count("reconnects")
                self.log(f"info: {self.source.description} back after {time.monotonic() - lost_at:.1f} s")
                return True
            delay = min(2 * delay, 10.0)
        return False

    def _preprocess(self) -> None:
        inbox, out = self.queues[0], self.queues[1]
        size = self.runtime.input_size
        while (frame := self._get(inbox)) is not DONE:
            started = time.perf_counter()
            rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
            frame.tensor = to_model_input(resize_rgb(rgb, size)[None])
            self.stats.stage("preprocess", time.perf_counter() - started)
            if not self._put(out, frame):
                return
        self._put(out, DONE)

    def _next_batch(self, inbox, waiting: collections.deque) -> tuple[list, bool]:
        """The next micro-batch (whatever has queued up already, up to max_batch) and whether the stream ended.
        With a latency budget everything queued is looked at, and the oldest frames whose verdict could not be out
        within the budget (their age plus the batch's expected inference time) are dropped and counted."""
        if not waiting:
            if self._inbox_done:
                return [], True
            first = self._get(inbox)
            if first is DONE:
                return [], True
            waiting.append(first)
        budget = self.options.max_latency_ms
        room = (1 << 30) if budget else self.options.max_batch  # without a budget, back-pressure as before
        while len(waiting) < room and not self._inbox_done:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                break
            if item is DONE:
                self._inbox_done = True
                break
            waiting.append(item)
        if budget:
            now = time.perf_counter()
            while len(waiting) > 1:  # the newest frame is always scored, even when it cannot make the budget
                batch = min(len(waiting), self.options.max_batch)
                # a quarter's margin on the inference: on a loaded machine it varies from batch to batch
                expected = now - waiting[0].captured + BUDGET_MARGIN * self._infer_per_frame_s * batch + self._tail_s
                if expected * 1e3 <= budget:
                    break
                waiting.popleft()
                self.stats.count("dropped")
                self.stats.count("over_budget")
        frames = [waiting.popleft() for _ in range(min(len(waiting), self.options.max_batch))]
        return frames, self._inbox_done and not waiting

    def _infer(self) -> None:
        inbox, out = self.queues[1], self.queues[2]
        waiting: collections.deque = collections.deque()
        finished = False
        while not finished:
            frames, finished = self._next_batch(inbox, waiting)
            if not frames:
                continue
            started = time.perf_counter()
            try:
                maps, scores = self.runtime.run(np.concatenate([f.tensor for f in frames]))
            except RuntimeUnavailable as exc:  # a server that went away: these frames are lost, the run goes on
                self._lose(frames, exc)
                continue
            if self._outage is not None:
                self.log(f"info: {self.runtime.label} back after {time.monotonic() - self._outage[0]:.1f} s; "
                         f"{self._outage[1]} frames lost meanwhile")
                self._outage = None
            self.stats.batch(len(frames), time.perf_counter() - started)
            # the expected inference time per frame, for the latency budget: a moving average of the recent batches
            self._infer_per_frame_s += 0.2 * ((time.perf_counter() - started) / len(frames) - self._infer_per_frame_s)
            for frame, amap, score in zip(frames, np.asarray(maps, np.float32), np.asarray(scores, np.float32).reshape(-1)):
                frame.amap, frame.score, frame.tensor, frame.inferred = amap[0], float(score), None, time.perf_counter()
                if not self._put(out, frame):
                    return
        self._put(out, DONE)

    def _lose(self, frames: list, exc: BaseException) -> None:
        self.stats.count("lost", len(frames))
        if self._outage is None:
            self._outage = [time.monotonic(), 0]
            self.log(f"warning: {self.runtime.label} unavailable ({exc}): frames are lost until it is back; retrying")
        self._outage[1] += len(frames)

    def _postprocess(self) -> None:
        inbox, out = self.queues[2], self.queues[3]
        options = self.options
        while (frame := self._get(inbox)) is not DONE:
            started = time.perf_counter()
            h, w = frame.image.shape[:2]
            if options.min_area > h * w:  # every defect would be dropped: say so instead of calling them all normal
                raise EdgekdError(f"--min-area {options.min_area} is larger than the whole frame ({w}x{h} = {h * w} "
                                  "pixels): no defect could ever be reported; give the smallest defect area you care "
                                  "about, in frame pixels")
            regions, mask = defect_regions(frame.amap, options.thresholds, frame.image.shape[:2], options.min_area,
                                           options.mm_per_px)
            defective = frame_is_defective(frame.score, regions, options.thresholds, options.min_area)
            regions, rejected = self._reject(regions if defective else [], defective)
            result = Result(frame.index, frame.timestamp, frame.position, frame.image, frame.amap, mask, frame.score,
                            defective, self.hysteresis.update(defective), regions, name=frame.name, rejected=rejected)
            result.latency_ms = 1e3 * (time.perf_counter() - frame.captured)
            self.stats.stage("postprocess", time.perf_counter() - started)
            if not self._put(out, (result, frame.captured, frame.inferred)):
                return
        self._put(out, DONE)

    def _reject(self, regions: list, defective: bool) -> tuple[list, bool | None]:
        """After the anomaly decision, the size rule: a defective part is rejected when one of its regions meets it,
        and also when it has no region to measure (a score above the threshold with nothing outlined: passing it would
        call a defect good unseen)."""
        if self.options.reject_rule is None:
            return regions, None
        if not defective:
            return regions, False
        regions, rejected = apply_reject_rule(regions, self.options.reject_rule)
        rejected = rejected or not regions
        self.stats.count("rejected", int(rejected))
        return regions, rejected

    def _write_parts(self, parts: list) -> None:
        for part in parts:
            self.stats.count("parts")
            self.stats.count("defective_parts", int(part.verdict))
            message = part.message(self.options.names or {})
            for sink in list(self.active_sinks):
                try:
                    sink.write_part(part, message)
                except OSError as exc:
                    self._drop_sink(sink, exc)

    def _sinks(self) -> None:
        inbox = self.queues[3]
        grouper = self.options.parts
        while (item := self._get(inbox)) is not DONE:
            result, captured, inferred = item
            started = time.perf_counter()
            if grouper is not None:
                result.part, ended = grouper.add(result.index, result.timestamp, result.score, result.defective,
                                                 result.rejected)
                self._write_parts(ended)
            result.fps = self.stats.fps()
            picture = annotate(result, self.vmin, self.vmax) if any(s.wants_overlay for s in self.active_sinks) else None
            for sink in list(self.active_sinks):
                try:
                    sink.write(result, picture)
                except OSError as exc:  # disk full, folder removed, ...: that sink stops, detection goes on
                    self._drop_sink(sink, exc)
            self.stats.stage("sinks", time.perf_counter() - started)
            done = time.perf_counter()
            age = done - captured
            self._tail_s += 0.2 * ((done - inferred) - self._tail_s)  # inference to outputs, for the budget
            if self.options.max_latency_ms and age * 1e3 > self.options.max_latency_ms:
                self.stats.count("late")
            self.stats.done(age, result.verdict)
        if grouper is not None and not self._aborted.is_set():
            self._write_parts(grouper.close())

    def _drop_sink(self, sink: Sink, exc: BaseException) -> None:
        self.active_sinks.remove(sink)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        kept = None
        try:
            kept = sink.abandon()
        except OSError:
            pass
        self.lost_outputs.append({"output": sink.name, "error": reason, **({"kept": str(kept)} if kept else {})})
        self.log(f"error: {sink.name} stopped ({reason}); detection and the other outputs go on"
                 + (f"; what was written is kept as {kept}" if kept else ""))

    # -- the run --------------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run the largest and the smallest batch once before the first frame: backends size their memory pools for
        the largest batch now, instead of growing them (and stalling a frame) the first time frames pile up."""
        if not self.runtime.warm_up:
            return
        h, w = self.runtime.input_size
        for size in (self.options.max_batch, 1):
            started = time.perf_counter()
            self.runtime.run(np.zeros((size, 3, h, w), np.float32))
        self._infer_per_frame_s = time.perf_counter() - started  # the single frame's
        budget = self.options.max_latency_ms
        if budget and self._infer_per_frame_s * 1e3 > budget:
            self.log(f"warning: one frame takes {self._infer_per_frame_s * 1e3:.0f} ms to score here, over "
                     f"--max-latency-ms {budget:g}: only the newest frame is scored each time, and its verdict is late")

    def run(self) -> dict:
        """Blocks until the source ends, stop() is called or a stage fails; returns the final stats."""
        self.warm_up()
        self.stats = RunStats()  # the clock starts with the first frame, not with the warm-up
        threads = [self._thread(name, body) for name, body in (("capture", self._capture), ("preprocess", self._preprocess),
                                                               ("infer", self._infer), ("postprocess", self._postprocess),
                                                               ("sinks", self._sinks))]
        next_line = time.monotonic() + self.options.stats_every
        ping_every = self.service.ping_every_s or 1.0
        next_ping, processed_at_ping = time.monotonic() + min(ping_every, 1.0), 0
        try:
            while any(t.is_alive() for t in threads):
                threads[-1].join(timeout=0.2)  # short waits: signals reach the main thread
                if self.options.stats_every and time.monotonic() >= next_line:
                    self.log(self.stats.line())
                    next_line += self.options.stats_every
                if self.service.active and time.monotonic() >= next_ping:
                    processed = self.stats.counts["processed"]
                    if processed > processed_at_ping:  # a stalled pipeline stops feeding the watchdog
                        self.service.frames_flowing()
                        processed_at_ping = processed
                    next_ping = time.monotonic() + ping_every
        finally:
            self.service.stopping()
            self._stopping.set()
            for thread in threads:
                thread.join(timeout=5.0)
            for sink in list(self.active_sinks):
                try:
                    sink.close()
                except OSError as exc:
                    self.log(f"error: closing {sink.name} failed: {exc}")
            self.source.close()
            if self.options.stats_every:
                self.log(self.stats.line())
        if self.failure is not None:
            if isinstance(self.failure, EdgekdError):
                raise self.failure
            raise EdgekdError(f"the run stopped: {type(self.failure).__name__}: {self.failure}") from self.failure
        snapshot = self.stats.snapshot()
        outages = list(getattr(self.runtime, "outages", []))
        if getattr(self.runtime, "down_since", None) is not None:  # still away at the end: that outage counts too
            outages.append(time.monotonic() - self.runtime.down_since)
        outages = [round(s, 2) for s in outages]
        unread = self._unread(snapshot)
        # frames of a file or folder never scored: unreadable ones and those past a damaged end
        unscored = unread + (snapshot["corrupt"] if self.source.frame_count else 0)
        outputs = self.outputs()
        return {**snapshot, "stopped_by": self.stopped_by, "lost_outputs": self.lost_outputs,
                **({"outputs": outputs} if outputs else {}),
                **({"server_outages_s": outages} if outages or snapshot["lost"] else {}),
                **({"unread": unread} if unread else {}),
                **({"unscored": unscored} if unscored else {}),
                **({"corrupt_frames": self.corrupt_names} if self.corrupt_names else {}),
                "complete": self.stopped_by is None and not self.lost_outputs and not snapshot["lost"] and not unscored}

    def outputs(self) -> dict:
        """Each output's own counters (messages sent, spooled, dropped; events stored), by its name."""
        return {sink.name: counts for sink in self.sinks if (counts := sink.counters()) is not None}

    def _unread(self, snapshot: dict) -> int:
        """Frames a file or folder holds that the run never reached (a damaged end, a decoder that gave up); with the
        corrupt ones, a run that did not score every frame of a file is not complete. Not counted when --max-frames
        or a stop cut it short on purpose."""
        expected = self.source.frame_count
        if not expected or self.stopped_by is not None or self.options.max_frames is not None:
            return 0
        return max(0, expected - snapshot["captured"] - snapshot["corrupt"])
