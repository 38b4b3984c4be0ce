// Pure sorting of layer-table rows (no DOM).

/**
 * A cell value as a sortable number: null (not applicable) -> NaN, "inf" -> Infinity.
 * @param {number | string | null | undefined} v
 * @returns {number}
 */
export function sortKey(v) {
  if (v === null || v === undefined) return Number.NaN;
  if (v === "inf") return Number.POSITIVE_INFINITY;
  if (v === "-inf") return Number.NEGATIVE_INFINITY;
  return typeof v === "number" ? v : Number.NaN;
}

/**
 * Rows sorted by one column; rows without a value (NaN) always go last, ties keep forward order.
 * column -1 sorts by name; null returns the rows in their original (forward) order.
 * @template {{name: string, values: Array<number | string | null>}} R
 * @param {R[]} rows
 * @param {number | null} column
 * @param {"asc" | "desc"} dir
 * @returns {R[]}
 */
export function sortRows(rows, column, dir) {
  const indexed = rows.map((r, i) => ({ r, i }));
  if (column === null) return rows.slice();
  const sign = dir === "desc" ? -1 : 1;
  indexed.sort((a, b) => {
    if (column === -1) return sign * a.r.name.localeCompare(b.r.name) || a.i - b.i;
    const x = sortKey(a.r.values[column]);
    const y = sortKey(b.r.values[column]);
    const xn = Number.isNaN(x);
    const yn = Number.isNaN(y);
    if (xn || yn) return xn === yn ? a.i - b.i : xn ? 1 : -1;
    if (x === y) return a.i - b.i;
    return x < y ? -sign : sign;
  });
  return indexed.map((e) => e.r);
}

/**
 * The next sort state when a column header is clicked: asc -> desc -> original order.
 * @param {{column: number | null, dir: "asc" | "desc"}} state
 * @param {number} column
 * @returns {{column: number | null, dir: "asc" | "desc"}}
 */
export function nextSort(state, column) {
  if (state.column !== column) return { column, dir: "desc" };
  if (state.dir === "desc") return { column, dir: "asc" };
  return { column: null, dir: "desc" };
}
