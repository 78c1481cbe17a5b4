// The search page: one upload (or a stored instance's UID) -> POST v1/search -> a grid of
// neighbours. Plain fetch, no framework, nothing loaded from outside this service.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const fileInput = $("file-input");
const dropZone = $("drop-zone");
const statusLine = $("status");
const results = $("results");
const template = $("result-template");
const keyInput = $("key-input");

keyInput.value = sessionStorage.getItem("medhash-api-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("medhash-api-key", keyInput.value);
  loadStats();
});

function headers() {
  return keyInput.value ? { "X-API-Key": keyInput.value } : {};
}

function shortUid(uid) {
  return uid.length > 16 ? `…${uid.slice(-14)}` : uid;
}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function detailOf(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// With an API key an <img src> cannot send the header, so thumbnails are fetched as blobs.
async function showImage(img, url) {
  if (!keyInput.value) {
    img.src = url;
    return;
  }
  const response = await fetch(url, { headers: headers() });
  if (response.ok) img.src = URL.createObjectURL(await response.blob());
}

function list(id) {
  return $(id).value.split(",").map((item) => item.trim()).filter(Boolean);
}

// The search options and filters; empty filters are left out (they would match nothing).
function options() {
  const k = Math.min(100, Math.max(1, Number($("k-input").value) || 10));
  const chosen = { k, include_excluded: $("excluded-input").checked };
  for (const [name, id] of [["modality", "modality-input"], ["body_part", "body-part-input"],
                            ["calling_ae", "calling-ae-input"]]) {
    const values = list(id);
    if (values.length) chosen[name] = values;
  }
  if ($("date-from-input").value) chosen.study_date_from = $("date-from-input").value;
  if ($("date-to-input").value) chosen.study_date_to = $("date-to-input").value;
  if ($("same-patient-input").checked) chosen.exclude_same_patient = true;
  if ($("same-study-input").checked) chosen.exclude_same_study = true;
  return chosen;
}

async function search(body, label) {
  say(`Searching with ${label}…`);
  form.setAttribute("aria-busy", "true");
  results.replaceChildren();
  const started = performance.now();
  try {
    const init = { method: "POST", headers: headers(), body };
    if (!(body instanceof FormData)) init.headers["Content-Type"] = "application/json";
    const response = await fetch("v1/search", init);
    if (!response.ok) {
      if (response.status === 401) $("key-details").open = true;
      say(`Search failed: ${await detailOf(response)}`, true);
      return;
    }
    const answer = await response.json();
    render(answer);
    const ms = Math.round(performance.now() - started);
    say(`${answer.results.length} neighbours of ${label} in ${ms} ms ` +
        `(index generation ${answer.generation}, model ${answer.model_version.slice(0, 12)}).`);
  } catch (error) {
    say(`Search failed: ${error.message}. Is the service running, and is the file within its upload limit?`, true);
  } finally {
    form.removeAttribute("aria-busy");
  }
}

function searchFile(file) {
  if (!file) return;
  const body = new FormData();
  body.append("file", file);
  for (const [name, value] of Object.entries(options())) {
    body.append(name, Array.isArray(value) ? value.join(",") : String(value));
  }
  search(body, file.name);
}

function searchInstance(uid) {
  search(JSON.stringify({ sop_instance_uid: uid, ...options() }), `instance ${shortUid(uid)}`);
  window.scrollTo({ top: 0, behavior: "smooth" });
}

function render(answer) {
  const query = answer.query;
  const thumb = $("query-thumb");
  thumb.alt = "The query as the model sees it";
  if (query.thumbnail) thumb.src = query.thumbnail;
  else if (query.thumbnail_url) showImage(thumb, query.thumbnail_url);
  const info = $("query-info");
  info.replaceChildren();
  const frames = query.frames.length === query.slices
    ? (query.slices === 1 ? "1" : `all ${query.slices}`)
    : `${query.frames.length} of ${query.slices} (evenly spaced)`;
  for (const [term, value] of [["Source", query.source], ["Frames searched", frames],
                               ["Model", answer.model_version.slice(0, 12)]]) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    info.append(dt, dd);
  }
  $("query").hidden = false;
  $("results-note").hidden = answer.results.length > 0;
  if (!answer.results.length) {
    $("results-note").textContent = "No stored image matched (the index may still be empty).";
  }
  answer.results.forEach((hit, rank) => {
    const card = template.content.firstElementChild.cloneNode(true);
    const img = card.querySelector(".thumb");
    img.alt = `Result ${rank + 1}: frame ${hit.frame} of ${hit.sop_instance_uid}, ` +
              `distance ${hit.distance}`;
    showImage(img, hit.thumbnail_url);
    const distance = card.querySelector(".distance");
    distance.textContent = `distance ${hit.distance}`;
    distance.classList.toggle("exact", hit.distance === 0);
    card.querySelector(".modality").textContent = hit.modality || "—";
    card.querySelector(".body-part").textContent = hit.body_part || "—";
    card.querySelector(".frame").textContent = String(hit.frame);
    const link = card.querySelector(".uid");
    link.textContent = shortUid(hit.sop_instance_uid);
    link.title = hit.sop_instance_uid;
    link.href = `v1/instances/${encodeURIComponent(hit.sop_instance_uid)}`;
    for (const [selector, url] of [[".viewer", hit.viewer_url], [".wado", hit.wado_url]]) {
      const anchor = card.querySelector(selector);
      if (url) {
        anchor.href = url;
        anchor.hidden = false;
      }
    }
    if (hit.excluded) card.classList.add("excluded");
    card.querySelector(".again").addEventListener("click", () => searchInstance(hit.sop_instance_uid));
    card.dataset.distance = String(hit.distance);
    card.dataset.uid = hit.sop_instance_uid;
    results.append(card);
  });
}

async function loadStats() {
  try {
    const response = await fetch("v1/stats", { headers: headers() });
    if (!response.ok) return;
    const stats = await response.json();
    const generation = stats.index.generation ?? "none yet";
    $("stats").textContent = `${stats.total} instances stored, ${stats.states.indexed} indexed · ` +
      `index generation ${generation} (${stats.index.size} slices)`;
  } catch {
    // the stats line is a courtesy; searching reports its own errors
  }
}

fileInput.addEventListener("change", () => searchFile(fileInput.files[0]));
form.addEventListener("submit", (event) => event.preventDefault());
for (const type of ["dragenter", "dragover"]) {
  dropZone.addEventListener(type, (event) => {
    event.preventDefault();
    dropZone.classList.add("over");
  });
}
for (const type of ["dragleave", "drop"]) {
  dropZone.addEventListener(type, () => dropZone.classList.remove("over"));
}
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  searchFile(event.dataTransfer.files[0]);
});
loadStats();
