// Tiny DOM helper shared by the widgets (text only: no innerHTML with data).

/**
 * Create an element with classes, attributes and children (strings become text nodes).
 * @param {string} tag
 * @param {{cls?: string, attrs?: Record<string, string>, title?: string, text?: string}} [opts]
 * @param {Array<Node | string | null | undefined | false>} [children]
 * @returns {HTMLElement}
 */
export function h(tag, opts = {}, children = []) {
  const el = document.createElement(tag);
  if (opts.cls) el.className = opts.cls;
  if (opts.title) el.title = opts.title;
  if (opts.text !== undefined) el.textContent = opts.text;
  for (const [k, v] of Object.entries(opts.attrs || {})) el.setAttribute(k, v);
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return el;
}
