// The imagejobs web console: plain JavaScript modules, no build step, nothing loaded from
// elsewhere (the gateway serves it with a Content-Security-Policy of 'self' only). Every
// call goes through the REST API on this same listener (api.js says which).
"use strict";

import { API, Client, KINDS, describe } from "./api.js";
import { $, el, showError } from "./dom.js";
import { SubmitForm } from "./form.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const LIST_LIMIT = 20; // jobs shown
const STATS_EVERY_MS = 3000;
const LIST_EVERY_MS = 10000; // picks up jobs submitted elsewhere
// Browsers open at most 6 HTTP/1.1 connections per host and each live stream holds one:
// leave room for the other requests.
const MAX_STREAMS = 3;
const TICKS_PER_USD = 1e10; // `usage.cost_in_usd_ticks`, xAI's unit

const client = new Client();
const api = (path, options) => client.json(path, options);
// an accepted submit joins the list and opens in the job's view
const form = new SubmitForm(client, (kind, job) => {
  remember(kind, job);
  renderJobs();
  select(job.id);
});
const state = {
  jobs: new Map(), // id -> {kind, job}
  order: [], // ids, newest first
  requests: new Map(), // id -> Promise of the job's request
  streams: new Map(), // id -> AbortController
  selected: null,
};

// --- what a job says ---------------------------------------------------------------

function extra(job) {
  if (job.result && job.result.extra_fields) return job.result.extra_fields;
  if (job.error && job.error.extra_fields) return job.error.extra_fields;
  return {};
}

function latency(job) {
  const ms = extra(job).latency;
  return typeof ms === "number" ? `${(ms / 1000).toFixed(2)} s` : "—";
}

function cost(job) {
  // the job's cost as the worker computed it (the provider's bill, else the price table);
  // jobs stored before costs were computed: the bill the provider reported, if any
  const usd = extra(job).cost_usd;
  if (typeof usd === "number") return `$${usd.toFixed(4)}`;
  const usage = job.result && job.result.usage;
  const ticks = usage && usage.cost_in_usd_ticks;
  return typeof ticks === "number" ? `$${(ticks / TICKS_PER_USD).toFixed(4)}` : "—";
}

function when(text) {
  return text ? new Date(text).toLocaleString() : "";
}

function imagePath(kind, job, index) {
  return `${API}/${kind}/${encodeURIComponent(job.id)}/images/${index}`;
}

function imageCount(job) {
  return job.status === "completed" && job.result ? (job.result.data || []).length : 0;
}

function picture(path, index, className) {
  const img = el("img", { alt: `image ${index}`, className, dataset: { index: String(index) } });
  client.image(path).then(
    (url) => {
      img.src = url;
    },
    (err) => {
      img.alt = `image ${index}: ${describe(err)}`;
    },
  );
  return img;
}

function request(id) {
  const entry = state.jobs.get(id);
  if (!state.requests.has(id)) {
    const promise = api(`${API}/${entry.kind}/${encodeURIComponent(id)}/request`);
    promise.catch(() => state.requests.delete(id)); // try again next time
    state.requests.set(id, promise);
  }
  return state.requests.get(id);
}

// --- the list ----------------------------------------------------------------------

function remember(kind, job) {
  const known = state.jobs.get(job.id);
  // a stream may be ahead of a list read taken earlier: never go back from terminal
  if (known && TERMINAL.has(known.job.status) && !TERMINAL.has(job.status)) return;
  state.jobs.set(job.id, { kind, job });
  if (!state.order.includes(job.id)) {
    state.order.push(job.id);
    state.order.sort((a, b) =>
      state.jobs.get(b).job.created_at.localeCompare(state.jobs.get(a).job.created_at),
    );
    state.order = state.order.slice(0, LIST_LIMIT * 2);
  }
}

async function loadJobs() {
  try {
    const pages = await Promise.all(
      KINDS.map((kind) =>
        api(`${API}/jobs?kind=${kind}&limit=${LIST_LIMIT}`).then((page) =>
          page.jobs.map((job) => [kind, job]),
        ),
      ),
    );
    for (const [kind, job] of pages.flat()) remember(kind, job);
    $("jobs-error").hidden = true;
  } catch (err) {
    showError($("jobs-error"), err);
  }
  renderJobs();
  followMore();
}

function row(id) {
  const { kind, job } = state.jobs.get(id);
  const thumbs = el("td", { className: "thumbs" });
  for (let i = 0; i < imageCount(job); i++) {
    thumbs.append(picture(imagePath(kind, job, i), i, "thumb"));
  }
  const model = el("td", {}, "…");
  const provider = el("td", {}, extra(job).provider || "…");
  request(id).then(
    (req) => {
      model.textContent = req.model;
      if (!extra(job).provider) provider.textContent = req.model.split("/")[0];
    },
    () => {
      model.textContent = extra(job).model_requested || "?";
    },
  );
  const tr = el(
    "tr",
    { dataset: { jobId: id, status: job.status }, className: id === state.selected ? "selected" : "" },
    thumbs,
    el("td", {}, el("span", { className: `status status-${job.status}` }, job.status)),
    el("td", {}, kind),
    model,
    provider,
    el("td", {}, latency(job)),
    el("td", {}, cost(job)),
    el("td", {}, when(job.created_at)),
  );
  tr.addEventListener("click", () => select(id));
  return tr;
}

function renderJobs() {
  const ids = state.order.slice(0, LIST_LIMIT);
  $("jobs").tBodies[0].replaceChildren(...ids.map(row));
  $("jobs-empty").hidden = ids.length > 0;
}

function renderRow(id) {
  const old = document.querySelector(`#jobs tr[data-job-id="${CSS.escape(id)}"]`);
  if (old) old.replaceWith(row(id));
  else renderJobs();
}

