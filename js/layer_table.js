// Layer table: every probed layer in forward order, colour coded, sortable, selectable.
import { h } from "./lib/dom.js";
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

  /** @param {string} name */
  const select = (name) => {
    selected = name;
    draw();
    model.send({ kind: "select", layer: name });
  };

  const draw = () => {
    /** @type {Column[]} */
    const columns = model.get("columns") || [];
    /** @type {Row[]} */
    const rows = model.get("rows") || [];
    const step = model.get("step");
    const head = h("tr", {}, [
      h("th", { cls: "is-sortable", text: "#", title: "forward order (click: back to forward order)" }),
      h("th", { cls: "is-sortable trainscope-col-name", text: `layer${sort.column === -1 ? (sort.dir === "asc" ? " ▲" : " ▼") : ""}` }),
      h("th", { text: "type" }),
      ...columns.map((c, j) => h("th", { cls: "is-sortable", title: c.title, text: c.label + (sort.column === j ? (sort.dir === "asc" ? " ▲" : " ▼") : "") })),
    ]);
    const ths = head.querySelectorAll("th");
    ths[0].addEventListener("click", () => { sort = { column: null, dir: "desc" }; draw(); });
    ths[1].addEventListener("click", () => { sort = nextSort(sort, -1); draw(); });
    columns.forEach((_c, j) => ths[j + 3].addEventListener("click", () => { sort = nextSort(sort, j); draw(); }));

    const order = new Map(rows.map((r, i) => [r.name, i]));
    const body = h("tbody");
    for (const r of sortRows(rows, sort.column, sort.dir)) {
      const tr = h("tr", { cls: `${r.name === selected ? "is-selected" : ""} ${r.nonfinite ? "has-nonfinite" : ""}`, attrs: { "data-layer": r.name } }, [
        h("td", { cls: "trainscope-num", text: String((order.get(r.name) ?? 0) + 1) }),
        h("td", { cls: "trainscope-col-name", text: r.name, title: `${r.name} (${r.type}, ${formatInt(r.n_params)} parameters)` }),
        h("td", { cls: "trainscope-col-type", text: r.type }),
        ...r.values.map((v, j) => h("td", { cls: `trainscope-num status-${r.status[j] ?? "na"}`, text: formatValue(v, columns[j] ? columns[j].fmt : "num") })),
      ]);
      tr.addEventListener("click", () => select(r.name));
      body.appendChild(tr);
    }
    const table = h("table", {}, [h("thead", {}, [head]), body]);
    const note = rows.length
      ? h("div", { cls: "trainscope-note", text: `${rows.length} layers · step ${step >= 0 ? formatInt(step) : "–"} · colours: amber = look at it, red = bad · click a header to sort, a row to select` })
      : h("div", { cls: "trainscope-empty", text: "No layer statistics yet: they appear after the first sampled training step." });
    scroller.replaceChildren(table);
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
    draw();
  };
  model.on("change:rows", draw);
  model.on("change:columns", draw);
  model.on("change:selected", onSelected);
  draw();
  return () => {
    model.off("change:rows", draw);
    model.off("change:columns", draw);
    model.off("change:selected", onSelected);
  };
}

export default { render };
