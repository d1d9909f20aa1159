// The imagejobs web console: plain JavaScript, no build step, nothing loaded from
// elsewhere (the gateway serves it with a Content-Security-Policy of 'self' only).
//
// Everything goes through the public REST API on the same listener, with the caller's
// virtual key (kept in this browser's localStorage) as `x-bf-vk`:
//   GET  /v1/async/images/jobs?kind=K      the caller's recent jobs, per kind (the list
//                                          entries do not say their kind; the filter does)
//   GET  /v1/async/images/{kind}/{id}/events   live updates (Server-Sent Events, read with
//                                          fetch, since EventSource cannot send the key)
//   GET  /v1/async/images/{kind}/{id}/images/{i}   result images, as blobs (an <img> can't
//                                          send the key either)
//   GET  /v1/async/images/{kind}/{id}/request  the job's request as accepted
//   POST /v1/async/images/{kind}           submits: JSON, or multipart for uploads
//   DELETE /v1/async/images/{kind}/{id}    cancel
//   GET  /v1/async/images/models           the model list that feeds the form
//   GET  /v1/async/images/stats            queue depth and workers
"use strict";

(() => {
  const API = "/v1/async/images";
  const KINDS = ["generations", "edits", "variations"];
  const KIND_FLAG = { generations: "generation", edits: "edit", variations: "variation" };
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const KEY_STORAGE = "imagejobs.console.key";
  const LIST_LIMIT = 20; // jobs shown
  const STATS_EVERY_MS = 3000;
  const LIST_EVERY_MS = 10000; // picks up jobs submitted elsewhere
  // Browsers open at most 6 HTTP/1.1 connections per host and each live stream holds
  // one: leave room for the other requests.
  const MAX_STREAMS = 3;
  const TICKS_PER_USD = 1e10; // `usage.cost_in_usd_ticks`, xAI's unit

  const $ = (id) => document.getElementById(id);
  const state = {
    key: localStorage.getItem(KEY_STORAGE) || "",
    jobs: new Map(), // id -> {kind, job}
    order: [], // ids, newest first
    requests: new Map(), // id -> Promise of the job's request
    images: new Map(), // image path -> Promise of an object URL
    streams: new Map(), // id -> AbortController
    selected: null,
    models: null,
  };

  class ApiError extends Error {
    constructor(status, body) {
      const detail = body && body.error ? body.error.message : String(body || "");
      super(`HTTP ${status}: ${detail}`);
      this.status = status;
      this.body = body;
    }
  }

  function withKey(extra) {
    const headers = new Headers(extra || {});
    if (state.key) headers.set("x-bf-vk", state.key);
    return headers;
  }

  async function api(path, options = {}) {
    const response = await fetch(path, { ...options, headers: withKey(options.headers) });
    const text = await response.text();
    let body = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      // not JSON: keep the text
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // "404 job_not_found: job not found (param)" for the contract's error body
  function describe(err) {
    if (err instanceof ApiError && err.body && err.body.error) {
      const e = err.body.error;
      const param = e.param ? ` (${e.param})` : "";
      return `${err.status} ${e.code || e.type}: ${e.message}${param}`;
    }
    return String((err && err.message) || err);
  }

  function showError(element, err) {
    element.textContent = describe(err);
    if (err instanceof ApiError && err.body && typeof err.body === "object") {
      element.textContent += "\n" + JSON.stringify(err.body, null, 2);
    }
    element.hidden = false;
  }

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name in node) node[name] = value;
      else node.setAttribute(name, value);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

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

  // An object URL of a result image (fetched once, with the key).
  function image(path) {
    if (!state.images.has(path)) {
      state.images.set(
        path,
        fetch(path, { headers: withKey() }).then(async (response) => {
          if (!response.ok) throw new ApiError(response.status, await response.text());
          return URL.createObjectURL(await response.blob());
        }),
      );
    }
    return state.images.get(path);
  }

  function picture(path, index, className) {
    const img = el("img", { alt: `image ${index}`, className, dataset: { index: String(index) } });
    image(path).then(
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

  // Server-Sent Events over fetch: each `data:` is the job as GET prints it.
  async function follow(id) {
    const entry = state.jobs.get(id);
    if (!entry || TERMINAL.has(entry.job.status) || state.streams.has(id)) return;
    const controller = new AbortController();
    state.streams.set(id, controller);
    try {
      const url = `${API}/${entry.kind}/${encodeURIComponent(id)}/events`;
      const response = await fetch(url, {
        headers: withKey({ accept: "text/event-stream" }),
        signal: controller.signal,
      });
      if (!response.ok) throw new ApiError(response.status, await response.text());
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data: "))
            .map((line) => line.slice(6))
            .join("\n");
          if (data) update(entry.kind, JSON.parse(data));
        }
      }
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

  // --- the form ----------------------------------------------------------------------

  function kindChosen() {
    return document.querySelector("input[name=kind]:checked").value;
  }

  function fillModels() {
    const kind = kindChosen();
    document.body.className = `kind-${kind}`;
    const options = [];
    const notes = [];
    for (const provider of (state.models && state.models.providers) || []) {
      for (const family of provider.families) {
        if (family.status === "retired" || !family[KIND_FLAG[kind]]) continue;
        for (const model of family.models) {
          const label = family.status === "deprecated" ? `${model} (deprecated)` : model;
          options.push(el("option", { value: model, label }));
        }
        if (!family.models.length) notes.push(`${provider.name}/${family.pattern}`);
      }
    }
    $("models").replaceChildren(...options);
    $("model-note").textContent = notes.length ? `Also: ${notes.join(", ")}` : "";
  }

  async function loadModels() {
    try {
      state.models = await api(`${API}/models`);
    } catch (err) {
      state.models = null;
      $("model-note").textContent = `models: ${describe(err)}`;
      return;
    }
    fillModels();
  }

  // The form's fields as the request's: the JSON object merged over the named fields.
  function fields(kind) {
    const out = { model: $("model").value.trim() };
    const prompt = $("prompt").value.trim();
    if (prompt && kind !== "variations") out.prompt = prompt;
    const size = $("size").value.trim();
    if (size) out.size = size;
    const n = Number($("n").value);
    if (n && n !== 1) out.n = n;
    const text = $("extra").value.trim();
    if (text) {
      let more;
      try {
        more = JSON.parse(text);
      } catch (err) {
        throw new Error(`Other request fields: not JSON (${err.message})`);
      }
      if (!more || typeof more !== "object" || Array.isArray(more)) {
        throw new Error("Other request fields: a JSON object, please");
      }
      Object.assign(out, more);
    }
    return out;
  }

  function multipart(kind, values) {
    const form = new FormData();
    for (const [name, value] of Object.entries(values)) {
      if (Array.isArray(value)) value.forEach((v) => form.append(name, String(v)));
      else form.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    const files = Array.from($("image").files);
    if (kind === "edits") files.forEach((file) => form.append("image[]", file));
    else if (files.length) form.append("image", files[0]);
    if (kind === "edits" && $("mask").files.length) form.append("mask", $("mask").files[0]);
    return form;
  }

  async function submitJob(event) {
    event.preventDefault();
    const kind = kindChosen();
    const button = $("submit-button");
    $("submit-error").hidden = true;
    button.disabled = true;
    try {
      const values = fields(kind);
      const options = { method: "POST" };
      if (kind === "generations") {
        options.body = JSON.stringify(values);
        options.headers = { "content-type": "application/json" };
      } else {
        options.body = multipart(kind, values);
      }
      const job = await api(`${API}/${kind}`, options);
      remember(kind, job);
      renderJobs();
      select(job.id);
    } catch (err) {
      showError($("submit-error"), err);
    } finally {
      button.disabled = false;
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
    state.key = key;
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    $("key").value = key;
    $("key-state").textContent = key ? "key kept in this browser" : "anonymous";
    stopStreams();
    for (const promise of state.images.values()) {
      promise.then((url) => URL.revokeObjectURL(url), () => {});
    }
    state.jobs.clear();
    state.order = [];
    state.requests.clear();
    state.images.clear();
    state.selected = null;
    $("job-view").hidden = true;
    loadModels();
    loadJobs();
    loadStats();
  }

  function start() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      useKey($("key").value.trim());
    });
    $("forget-key").addEventListener("click", () => useKey(""));
    $("submit-form").addEventListener("submit", submitJob);
    for (const radio of document.querySelectorAll("input[name=kind]")) {
      radio.addEventListener("change", fillModels);
    }
    $("refresh").addEventListener("click", loadJobs);
    $("cancel-job").addEventListener("click", cancelSelected);
    $("close-job").addEventListener("click", () => {
      state.selected = null;
      $("job-view").hidden = true;
    });
    setInterval(loadStats, STATS_EVERY_MS);
    setInterval(loadJobs, LIST_EVERY_MS);
    useKey(state.key);
  }

  start();
})();
