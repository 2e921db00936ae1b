// vidpipe's page: submit jobs, follow them (Server-Sent Events), watch the ranks, play the videos. No build step,
// no library: the browser's fetch, EventSource and DOM.
"use strict";

const TOKEN_KEY = "vidpipe-token";
// Every field the form has; those marked data-field show only when the server's model takes them (SVD: fps and
// motion; Wan: the prompts and guidance scales). Only the fields shown are sent.
const FIELDS = ["prompt", "negative_prompt", "samples", "seed", "steps", "frames", "height", "width", "fps",
  "motion_bucket_id", "guidance_scale", "guidance_scale_2"];
const SVD_FIELDS = ["fps", "motion_bucket_id"]; // a server that does not say which fields it takes runs SVD
const FAMILY_NAMES = { svd: "Stable Video Diffusion", wan: "Wan" };
const FINISHED = ["done", "failed", "cancelled"];
const jobs = new Map(); // id -> {card, source}
let defaultsFilled = false;

const $ = (selector, root = document) => root.querySelector(selector);

// 1. Talking to the server: the token, when the server has one, goes in a header, or in the URL where a header
//    cannot be sent (EventSource, <video src>).
function token() { return localStorage.getItem(TOKEN_KEY) || ""; }
function withToken(url) {
  return token() ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token())}` : url;
}
async function api(path, options = {}) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) { askForToken("the server refused the token"); }
  return response;
}
function askForToken(message) {
  $("#token-panel").hidden = false;
  $("#token-error").textContent = message || "";
}
$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token-panel").hidden = true;
  loadJobs();
});

// 2. The header and the ranks table, from /v1/health.
async function loadHealth() {
  let health;
  try {
    health = await (await fetch("/v1/health")).json();
  } catch {
    setBadge($("#health-status"), "offline");
    return;
  }
  setBadge($("#health-status"), health.status);
  const fleet = (health.nodes || []).length > 1 ? `node ${health.node} · ` : "";
  $("#health-plan").textContent = `${fleet}plan ${health.plan} on ${health.ranks} ${health.device} rank(s)`;
  const family = FAMILY_NAMES[health.family];
  $("#health-model").textContent = `model ${health.model}` + (family ? ` (${family})` : "");
  $("#health-queue").textContent = `queue ${health.queue_length}` +
    (health.restarts ? ` · restarts ${health.restarts}` : "") +
    (health.last_error ? ` · last error: ${health.last_error}` : "");
  if (health.auth && !token()) askForToken();
  if (!defaultsFilled && health.defaults) {
    showFields(health.fields || SVD_FIELDS);
    fillDefaults(health.defaults);
  }
  const rows = health.rank_status.map((rank) => `<tr><td>${rank.rank}</td><td>${rank.phase}</td>` +
    `<td>${rank.job ? rank.job.slice(0, 8) : "-"}</td><td>${rank.sample ?? "-"}</td>` +
    `<td>${rank.step ?? "-"}${rank.block ? ` (${rank.block})` : ""}</td></tr>`);
  $("#ranks tbody").innerHTML = rows.join("");
  renderNodes(health);
}

// The fleet's nodes (a store shared by several nodes; docs/fleet.md): shown once there is more than this one.
function renderNodes(health) {
  const nodes = health.nodes || [];
  $("#nodes-card").hidden = nodes.length < 2;
  $("#nodes tbody").innerHTML = nodes.map((node) => {
    const self = node.name === health.node ? " (this one)" : "";
    return `<tr data-node="${escapeHtml(node.name)}"><td>${escapeHtml(node.name)}${self}</td>` +
      `<td>${escapeHtml(node.status)}</td><td>${escapeHtml(node.plan)}</td><td>${node.gpus}</td>` +
      `<td>${node.seconds_since_heartbeat} s ago</td></tr>`;
  }).join("");
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function fieldLabel(name) { return $(`#job-form label[data-field=${name}]`); }
function isShown(name) { const label = fieldLabel(name); return !label || !label.hidden; }