// --- live updates ------------------------------------------------------------------

function update(kind, job) {
  remember(kind, job);
  renderRow(job.id);
  if (state.selected === job.id) renderView();
}

// Each running job's Server-Sent Events move its row (and its view) on.
async function follow(id) {
  const entry = state.jobs.get(id);
  if (!entry || TERMINAL.has(entry.job.status) || state.streams.has(id)) return;
  const controller = new AbortController();
  state.streams.set(id, controller);
  try {
    await client.events(entry.kind, id, (job) => update(entry.kind, job), controller.signal);
  } catch (err) {
    if (err.name !== "AbortError") console.warn(`events of ${id}: ${describe(err)}`);
  } finally {
    state.streams.delete(id);
    setTimeout(followMore, 0);
  }
}

// Follow the selected job first, then the newest running ones, up to MAX_STREAMS.
function followMore() {
  const running = state.order.filter((id) => !TERMINAL.has(state.jobs.get(id).job.status));
  if (state.selected && running.includes(state.selected)) {
    running.unshift(state.selected);
  }
  for (const id of running) {
    if (state.streams.size >= MAX_STREAMS) break;
    follow(id);
  }
}

function stopStreams() {
  for (const controller of state.streams.values()) controller.abort();
  state.streams.clear();
}

// --- one job -----------------------------------------------------------------------

function select(id) {
  state.selected = id;
  $("job-view").hidden = false;
  for (const tr of document.querySelectorAll("#jobs tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.jobId === id);
  }
  $("job-request").textContent = "…";
  request(id).then(
    (req) => {
      if (state.selected === id) $("job-request").textContent = JSON.stringify(req, null, 2);
    },
    (err) => {
      if (state.selected === id) $("job-request").textContent = describe(err);
    },
  );
  renderView();
  followMore();
}

function shown(job) {
  // the job as served, with inlined images cut short
  return JSON.stringify(
    job,
    (name, value) =>
      name === "b64_json" && typeof value === "string" ? `${value.slice(0, 32)}…` : value,
    2,
  );
}

function renderView() {
  const entry = state.jobs.get(state.selected);
  if (!entry) return;
  const { kind, job } = entry;
  $("job-id").textContent = job.id;
  const status = el("span", { className: `status status-${job.status}` }, job.status);
  const parts = [`${kind}`, `created ${when(job.created_at)}`];
  if (job.status_code !== undefined) parts.push(`status_code ${job.status_code}`);
  if (job.completed_at) parts.push(`ended ${when(job.completed_at)}`);
  if (job.status === "completed") parts.push(`latency ${latency(job)}`, `cost ${cost(job)}`);
  $("job-status").replaceChildren(status, ` · ${parts.join(" · ")}`);
  $("job-status").dataset.status = job.status;
  $("cancel-job").hidden = TERMINAL.has(job.status);
  const figures = [];
  for (let i = 0; i < imageCount(job); i++) {
    const img = picture(imagePath(kind, job, i), i, "full");
    const caption = el("figcaption", {}, `image ${i}`);
    img.addEventListener("load", () => {
      caption.textContent = `image ${i} · ${img.naturalWidth}×${img.naturalHeight}`;
    });
    figures.push(el("figure", {}, img, caption));
  }
  $("job-images").replaceChildren(...figures);
  const error = job.error;
  $("job-error").hidden = !error;
  if (error) {
    const e = error.error || {};
    $("job-error-summary").textContent =
      `${error.status_code} ${e.code || error.type}: ${e.message || ""}`;
    $("job-error-body").textContent = JSON.stringify(error, null, 2);
  }
  $("job-json").textContent = shown(job);
}

async function cancelSelected() {
  const entry = state.jobs.get(state.selected);
  if (!entry) return;
  try {
    const job = await api(`${API}/${entry.kind}/${encodeURIComponent(entry.job.id)}`, {
      method: "DELETE",
    });
    update(entry.kind, job);
  } catch (err) {
    $("job-status").append(` · cancel refused: ${describe(err)}`);
  }
}

// --- stats, key, start -------------------------------------------------------------

async function loadStats() {
  try {
    const stats = await api(`${API}/stats`);
    const q = stats.queue;
    const busy = stats.workers.reduce((sum, w) => sum + w.in_flight, 0);
    const slots = stats.workers.reduce((sum, w) => sum + w.concurrency, 0);
    $("stats").textContent =
      `queue: ${q.messages} (${q.undelivered} waiting) · ` +
      `workers: ${stats.workers.length} (${busy}/${slots} busy)`;
    $("stats").title = stats.workers.map((w) => `${w.id}: ${w.in_flight}/${w.concurrency}`).join("\n");
  } catch (err) {
    $("stats").textContent = `stats: ${describe(err)}`;
  }
}

function useKey(key) {
  client.useKey(key);
  $("key").value = key;
  $("key-state").textContent = key ? "key kept in this browser" : "anonymous";
  stopStreams();
  state.jobs.clear();
  state.order = [];
  state.requests.clear();
  state.selected = null;
  $("job-view").hidden = true;
  form.loadModels();
  loadJobs();
  loadStats();
}

function start() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useKey($("key").value.trim());
  });
  $("forget-key").addEventListener("click", () => useKey(""));
  $("refresh").addEventListener("click", loadJobs);
  $("cancel-job").addEventListener("click", cancelSelected);
  $("close-job").addEventListener("click", () => {
    state.selected = null;
    $("job-view").hidden = true;
  });
  setInterval(loadStats, STATS_EVERY_MS);
  setInterval(loadJobs, LIST_EVERY_MS);
  useKey(client.key);
}

start();
