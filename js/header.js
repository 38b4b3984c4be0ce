// Header: run state, step/epoch, speed, ETA, losses, overheads, how clicks reach Python.
import { h } from "./lib/dom.js";
import { busyText, describeTicket, formatInt, formatPercent, formatValue, formatDuration } from "./lib/format.js";

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

/**
 * What the run is doing, in words a user reads at a glance (the raw state is in the tooltip).
 * @param {HeaderState} s
 * @returns {{text: string, cls: string, title: string}}
 */
export function runState(s) {
  const r = s.run_state || "";
  const step = formatInt(s.step);
  if (s.busy) {
    return {
      text: busyText(s.busy).replace("Training paused", "training paused"),
      cls: "is-paused",
      title: `${s.busy.label} runs on the training thread; training continues after it`,
    };
  }
  if (r.startsWith("running")) {
    const bg = r.includes("background");
    return { text: bg ? "training running (background)" : "training running", cls: "is-running", title: `the training ${bg ? "thread" : "cell"} is running; the dashboard updates live (step ${step})` };
  }
  if (r === "idle") return { text: "finished", cls: "is-done", title: `the training cell ended at step ${step}; run it again to continue` };
  if (r === "finished" || r.startsWith("stopped")) return { text: r, cls: "is-done", title: `step ${step}` };
  if (r.startsWith("error") || r === "interrupted" || r.startsWith("failed")) return { text: r, cls: "is-error", title: `the training cell ended at step ${step}` };
  return { text: r || "…", cls: "is-idle", title: "" };
}

/** @type {import("@anywidget/types").Render<import("./lib/model_types.js").HeaderModel>} */
function render({ model, el }) {
  const root = h("div", { cls: "trainscope trainscope-header" });
  el.appendChild(root);

  const draw = () => {
    /** @type {HeaderState} */
    const s = model.get("state") || {};
    const d = s.delivery || { name: "none", live: false, note: "" };
    const active = Boolean(s.cell_running || s.busy || (s.run_state || "").startsWith("running"));
    const facts = [
      fact("step", formatInt(s.step) + (s.total_steps ? ` / ${formatInt(s.total_steps)}` : ""), "trainscope-step"),
      s.epoch !== null && s.epoch !== undefined ? fact("epoch", String(s.epoch)) : null,
      s.steps_per_s ? fact("speed", `${s.steps_per_s >= 10 ? formatInt(s.steps_per_s) : formatValue(s.steps_per_s)} steps/s`) : null,
      s.eta_s !== null && s.eta_s !== undefined ? fact("ETA", formatDuration(s.eta_s)) : null,
      fact("loss", formatValue(s.loss), "trainscope-loss"),
      s.val_loss !== null && s.val_loss !== undefined ? fact("val", formatValue(s.val_loss)) : null,
      s.lr !== null && s.lr !== undefined ? fact("lr", formatValue(s.lr, "sci")) : null,
      fact("probe overhead", s.overhead === null || s.overhead === undefined ? "–" : formatPercent(s.overhead), "trainscope-minor", "the probe's own timed work as a share of step time; PyTorch's dispatch of its hooks and cache effects are not in it (on sub-millisecond steps the end-to-end cost is about twice this: README, Overhead)"),
      s.ui_overhead !== null && s.ui_overhead !== undefined ? fact("dashboard", formatPercent(s.ui_overhead), "trainscope-minor", "time the dashboard spends at step boundaries, as a share of wall time") : null,
    ];
    // how clicks reach the loop matters while it runs; the mechanism is in the tooltip
    let deliveryBadge = null;
    if (d.name === "read-only") {
      deliveryBadge = h("span", { cls: "trainscope-badge trainscope-delivery is-deferred", title: "a saved run: there is no training to act on", text: "read-only", attrs: { "data-delivery": d.name } });
    } else if (s.delivery && active) {
      deliveryBadge = h("span", {
        cls: `trainscope-badge trainscope-delivery ${d.live ? "is-live" : "is-deferred"}`,
        title: d.live
          ? `Clicks take effect at the next step of the running loop (delivery: ${d.name}; ${d.note}).`
          : `Jupyter holds clicks until this cell finishes (delivery: ${d.name}; ${d.note}).`,
        text: d.live ? "clicks act live" : "clicks wait for this cell",
        attrs: { "data-delivery": d.name },
      });
    }
    const deferredWarning = s.cell_running && s.delivery && !d.live && d.name !== "read-only"
      ? h("span", { cls: "trainscope-warning", text: "Jupyter holds clicks until this cell finishes; they will apply at the next step after it." })
      : null;
    const ack = s.last_ack
      ? h("span", { cls: `trainscope-last-ack status-${s.last_ack.status}`, text: `last action: ${s.last_ack.label} – ${s.last_ack.status}${s.last_ack.applied_step !== null && s.last_ack.applied_step !== undefined && s.last_ack.status === "applied" ? ` at step ${formatInt(s.last_ack.applied_step)}` : ""}` })
      : null;
    const st = runState(s);
    const rows = [
      h("div", { cls: "trainscope-header-row" }, [
        h("span", { cls: "trainscope-brand", text: "trainscope" }),
        h("span", { cls: "trainscope-title", text: s.title || "" }),
        h("span", { cls: `trainscope-badge trainscope-state ${st.cls}`, title: st.title, text: st.text, attrs: { "data-state": s.run_state || "" } }),
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
