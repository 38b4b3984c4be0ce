// Pure formatting helpers (no DOM): numbers, percentages, durations, ticket texts.

/**
 * Scientific notation without padding zeros: 1e-4, 2.5e-3, 1.23e5 (never "1.00e-4" or "9.98e0").
 * @param {number} v
 * @param {number} digits significant digits
 * @returns {string}
 */
function sci(v, digits) {
  const [m, e] = v.toExponential(digits - 1).split("e");
  const mant = m.includes(".") ? m.replace(/0+$/, "").replace(/\.$/, "") : m;
  return `${mant}e${e.replace("+", "")}`;
}

/**
 * A number as short text: 4 significant digits (3 for "sci"), scientific only outside
 * [1e-3, 1e4): 9.98, 13.7, 0.05, 1e-4, 1.23e5.
 * null/undefined -> "–" (not applicable); "inf" / "-inf" strings (JSON has no Infinity) pass through.
 * @param {number | string | null | undefined} v
 * @param {"num" | "pct" | "sci"} [fmt]
 * @returns {string}
 */
export function formatValue(v, fmt = "num") {
  if (v === null || v === undefined) return "–";
  if (typeof v === "string") return v === "inf" ? "∞" : v === "-inf" ? "−∞" : v;
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
  if (fmt === "pct") return formatPercent(v);
  if (v === 0) return "0";
  const a = Math.abs(v);
  const digits = fmt === "sci" ? 3 : 4;
  if (a < 1e-3 || a >= 1e4) return sci(v, 3);
  return String(Number(v.toPrecision(digits)));
}

/**
 * A fraction (0..1) as a percentage with sensible precision.
 * @param {number | null | undefined} f
 * @returns {string}
 */
export function formatPercent(f) {
  if (f === null || f === undefined || Number.isNaN(f)) return "–";
  const p = f * 100;
  if (p === 0) return "0%";
  if (Math.abs(p) < 0.1) return "<0.1%";
  if (Math.abs(p) < 10) return `${p.toFixed(1)}%`;
  return `${Math.round(p)}%`;
}

/**
 * Seconds as "1:02:03", "4:05" or "12s".
 * @param {number | null | undefined} s
 * @returns {string}
 */
export function formatDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s) || s < 0) return "–";
  const t = Math.round(s);
  if (t < 60) return `${t}s`;
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = String(t % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

/**
 * An integer with thin thousands separators.
 * @param {number | null | undefined} n
 * @returns {string}
 */
export function formatInt(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  return Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/**
 * Step numbers inside a message from Python ("undone at step 17957") with thousands separators.
 * @param {string} text
 * @returns {string}
 */
export function groupSteps(text) {
  return text.replace(/\b(steps? )(\d{4,})\b/g, (_m, w, n) => `${w}${formatInt(Number(n))}`);
}

/**
 * One line describing where a request stands.
 * @param {{status: string, message?: string, applied_step?: number | null, latency_ms?: number | null}} t
 * @returns {string}
 */
export function describeTicket(t) {
  switch (t.status) {
    case "pending":
      return "pending: applies at the next step";
    case "applied": {
      const at = t.applied_step === null || t.applied_step === undefined ? "" : ` at step ${formatInt(t.applied_step)}`;
      const msg = t.message && !t.message.startsWith("applied at step") ? ` – ${groupSteps(t.message)}` : "";
      return `applied${at}${msg}`;
    }
    case "undone":
      return groupSteps(t.message || "undone");
    case "refused":
      return `refused: ${groupSteps(t.message || "no reason given")}`;
    case "failed":
      return `failed: ${groupSteps(t.message || "no reason given")}`;
    default:
      return groupSteps(t.message || t.status);
  }
}

/**
 * What a long action holding the training says: "Training paused: LR finder 37/100" (with
 * "– cancelling…" once Cancel was clicked), or "Training paused: Run check (4s)" when the action
 * reports no progress.
 * @param {{label?: string, seconds?: number, progress?: {done: number, total: number, text?: string} | null,
 *   cancel_requested?: boolean} | null | undefined} busy
 * @returns {string}
 */
export function busyText(busy) {
  if (!busy || !busy.label) return "";
  const p = busy.progress;
  const what = p && p.text ? p.text : busy.label;
  const done = p && Number.isFinite(p.done) && Number.isFinite(p.total) && p.total > 0
    ? ` ${formatInt(Math.min(p.done, p.total))}/${formatInt(p.total)}`
    : ` (${formatDuration(busy.seconds)})`;
  return `Training paused: ${what}${done}${busy.cancel_requested ? " – cancelling…" : ""}`;
}

/**
 * Fraction done of a long action (0..1), or null when it reports no progress.
 * @param {{progress?: {done: number, total: number} | null} | null | undefined} busy
 * @returns {number | null}
 */
export function busyFraction(busy) {
  const p = busy && busy.progress;
  if (!p || !Number.isFinite(p.done) || !Number.isFinite(p.total) || p.total <= 0) return null;
  return Math.max(0, Math.min(1, p.done / p.total));
}
