// The console's REST client: every call goes to the public API on this same origin, with
// the caller's virtual key as `x-bf-vk` (kept in this browser's localStorage).
//
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

export const API = "/v1/async/images";
export const KINDS = ["generations", "edits", "variations"];
const KEY_STORAGE = "imagejobs.console.key";

// An answer that is not 2xx; `body` is the contract's error body when the API made it.
export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.error ? body.error.message : String(body || "");
    super(`HTTP ${status}: ${detail}`);
    this.status = status;
    this.body = body;
  }
}

// "404 job_not_found: job not found or expired (param)" for the contract's error body
export function describe(err) {
  if (err instanceof ApiError && err.body && err.body.error) {
    const e = err.body.error;
    const param = e.param ? ` (${e.param})` : "";
    return `${err.status} ${e.code || e.type}: ${e.message}${param}`;
  }
  return String((err && err.message) || err);
}

export class Client {
  constructor() {
    this.key = localStorage.getItem(KEY_STORAGE) || "";
    this.images = new Map(); // image path -> Promise of an object URL
  }

  // Use `key` from now on (and keep it in the browser; "" forgets it).
  useKey(key) {
    this.key = key;
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    for (const promise of this.images.values()) {
      promise.then((url) => URL.revokeObjectURL(url), () => {});
    }
    this.images.clear();
  }

  headers(extra) {
    const headers = new Headers(extra || {});
    if (this.key) headers.set("x-bf-vk", this.key);
    return headers;
  }

  // The answer's JSON; ApiError for anything but a 2xx.
  async json(path, options = {}) {
    const response = await fetch(path, { ...options, headers: this.headers(options.headers) });
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

  // An object URL of the image at `path` (fetched once, with the key).
  image(path) {
    if (!this.images.has(path)) {
      this.images.set(
        path,
        fetch(path, { headers: this.headers() }).then(async (response) => {
          if (!response.ok) throw new ApiError(response.status, await response.text());
          return URL.createObjectURL(await response.blob());
        }),
      );
    }
    return this.images.get(path);
  }

  // Read the job's Server-Sent Events until the stream ends (or `signal` aborts it),
  // calling onJob(job) for each `event: job` (its data: the job as GET prints it).
  async events(kind, id, onJob, signal) {
    const url = `${API}/${kind}/${encodeURIComponent(id)}/events`;
    const response = await fetch(url, {
      headers: this.headers({ accept: "text/event-stream" }),
      signal,
    });
    if (!response.ok) throw new ApiError(response.status, await response.text());
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
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
        if (data) onJob(JSON.parse(data));
      }
    }
  }
}
