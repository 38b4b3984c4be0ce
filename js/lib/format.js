// Pure formatting helpers (no DOM): numbers, percentages, durations, ticket texts.

/**
 * A number as short text: 4 significant digits, scientific outside [1e-3, 1e4).
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
  if (fmt === "sci" || a < 1e-3 || a >= 1e4) return v.toExponential(2).replace("e+", "e");
  return String(Number(v.toPrecision(4)));
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
      const msg = t.message && !t.message.startsWith("applied at step") ? ` – ${t.message}` : "";
      return `applied${at}${msg}`;
    }
    case "undone":
      return t.message || "undone";
    case "refused":
      return `refused: ${t.message || "no reason given"}`;
    case "failed":
      return `failed: ${t.message || "no reason given"}`;
    default:
      return t.message || t.status;
  }
}
