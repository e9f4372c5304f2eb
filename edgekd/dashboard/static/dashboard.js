// The edgekd dashboard: polls the JSON endpoints, draws the score chart, keeps the defect gallery current.
// Read-only: nothing here sends anything but GET requests.
"use strict";

const POLL_MS = 500;
const MIN_SPAN_S = 30;  // a young run fills at least this much of the chart instead of a sliver at its right edge
const GALLERY_POLL_MS = 1000;
const state = { points: [], lastFrame: -1, threshold: null, windowS: 120, galleryIds: "", running: true };

const $ = (id) => document.getElementById(id);

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function banner(text) {
  const element = $("banner");
  element.hidden = !text;
  element.textContent = text || "";
}

function fixed(value, digits) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

function showStatus(status) {
  $("model").textContent = status.model || "-";
  $("source").textContent = status.source || "-";
  $("frame").textContent = status.frame === null ? "-" : status.frame;
  $("score").textContent = fixed(status.score, 3);
  if (status.thresholds) {
    state.threshold = status.thresholds.image;
    $("threshold").textContent = fixed(status.thresholds.image, 3);
  }
  const verdict = $("verdict");
  verdict.className = "verdict " + (status.verdict || "unknown");
  verdict.textContent = status.verdict === "defect" ? "DEFECT" : status.verdict === "ok" ? "OK" : "waiting";
  state.running = status.running;
  const s = status.stats;
  if (s) {
    const stages = Object.entries(s.stage_ms || {}).filter(([, v]) => v !== null)
      .map(([k, v]) => `${k} ${v.toFixed(1)}`).join(" · ");
    const rows = [
      ["FPS", fixed(s.fps, 1)], ["latency p50 / p95", `${fixed(s.latency_ms_p50, 0)} / ${fixed(s.latency_ms_p95, 0)} ms`],
      ["ms per frame", stages || "-"], ["mean batch", fixed(s.mean_batch, 1)],
      ["frames", s.processed], ["defect frames", s.defect_frames], ["dropped", s.dropped], ["corrupt", s.corrupt],
      ["reconnects", s.reconnects], ["lost (server away)", s.lost], ["running for", `${fixed(s.seconds, 0)} s`],
    ];
    const list = $("stats");
    list.replaceChildren(...rows.flatMap(([name, value]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = value;
      return [dt, dd];
    }));
  }
  if (!status.running) banner("The run has finished: the page shows its last state.");
  else if (status.last_frame_age_s !== null && status.last_frame_age_s > 5) {
    banner(`No frame for ${status.last_frame_age_s.toFixed(0)} s: is the camera delivering?`);
  } else banner("");
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const colour = (name) => style.getPropertyValue(name).trim();
  const pad = { left: 44, right: 8, top: 8, bottom: 20 };
  const now = state.points.length ? state.points[state.points.length - 1][1] : Date.now() / 1000;
  const span = state.points.length ? Math.min(state.windowS, Math.max(MIN_SPAN_S, now - state.points[0][1]))
    : state.windowS;
  const since = now - span;
  const shown = state.points.filter((p) => p[1] >= since);
  canvas.dataset.points = shown.length;
  let top = Math.max(state.threshold || 0, ...shown.map((p) => p[2])) * 1.1 || 1;
  const x = (t) => pad.left + (width - pad.left - pad.right) * (t - since) / span;
  const y = (v) => pad.top + (height - pad.top - pad.bottom) * (1 - Math.min(v, top) / top);
  // axes and labels
  g.strokeStyle = colour("--line");
  g.fillStyle = colour("--dim");
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (const fraction of [0, 0.5, 1]) {
    const value = top * fraction;
    g.beginPath();
    g.moveTo(pad.left, y(value));
    g.lineTo(width - pad.right, y(value));
    g.stroke();
    g.fillText(value.toFixed(2), 4, y(value) + 4);
  }
  g.fillText(`-${Math.round(span)} s`, pad.left, height - 4);
  g.fillText("now", width - pad.right - 22, height - 4);
  // the score, green where good, red where the verdict was DEFECT
  g.strokeStyle = colour("--ok");
  g.lineWidth = 1.5;
  g.beginPath();
  shown.forEach(([, t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
  g.stroke();
  g.fillStyle = colour("--defect");
  for (const [, t, v, defect] of shown) {
    if (defect) {
      g.beginPath();
      g.arc(x(t), y(v), 3, 0, 2 * Math.PI);
      g.fill();
    }
  }
  if (state.threshold !== null) {
    g.strokeStyle = colour("--threshold");
    g.setLineDash([6, 4]);
    g.lineWidth = 1.5;
    g.beginPath();
    g.moveTo(pad.left, y(state.threshold));
    g.lineTo(width - pad.right, y(state.threshold));
    g.stroke();
    g.setLineDash([]);
  }
}

async function pollStatus() {
  try {
    showStatus(await getJson("/api/status"));
    const scores = await getJson(`/api/scores?since=${state.lastFrame}`);
    if (scores.threshold !== null) state.threshold = scores.threshold;
    if (scores.points.length) {
      if (scores.points[0][0] <= state.lastFrame) state.points = [];  // a new run restarted the frame count
      state.points.push(...scores.points);
      state.lastFrame = scores.points[scores.points.length - 1][0];
      const oldest = state.points[state.points.length - 1][1] - scores.window_s;
      while (state.points.length && state.points[0][1] < oldest) state.points.shift();
    }
    drawChart();
  } catch (error) {
    banner(`Lost the connection to edgekd (${error.message}); retrying.`);
  }
  if (state.running) setTimeout(pollStatus, POLL_MS);
}

function openViewer(defect) {
  $("viewer-image").src = defect.image;
  $("viewer-caption").textContent =
    `frame ${defect.frame}${defect.file ? " (" + defect.file + ")" : ""} · score ${defect.score.toFixed(3)} · ` +
    `${new Date(defect.time * 1000).toLocaleTimeString()} · ${defect.regions.length} region(s)`;
  $("viewer").hidden = false;
}

async function pollGallery() {
  try {
    const { defects } = await getJson("/api/defects");
    const ids = defects.map((d) => d.id).join(",");
    if (ids !== state.galleryIds) {
      state.galleryIds = ids;
      $("defect-count").textContent = defects.length ? `(${defects.length} newest)` : "";
      const figures = defects.map((defect) => {
        const figure = document.createElement("figure");
        const image = document.createElement("img");
        image.src = defect.thumb;
        image.alt = `defect at frame ${defect.frame}`;
        image.dataset.frame = defect.frame;
        const caption = document.createElement("figcaption");
        caption.textContent = `#${defect.frame} · ${defect.score.toFixed(3)} · ${new Date(defect.time * 1000).toLocaleTimeString()}`;
        figure.append(image, caption);
        figure.addEventListener("click", () => openViewer(defect));
        return figure;
      });
      if (figures.length) $("gallery").replaceChildren(...figures);
    }
  } catch (error) {
    // the status poll reports lost connections
  }
  if (state.running) setTimeout(pollGallery, GALLERY_POLL_MS);
}

function keepStreamAlive() {
  // A stream that breaks (runner restarted by systemd) is reopened; the query only defeats the cache.
  const stream = $("stream");
  stream.addEventListener("error", () => {
    if (state.running) setTimeout(() => { stream.src = `/stream.mjpg?t=${Date.now()}`; }, 2000);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("#window button")) {
    button.addEventListener("click", () => {
      state.windowS = Number(button.dataset.seconds);
      for (const other of document.querySelectorAll("#window button")) other.classList.toggle("on", other === button);
      drawChart();
    });
  }
  $("viewer").addEventListener("click", () => { $("viewer").hidden = true; });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") $("viewer").hidden = true; });
  window.addEventListener("resize", drawChart);
  keepStreamAlive();
  pollStatus();
  pollGallery();
});

// The live picture: the annotated heatmap, or the plain camera image
for (const button of document.querySelectorAll("#view button")) {
  button.addEventListener("click", () => {
    for (const other of document.querySelectorAll("#view button")) other.classList.toggle("on", other === button);
    $("stream").src = button.dataset.view ? `/stream.mjpg?view=${button.dataset.view}` : "/stream.mjpg";
  });
}
