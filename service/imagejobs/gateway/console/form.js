// The submit form: a generation (JSON), an edit (images and a mask uploaded) or a variation
// (multipart), its model list from GET /v1/async/images/models, any other request field
// given as a JSON object.
"use strict";

import { API } from "./api.js";
import { $, el, showError } from "./dom.js";

const KIND_FLAG = { generations: "generation", edits: "edit", variations: "variation" };

export class SubmitForm {
  // `client`: the REST client; `submitted(kind, job)`: told of each accepted job.
  constructor(client, submitted) {
    this.client = client;
    this.submitted = submitted;
    this.models = null;
    $("submit-form").addEventListener("submit", (event) => this.submit(event));
    for (const radio of document.querySelectorAll("input[name=kind]")) {
      radio.addEventListener("change", () => this.fillModels());
    }
  }

  kindChosen() {
    return document.querySelector("input[name=kind]:checked").value;
  }

  fillModels() {
    const kind = this.kindChosen();
    document.body.className = `kind-${kind}`;
    const options = [];
    const notes = [];
    for (const provider of (this.models && this.models.providers) || []) {
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

  async loadModels() {
    try {
      this.models = await this.client.json(`${API}/models`);
    } catch (err) {
      this.models = null;
      $("model-note").textContent = `models: ${describe(err)}`;
      return;
    }
    this.fillModels();
  }

  // The form's fields as the request's: the JSON object merged over the named fields.
  fields(kind) {
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

  multipart(kind, values) {
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

  async submit(event) {
    event.preventDefault();
    const kind = this.kindChosen();
    const button = $("submit-button");
    $("submit-error").hidden = true;
    button.disabled = true;
    try {
      const values = this.fields(kind);
      const options = { method: "POST" };
      if (kind === "generations") {
        options.body = JSON.stringify(values);
        options.headers = { "content-type": "application/json" };
      } else {
        options.body = this.multipart(kind, values);
      }
      const job = await this.client.json(`${API}/${kind}`, options);
      this.submitted(kind, job);
    } catch (err) {
      showError($("submit-error"), err);
    } finally {
      button.disabled = false;
    }
  }
}
