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

/**
 * Defers rebuilds of `el`'s contents while a pointer button is held down inside it.
 *
 * A click is a mousedown and a mouseup on the same element; when a redraw replaces (or just
 * detaches and re-attaches) the element between the two, the browser sends the click to a
 * common ancestor and the user's click is lost.  Live data redraws several times a second, so
 * every redraw of clickable content goes through `run`: while a button is held it is queued
 * (the latest per key) and runs right after the click has been dispatched.
 * @param {HTMLElement} el
 * @param {number} [maxHoldMs] a held pointer defers redraws at most this long
 * @returns {{run: (key: string, fn: () => void) => void, dispose: () => void}}
 */
export function pointerGuard(el, maxHoldMs = 10000) {
  let pressed = false;
  /** @type {Map<string, () => void>} */
  const pending = new Map();
  /** @type {ReturnType<typeof setTimeout> | null} */
  let limit = null;
  const flush = () => {
    pressed = false;
    if (limit !== null) clearTimeout(limit);
    limit = null;
    window.removeEventListener("pointerup", onUp, true);
    window.removeEventListener("pointercancel", onUp, true);
    const fns = Array.from(pending.values());
    pending.clear();
    for (const fn of fns) fn();
  };
  // the click event follows pointerup in the same task: release only after it
  const onUp = () => { setTimeout(flush, 0); };
  const onDown = () => {
    if (pressed) return;
    pressed = true;
    window.addEventListener("pointerup", onUp, true);
    window.addEventListener("pointercancel", onUp, true);
    limit = setTimeout(flush, maxHoldMs);
  };
  el.addEventListener("pointerdown", onDown, true);
  return {
    run(key, fn) {
      if (pressed) pending.set(key, fn);
      else fn();
    },
    dispose() {
      el.removeEventListener("pointerdown", onDown, true);
      pending.clear();
      if (pressed) flush();
    },
  };
}
