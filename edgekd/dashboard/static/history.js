// The history page: defect events from the run's event store (edgekd run --events), filtered, newest first.
// Read-only: GET requests only, every filter is a query parameter of /api/history.
"use strict";

const $ = (id) => document.getElementById(id);

function banner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}

function query() {
  const params = new URLSearchParams();
  for (const [id, name] of [["since", "since"], ["until", "until"], ["min-score", "min_score"], ["camera", "camera"],
                            ["limit", "limit"]]) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  return params.toString();
}

function card(event) {
  const figure = document.createElement("figure");
  const image = document.createElement("img");
  image.src = event.picture;
  image.alt = `frame ${event.frame}`;
  image.loading = "lazy";
  const caption = document.createElement("figcaption");
  const when = new Date(event.time * 1000).toLocaleString();
  caption.textContent = `${when} · frame ${event.frame} · score ${Number(event.score).toFixed(3)} · ` +
    `${event.regions.length} region(s)` + (event.part ? ` · part ${event.part}` : "") + ` · ${event.camera}`;
  figure.append(image, caption);
  figure.addEventListener("click", () => {
    $("viewer-image").src = event.picture;
    $("viewer-mask").src = event.mask;
    $("viewer-caption").textContent = caption.textContent;
    $("viewer").hidden = false;
  });
  return figure;
}

async function load() {
  const response = await fetch(`/api/history?${query()}`, { cache: "no-store", credentials: "same-origin" });
  if (!response.ok) {
    const text = response.headers.get("Content-Type").startsWith("application/json")
      ? (await response.json()).error : await response.text();
    banner(text);
    $("events").replaceChildren();
    return;
  }
  banner("");
  const answer = await response.json();
  const list = $("events");
  list.replaceChildren(...answer.events.map(card));
  if (!answer.events.length) list.innerHTML = '<p class="dim">no events match</p>';
  $("summary").textContent = `${answer.events.length} event(s)` +
    (answer.events.length === answer.limit ? ` (the newest ${answer.limit}: narrow the filter for more)` : "");
}

$("load").addEventListener("click", () => load().catch((error) => banner(String(error))));
$("viewer").addEventListener("click", () => { $("viewer").hidden = true; });
load().catch((error) => banner(String(error)));
