// Layer table: every probed layer in forward order, colour coded, sortable, selectable.
import { h, pointerGuard } from "./lib/dom.js";
import { formatInt, formatValue } from "./lib/format.js";
import { nextSort, sortRows } from "./lib/sort.js";

/** @typedef {import("./lib/model_types.js").Row} Row */
/** @typedef {import("./lib/model_types.js").Column} Column */

/** @type {import("@anywidget/types").Render<import("./lib/model_types.js").LayerTableModel>} */
function render({ model, el }) {
  /** @type {{column: number | null, dir: "asc" | "desc"}} */
  let sort = { column: null, dir: "desc" };
  let selected = model.get("selected") || "";
  const root = h("div", { cls: "trainscope trainscope-table" });
  const scroller = h("div", { cls: "trainscope-table-scroll" });
  const detail = h("div", { cls: "trainscope-layer-detail" });
  root.append(scroller, detail);
  el.appendChild(root);
  // live updates never rebuild or reorder rows under a pressed mouse button (the click would be lost)
  const guard = pointerGuard(root);

  /** @param {string} name */
  const select = (name) => {
    selected = name;
    draw();
    model.send({ kind: "select", layer: name });
  };

  /** @type {{key: string, head: HTMLElement | null, body: HTMLElement | null, rows: Map<string, {tr: HTMLElement, cells: HTMLElement[]}>}} */
  const built = { key: "", head: null, body: null, rows: new Map() };

  /** @param {Column[]} columns */
  const header = (columns) => {
    const arrow = (/** @type {number} */ j) => (sort.column === j ? (sort.dir === "asc" ? " ▲" : " ▼") : "");
    const head = h("tr", {}, [
      h("th", { cls: "is-sortable", text: "#", title: "forward order (click: back to forward order)" }),
      h("th", { cls: "is-sortable trainscope-col-name", text: `layer${arrow(-1)}` }),
      h("th", { text: "type" }),
      ...columns.map((c, j) => h("th", { cls: "is-sortable", title: c.title, text: c.label + arrow(j) })),
    ]);
    const ths = head.querySelectorAll("th");
    ths[0].addEventListener("click", () => { sort = { column: null, dir: "desc" }; draw(); });
    ths[1].addEventListener("click", () => { sort = nextSort(sort, -1); draw(); });
    columns.forEach((_c, j) => ths[j + 3].addEventListener("click", () => { sort = nextSort(sort, j); draw(); }));
    return head;
  };

  /**
   * @param {HTMLElement} el
   * @param {string} text
   * @param {string} cls
   */
  const setCell = (el, text, cls) => {
    if (el.textContent !== text) el.textContent = text;
    if (el.className !== cls) el.className = cls;
  };

  const draw = () => {
    /** @type {Column[]} */
    const columns = model.get("columns") || [];
    /** @type {Row[]} */
    const rows = model.get("rows") || [];
    const step = model.get("step");
    // rebuild the DOM only when the layers, the columns or the sort change; otherwise update the
    // cells in place (200 layers x 11 cells at every update would keep the browser busy)
    const key = JSON.stringify([rows.map((r) => r.name), columns.map((c) => c.key), sort]);
    if (key !== built.key) {
      built.key = key;
      built.rows.clear();
      built.head = header(columns);
      built.body = h("tbody");
      rows.forEach((r, i) => {
        const cells = [
          h("td", { cls: "trainscope-num", text: String(i + 1) }),
          h("td", { cls: "trainscope-col-name", text: r.name, title: `${r.name} (${r.type}, ${formatInt(r.n_params)} parameters)` }),
          h("td", { cls: "trainscope-col-type", text: r.type }),
          ...columns.map(() => h("td")),
        ];
        const tr = h("tr", { attrs: { "data-layer": r.name } }, cells);
        tr.addEventListener("click", () => select(r.name));
        built.rows.set(r.name, { tr, cells });
      });
      scroller.replaceChildren(h("table", {}, [h("thead", {}, [built.head]), built.body]));
    }
    const body = /** @type {HTMLElement} */ (built.body);
    let at = 0;
    for (const r of sortRows(rows, sort.column, sort.dir)) {
      const ref = built.rows.get(r.name);
      if (!ref) continue;
      // move a row only when it is out of place (a moved row loses a click in progress)
      const here = body.children[at] || null;
      if (here !== ref.tr) body.insertBefore(ref.tr, here);
      at += 1;
      const cls = `${r.name === selected ? "is-selected" : ""} ${r.nonfinite ? "has-nonfinite" : ""}`.trim();
      if (ref.tr.className !== cls) ref.tr.className = cls;
      r.values.forEach((v, j) => setCell(ref.cells[j + 3], formatValue(v, columns[j] ? columns[j].fmt : "num"), `trainscope-num status-${r.status[j] ?? "na"}`));
    }
    const note = rows.length
      ? h("div", { cls: "trainscope-note", text: `${rows.length} layers · step ${step >= 0 ? formatInt(step) : "–"} · colours: amber = look at it, red = bad · click a header to sort, a row to select` })
      : h("div", { cls: "trainscope-empty", text: "No layer statistics yet: they appear after the first sampled training step." });
    if (!rows.length) scroller.replaceChildren();
    const sel = rows.find((r) => r.name === selected);
    const parts = [note];
    if (sel) {
      parts.push(
        h("div", { cls: "trainscope-detail-title" }, [h("b", { text: sel.name }), ` ${sel.type} · ${sel.kind} · ${formatInt(sel.n_params)} parameters${sel.nonfinite ? " · non-finite values seen" : ""}`]),
        h("div", { cls: "trainscope-detail-grid" }, columns.map((c, j) => h("span", { cls: `status-${sel.status[j] ?? "na"}`, title: c.title }, [h("span", { cls: "trainscope-fact-label", text: c.label }), " ", formatValue(sel.values[j], c.fmt)]))),
      );
    }
    detail.replaceChildren(...parts);
  };

  const onSelected = () => {
    selected = model.get("selected") || "";
    guard.run("draw", draw);
  };
  const onData = () => guard.run("draw", draw);
  model.on("change:rows", onData);
  model.on("change:columns", onData);
  model.on("change:selected", onSelected);
  draw();
  return () => {
    guard.dispose();
    model.off("change:rows", onData);
    model.off("change:columns", onData);
    model.off("change:selected", onSelected);
  };
}

export default { render };
