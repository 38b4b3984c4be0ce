// Header: run state, step/epoch, speed, ETA, losses, overheads, how clicks reach Python.
import { h } from "./lib/dom.js";
import { describeTicket, formatDuration, formatInt, formatPercent, formatValue } from "./lib/format.js";

/** @typedef {import("./lib/model_types.js").HeaderState} HeaderState */

/**
 * @param {string} label
 * @param {string} value
 * @param {string} [cls]
 * @param {string} [title]
 */
function fact(label, value, cls = "", title = "") {
  return h("span", { cls: `trainscope-fact ${cls}`, title }, [h("span", { cls: "trainscope-fact-label", text: label }), h("span", { cls: "trainscope-fact-value", text: value })]);
}

/** @param {HeaderState} s */
function stateClass(s) {
  const r = s.run_state || "";
  if (r.startsWith("running")) return "is-running";
  if (r.startsWith("error") || r === "interrupted" || r.startsWith("failed")) return "is-error";
  if (r === "finished" || r.startsWith("stopped")) return "is-done";
  return "is-idle";
}

/** @type {import("@anywidget/types").Render<import("./lib/model_types.js").HeaderModel>} */
function render({ model, el }) {
  const root = h("div", { cls: "trainscope trainscope-header" });
  el.appendChild(root);

  const draw = () => {
    /** @type {HeaderState} */
    const s = model.get("state") || {};
    const d = s.delivery || { name: "none", live: false, note: "" };
    const facts = [
      fact("step", formatInt(s.step) + (s.total_steps ? ` / ${formatInt(s.total_steps)}` : ""), "trainscope-step"),
      s.epoch !== null && s.epoch !== undefined ? fact("epoch", String(s.epoch)) : null,
      s.steps_per_s ? fact("speed", `${formatValue(s.steps_per_s)} steps/s`) : null,
      s.eta_s !== null && s.eta_s !== undefined ? fact("ETA", formatDuration(s.eta_s)) : null,
      fact("loss", formatValue(s.loss), "trainscope-loss"),
      s.val_loss !== null && s.val_loss !== undefined ? fact("val", formatValue(s.val_loss)) : null,
      s.lr !== null && s.lr !== undefined ? fact("lr", formatValue(s.lr, "sci")) : null,
      fact("probe overhead", s.overhead === null || s.overhead === undefined ? "–" : formatPercent(s.overhead), "", "the probe's own timed work as a share of step time; PyTorch's dispatch of its hooks and cache effects are not in it (on sub-millisecond steps the end-to-end cost is about twice this: README, Overhead)"),
      s.ui_overhead !== null && s.ui_overhead !== undefined ? fact("dashboard", formatPercent(s.ui_overhead), "", "time the dashboard spends at step boundaries, as a share of wall time") : null,
    ];
    const deliveryBadge = s.delivery
      ? h("span", {
          cls: `trainscope-badge trainscope-delivery ${d.live ? "is-live" : "is-deferred"}`,
          title: d.note,
          text: d.live ? `clicks: live (${d.name})` : d.name === "read-only" ? "read-only" : "clicks apply after this cell",
        })
      : null;
    const deferredWarning = s.cell_running && s.delivery && !d.live && d.name !== "read-only"
      ? h("span", { cls: "trainscope-warning", text: "Jupyter holds clicks until this cell finishes; they will apply at the next step after it." })
      : null;
    const ack = s.last_ack
      ? h("span", { cls: `trainscope-last-ack status-${s.last_ack.status}`, text: `${s.last_ack.label}: ${describeTicket(s.last_ack)}` })
      : null;
    const rows = [
      h("div", { cls: "trainscope-header-row" }, [
        h("span", { cls: "trainscope-brand", text: "trainscope" }),
        h("span", { cls: "trainscope-title", text: s.title || "" }),
        h("span", { cls: `trainscope-badge trainscope-state ${stateClass(s)}`, text: s.run_state || "…" }),
        ...facts,
        deliveryBadge,
        s.errors ? h("span", { cls: "trainscope-badge is-error", title: "internal probe errors (training was not affected): probe.errors", text: `${s.errors} probe errors` }) : null,
      ]),
    ];
    if (ack || deferredWarning) rows.push(h("div", { cls: "trainscope-header-row trainscope-header-sub" }, [deferredWarning, ack]));
    root.replaceChildren(...rows);
  };
  model.on("change:state", draw);
  draw();
  return () => model.off("change:state", draw);
}

export default { render };