function showFields(names) {
  for (const label of document.querySelectorAll("#job-form label[data-field]")) {
    label.hidden = !names.includes(label.dataset.field);
  }
}

function fillDefaults(defaults) {
  for (const name of FIELDS.filter(isShown)) {
    const input = $(`#job-form [name=${name}]`);
    if (input && input.value === "" && defaults[name] !== undefined) input.value = defaults[name];
  }
  defaultsFilled = true;
}

function setBadge(element, status) {
  element.textContent = status;
  element.dataset.state = status; // the colour; its classes stay, so the element can be found again
}

// 3. The form: an image by picker or drop, the options, one-line errors next to the field at fault.
const imageInput = $("#image");
const drop = $("#drop");
imageInput.addEventListener("change", showPreview);
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files.length) {
    imageInput.files = event.dataTransfer.files;
    showPreview();
  }
});

function showPreview() {
  const file = imageInput.files[0];
  const preview = $("#preview");
  if (!file) { preview.hidden = true; return; }
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("#drop-text").textContent = file.name;
  showError("image", "");
}

function showError(field, message) {
  for (const element of document.querySelectorAll(".error[data-for]")) {
    if (element.dataset.for === field || (field === null)) element.textContent = field === null ? "" : message;
  }
  for (const input of document.querySelectorAll("#job-form .invalid")) input.classList.remove("invalid");
  const input = $(`#job-form [name=${field}]`);
  if (input && message) input.classList.add("invalid");
}

// The API's one-line errors start with the field at fault ("steps 0: must be at least 1"; "image: ...").
function fieldOf(message) {
  const first = message.split(/[\s:]/)[0];
  if (first === "input" || first === "image" || message.startsWith("image")) return "image";
  if (FIELDS.includes(first) || first === "format") return first;
  return "form";
}

$("#job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null, "");
  const file = imageInput.files[0];
  if (!file) { showError("image", "image: choose or drop an image file first"); return; }
  const data = new FormData();
  data.append("image", file, file.name);
  for (const name of FIELDS.filter(isShown)) {
    const value = $(`#job-form [name=${name}]`).value.trim();
    if (value !== "") data.append(name, value);
  }
  const formats = [...document.querySelectorAll("#job-form [name=format]:checked")].map((box) => box.value);
  if (!formats.length) { showError("format", "format: choose at least one of mp4, gif, png"); return; }
  data.append("format", formats.join(","));
  const button = $("#submit");
  button.disabled = true;
  try {
    const response = await api("/v1/jobs", { method: "POST", body: data });
    const answer = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
    if (response.status !== 202) {
      const message = answer.error || `the server answered ${response.status}`;
      showError(fieldOf(message), message);
      return;
    }
    const state = await (await api(answer.url)).json();
    renderJob(state, true);
    follow(state.id);
  } catch (error) {
    showError("form", `cannot reach the server: ${error}`);
  } finally {
    button.disabled = false;
  }
});

