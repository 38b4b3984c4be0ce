// Pure helpers for the intervention forms built from an action's schema (no DOM).
// Python validates again (it is the authority); this only gives immediate feedback.

/**
 * @typedef {{type: string, default?: any, min?: number, max?: number, min_open?: boolean,
 *            max_open?: boolean, log?: boolean, choices?: any[], help?: string,
 *            required?: boolean, nullable?: boolean}} ParamSpec
 */

/**
 * Fields shown at once; the others go under "more options".
 * @param {Record<string, ParamSpec>} schema
 * @param {number} [n]
 * @returns {{main: string[], more: string[]}}
 */
export function splitFields(schema, n = 2) {
  const names = Object.keys(schema || {});
  const main = names.filter((k, i) => i < n || schema[k].required);
  return { main, more: names.filter((k) => !main.includes(k)) };
}

/**
 * Initial form values for a schema.
 * @param {Record<string, ParamSpec>} schema
 * @param {string[]} layers  layer names in forward order
 * @returns {Record<string, any>}
 */
export function defaultParams(schema, layers) {
  /** @type {Record<string, any>} */
  const out = {};
  for (const [name, spec] of Object.entries(schema || {})) {
    if (spec.default !== undefined && spec.default !== null) out[name] = spec.default;
    else if (spec.default === null || spec.nullable) continue; // blank: the action's own default
    else if (spec.type === "bool") out[name] = false;
    else if (spec.type === "choice" && spec.choices && spec.choices.length) out[name] = spec.choices[0];
    else if (spec.type === "layer" && layers.length) out[name] = layers[0];
    else if (spec.type === "layers") out[name] = [];
  }
  return out;
}

/**
 * Turn a raw form value into the parameter value, or explain what is wrong.
 * Empty optional fields are left out (the action's default applies).
 * @param {string} name
 * @param {ParamSpec} spec
 * @param {any} raw
 * @returns {{ok: true, value: any, omit?: boolean} | {ok: false, error: string}}
 */
export function coerceParam(name, spec, raw) {
  const empty = raw === undefined || raw === null || raw === "" || (Array.isArray(raw) && raw.length === 0);
  if (empty) return spec.required ? { ok: false, error: `${name} is required` } : { ok: true, value: undefined, omit: true };
  switch (spec.type) {
    case "int":
    case "float": {
      const v = typeof raw === "number" ? raw : Number(String(raw).trim());
      if (!Number.isFinite(v)) return { ok: false, error: `${name} must be a number` };
      if (spec.type === "int" && !Number.isInteger(v)) return { ok: false, error: `${name} must be a whole number` };
      const lo = spec.min;
      const hi = spec.max;
      if (lo !== undefined && lo !== null && (spec.min_open ? v <= lo : v < lo)) return { ok: false, error: `${name} must be ${spec.min_open ? ">" : "≥"} ${lo}` };
      if (hi !== undefined && hi !== null && (spec.max_open ? v >= hi : v > hi)) return { ok: false, error: `${name} must be ${spec.max_open ? "<" : "≤"} ${hi}` };
      if (spec.log && v <= 0) return { ok: false, error: `${name} must be > 0` };
      return { ok: true, value: v };
    }
    case "bool":
      return { ok: true, value: raw === true || raw === "true" || raw === "on" };
    case "choice": {
      const choices = spec.choices || [];
      const hit = choices.find((c) => String(c) === String(raw));
      return hit === undefined ? { ok: false, error: `${name} must be one of ${choices.join(", ")}` } : { ok: true, value: hit };
    }
    case "layers": {
      const list = Array.isArray(raw) ? raw.map(String) : [String(raw)];
      return { ok: true, value: list.includes("all") ? "all" : list };
    }
    default:
      return { ok: true, value: String(raw) };
  }
}

/**
 * All parameters of a form, or the first error.
 * @param {Record<string, ParamSpec>} schema
 * @param {Record<string, any>} raw
 * @returns {{ok: true, params: Record<string, any>} | {ok: false, error: string}}
 */
export function collectParams(schema, raw) {
  /** @type {Record<string, any>} */
  const params = {};
  for (const [name, spec] of Object.entries(schema || {})) {
    const r = coerceParam(name, spec, raw[name]);
    if (!r.ok) return r;
    if (!r.omit) params[name] = r.value;
  }
  return { ok: true, params };
}

let counter = 0;
/**
 * A request id the kernel accepts ([A-Za-z0-9_.:-]{1,64}) and that is unique in this page.
 * @returns {string}
 */
export function requestId() {
  counter += 1;
  return `b${Date.now().toString(36)}-${counter}-${Math.floor(Math.random() * 1e6).toString(36)}`;
}

/** @type {Record<string, string>} */
const CATEGORY_TITLES = { init: "Initialization", regularization: "Regularization", lr: "Learning rate", optimizer: "Optimizer", run: "Run: snapshots, rollback, stopping", checks: "Checks", timeline: "Timeline" };

/**
 * A category's heading (registry categories are short identifiers).
 * @param {string} cat
 * @returns {string}
 */
export function categoryTitle(cat) {
  return CATEGORY_TITLES[cat] || (cat ? cat.charAt(0).toUpperCase() + cat.slice(1).replace(/_/g, " ") : "Other");
}

/**
 * A choice value as words: "kaiming_normal" -> "kaiming normal" (the value sent stays the same).
 * @param {string} v
 * @returns {string}
 */
export function choiceLabel(v) {
  return String(v).replace(/_/g, " ");
}

/**
 * A parameter's label from its schema: the help text's first phrase (its "scheme: " prefix
 * and any parenthesised or ";" tail dropped), else the name in words.  The raw name stays in the
 * tooltip.
 * @param {string} name
 * @param {ParamSpec} spec
 * @returns {string}
 */
export function fieldLabel(name, spec) {
  const help = (spec && spec.help ? String(spec.help) : "").split(/[;(]/)[0].replace(/^[\w ,/]+?: /, "").trim();
  const words = name.replace(/_/g, " ");
  if (!help || help.length > 32) return words;
  return help;
}

/**
 * Parameters as one short line: "scheme lsuv, layers all".
 * @param {Record<string, any>} params
 * @returns {string}
 */
export function paramSummary(params) {
  return Object.entries(params || {})
    .map(([k, v]) => `${k.replace(/_/g, " ")} ${Array.isArray(v) ? v.join(", ") : typeof v === "string" ? choiceLabel(v) : String(v)}`)
    .join(", ");
}

/** @type {Record<string, number>} */
const SEVERITY_RANK = { error: 0, warning: 1, info: 2 };

/**
 * The fix to lead with: the first suggested intervention of the most severe active finding
 * (the diagnosis orders a finding's own suggestions; this only picks the first).
 * @template {{severity: string, active: boolean, interventions?: Array<{action: string, params?: Record<string, any>, label?: string}>}} F
 * @param {F[]} findings
 * @returns {{finding: F, fix: {action: string, params?: Record<string, any>, label?: string}} | null}
 */
export function recommended(findings) {
  const active = (findings || []).filter((f) => f.active && f.interventions && f.interventions.length);
  if (!active.length) return null;
  const best = active.reduce((a, b) => ((SEVERITY_RANK[b.severity] ?? 3) < (SEVERITY_RANK[a.severity] ?? 3) ? b : a));
  return { finding: best, fix: /** @type {any} */ (best.interventions)[0] };
}
