// The demo page: upload or pick an image, show its nearest catalogue entries. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;

function fact(name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  $("facts").append(dt, dd);
}

async function loadInfo() {
  const response = await fetch("/api/info");
  info = await response.json();
  fact("code", `${info.num_bits} bits`);
  fact("database", `${info.database_size.toLocaleString()} images`);
  // Measured by training's evaluation (eval_results.json in the workdir), on its own protocol.
  const ev = info.eval || {};
  const mapKey = Object.keys(ev).find((k) => k.startsWith("map_at_"));
  if (ev.map_all !== undefined) fact("measured mAP", ev.map_all.toFixed(3));
  else fact("measured mAP", "not measured");
  if (mapKey) fact(mapKey.replace("map_at_", "mAP@"), ev[mapKey].toFixed(3));
  fact("model step", info.step);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

function card(entry, extra, asymmetric) {
  const li = document.createElement("li");
  li.className = "result";
  li.dataset.id = entry.id;
  const img = document.createElement("img");
  img.alt = entry.clothing_type || `entry ${entry.id}`;
  img.loading = "lazy";
  if (entry.image_url) img.src = entry.image_url;
  const caption = document.createElement("div");
  caption.className = "caption";
  const type = document.createElement("span");
  type.className = "type";
  type.textContent = entry.clothing_type ?? "?";
  caption.append(type);
  if (extra !== undefined) {
    const distance = document.createElement("span");
    distance.className = "distance";
    distance.textContent = `d = ${extra}`;
    distance.title = `Hamming distance: ${extra} of ${info.num_bits} bits differ` +
      (asymmetric === undefined ? "" :
        `; re-ranked by the photo's confidence in each bit: ${asymmetric.toFixed(3)}`);
    caption.append(distance);
  }
  li.title = entry.path || "";
  li.append(img, caption);
  return li;
}

function showResults(data, label) {
  $("error").hidden = true;
  const results = $("results");
  results.replaceChildren(...data.results.map((r) => card(r, r.distance, r.asymmetric_distance)));
  const timing = data.timing_ms ? ` in ${data.timing_ms.total.toFixed(0)} ms` : "";
  $("status").textContent = `${data.results.length} nearest to ${label}${timing}`;
  results.querySelectorAll(".result").forEach((li) =>
    li.addEventListener("click", () => searchSimilar(li.dataset.id)));
}

async function readJson(response) {
  let body = {};
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return body;
}

async function searchUpload(file) {
  if (!file) { showError("Choose a photo first."); return; }
  $("status").textContent = "searching…";
  const form = new FormData();
  form.append("image", file);
  try {
    const response = await fetch(`/api/search?k=${$("k").value}`, { method: "POST", body: form });
    showResults(await readJson(response), `your photo (${file.name})`);
  } catch (e) {
    showError(e.message);
  }
}

async function searchSimilar(id) {
  $("status").textContent = "searching…";
  try {
    const data = await readJson(await fetch(`/api/items/${id}/similar?k=${$("k").value}`));
    const preview = $("query-preview");
    if (data.query.image_url) { preview.src = data.query.image_url; preview.hidden = false; }
    $("drop-text").textContent = `catalogue image ${id} (${data.query.clothing_type})`;
    showResults(data, `catalogue image ${id}`);
  } catch (e) {
    showError(e.message);
  }
}

async function loadPicker() {
  try {
    const data = await readJson(await fetch("/api/items?random=true&limit=12"));
    const picker = $("picker");
    picker.replaceChildren(...data.items.map((entry) => {
      const li = card(entry);
      li.addEventListener("click", () => searchSimilar(entry.id));
      return li;
    }));
    $("picker-box").hidden = !info.has_images;
  } catch (e) {
    showError(e.message);
  }
}

function preview(file) {
  const img = $("query-preview");
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  $("drop-text").textContent = file.name;
}

function setUp() {
  const input = $("file");
  input.addEventListener("change", () => {
    if (input.files[0]) { preview(input.files[0]); searchUpload(input.files[0]); }
  });
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchUpload(input.files[0]);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) { preview(file); searchUpload(file); }
  });
  $("shuffle").addEventListener("click", loadPicker);
}

setUp();
loadInfo().then(loadPicker).catch((e) => showError(`cannot reach the server: ${e.message}`));
