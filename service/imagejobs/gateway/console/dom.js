// Small DOM helpers the console's modules share.
"use strict";

import { ApiError, describe } from "./api.js";

export const $ = (id) => document.getElementById(id);

export function showError(element, err) {
  element.textContent = describe(err);
  if (err instanceof ApiError && err.body && typeof err.body === "object") {
    element.textContent += "\n" + JSON.stringify(err.body, null, 2);
  }
  element.hidden = false;
}

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}