// 4. Jobs: a card each, kept up to date from the job's event stream; the history comes from /v1/jobs, so it
//    survives a reload and a server restart.
function renderJob(state, newest = false) {
  let entry = jobs.get(state.id);
  if (!entry) {
    const card = $("#job-template").content.firstElementChild.cloneNode(true);
    card.dataset.id = state.id;
    $(".cancel", card).addEventListener("click", () => cancel(state.id));
    $(".input", card).src = withToken(state.input_url);
    entry = { card, source: null };
    jobs.set(state.id, entry);
    if (newest) $("#jobs").prepend(card); else $("#jobs").append(card);
  }
  const card = entry.card;
  card.dataset.status = state.status;
  $(".job-name", card).textContent = `${state.image} · ${state.id.slice(0, 8)}`;
  setBadge($(".status", card), state.status);
  $(".position", card).textContent = state.queue_position ? `#${state.queue_position} in the queue` : "";
  $(".node", card).textContent = state.node ? `on ${state.node}` + (state.attempts > 1 ? ` (attempt ${state.attempts})` : "") : "";
  const options = Object.entries(state.options).map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`);
  $(".job-options", card).textContent = options.join(" · ") || "default options";
  const progress = state.progress;
  $("progress", card).max = Math.max(1, progress.steps_total);
  $("progress", card).value = progress.steps_done;
  $(".steps", card).textContent = `${progress.steps_done}/${progress.steps_total} steps · ` +
    `${progress.samples_done}/${progress.samples_total} videos`;
  $(".cancel", card).hidden = FINISHED.includes(state.status);
  $(".job-error", card).textContent = state.error || "";
  renderOutputs($(".outputs", card), state.files);
  $("#no-jobs").hidden = jobs.size > 0;
}

function renderOutputs(container, files) {
  const samples = new Map(); // "s0_seed3" -> files
  for (const file of files) {
    const match = file.name.match(/_s(\d+)_seed(\d+)/);
    if (!match || file.name.startsWith("input/")) continue;
    const key = `s${match[1]}_seed${match[2]}`;
    if (!samples.has(key)) samples.set(key, []);
    samples.get(key).push(file);
  }
  for (const [key, sampleFiles] of samples) {
    if (container.querySelector(`figure[data-sample="${key}"]`)) continue;
    const figure = document.createElement("figure");
    figure.dataset.sample = key;
    const mp4 = sampleFiles.find((f) => f.name.endsWith(".mp4"));
    const still = sampleFiles.find((f) => f.name.endsWith(".gif") || f.name.endsWith(".png"));
    if (mp4) {
      const video = document.createElement("video");
      Object.assign(video, { controls: true, loop: true, muted: true, autoplay: true, playsInline: true });
      video.src = withToken(mp4.url);
      figure.append(video);
    } else if (still) {
      const image = document.createElement("img");
      image.src = withToken(still.url);
      image.alt = still.name;
      figure.append(image);
    }
    const caption = document.createElement("figcaption");
    const pngs = sampleFiles.filter((f) => f.name.endsWith(".png"));
    for (const file of sampleFiles.filter((f) => !f.name.endsWith(".png"))) {
      caption.append(link(file.url, file.name.split("/").pop()));
    }
    if (pngs.length) caption.append(link(pngs[0].url, `${pngs.length} PNG frames (first)`));
    figure.append(caption);
    container.append(figure);
  }
}

function link(url, text) {
  const anchor = document.createElement("a");
  anchor.href = withToken(url);
  anchor.textContent = text;
  anchor.download = text;
  return anchor;
}

function follow(id) {
  const entry = jobs.get(id);
  if (!entry || entry.source) return;
  const source = new EventSource(withToken(`/v1/jobs/${id}/events`));
  entry.source = source;
  const update = (event) => renderJob(JSON.parse(event.data));
  source.addEventListener("progress", update);
  source.addEventListener("end", (event) => { update(event); source.close(); entry.source = null; });
  source.onerror = () => { source.close(); entry.source = null; setTimeout(() => refresh(id), 2000); };
}

async function refresh(id) {
  const response = await api(`/v1/jobs/${id}`);
  if (!response.ok) return;
  const state = await response.json();
  renderJob(state);
  if (!FINISHED.includes(state.status)) follow(id);
}

async function cancel(id) {
  const response = await api(`/v1/jobs/${id}`, { method: "DELETE" });
  if (response.ok) renderJob(await response.json());
}

async function loadJobs() {
  // The list holds summaries; each card needs the job's files and options: one GET each, newest first.
  const response = await api("/v1/jobs?limit=20");
  if (!response.ok) return;
  const { jobs: recent } = await response.json();
  for (const summary of recent) await refresh(summary.id);
}

loadHealth();
loadJobs();
setInterval(loadHealth, 1000);
