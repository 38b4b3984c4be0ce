// Controls: interventions (forms from the action registry), findings, checklist, activity list.
// Every click sends {kind: "action", action, params, id}; Python validates, queues it for the
// next step boundary and acknowledges it through the `tickets` trait.
import { h, pointerGuard } from "./lib/dom.js";
import { categoryTitle, choiceLabel, collectParams, defaultParams, fieldLabel, paramSummary, recommended, requestId, splitFields } from "./lib/forms.js";
import { busyFraction, busyText, describeTicket, formatDuration, formatInt } from "./lib/format.js";

/** @typedef {import("./lib/model_types.js").ActionSpec} ActionSpec */
/** @typedef {import("./lib/model_types.js").TicketView} TicketView */
/** @typedef {import("./lib/model_types.js").Finding} Finding */
/** @typedef {import("./lib/model_types.js").ChecklistItem} ChecklistItem */

/** @type {Record<string, number>} */
const SEVERITY_ORDER = { error: 0, warning: 1, info: 2 };
/** @type {Record<string, string>} */
const CHECK_ICON = { pass: "✔", warn: "!", fail: "✖", not_run: "·", manual: "?" };

/** @type {import("@anywidget/types").Render<import("./lib/model_types.js").ControlsModel>} */
function render({ model, el }) {
  let tab = "interventions";
  /** @type {Map<string, Record<string, any>>} form values per action (survive redraws) */
  const forms = new Map();
  /** @type {Map<string, {id: string, label: string, status: string, message: string}>} */
  const local = new Map();
  /** @type {Set<string>} categories the user opened (they stay open over redraws) */
  const openCats = new Set();
  /** @type {Set<string>} layer pickers showing the parameter-free modules too */
  const showAllLayers = new Set();

  const tabBar = h("div", { cls: "trainscope-tabs" });
  const panel = h("div", { cls: "trainscope-panel" });
  const activity = h("div", { cls: "trainscope-activity" });
  // a long action holding the training loop: what, how far, Cancel (hidden otherwise)
  const busyBar = h("div", { cls: "trainscope-busy", attrs: { role: "status", "aria-live": "polite" } });
  busyBar.hidden = true;
  const root = h("div", { cls: "trainscope trainscope-controls" }, [
    busyBar,
    h("div", { cls: "trainscope-controls-main" }, [tabBar, panel]),
    h("div", { cls: "trainscope-controls-side" }, [h("div", { cls: "trainscope-section-title", text: "Activity" }), activity]),
  ]);
  el.appendChild(root);
  // live updates redraw these parts; never under a pressed mouse button (the click would be lost)
  const guard = pointerGuard(root);

  /**
   * @param {string} action
   * @param {Record<string, any>} params
   * @param {string} label
   */
  const send = (action, params, label) => {
    const id = requestId();
    const d = model.get("delivery") || {};
    local.set(id, {
      id,
      label,
      status: "sending",
      message: d && "live" in d && !d.live ? "sent; Jupyter delivers it when the running cell finishes" : "sent",
    });
    model.send({ kind: "action", action, params, id });
    drawActivity();
  };

  // ------------------------------------------------------------ interventions
  /**
   * Layers to act on: a compact dropdown of checkboxes in forward order; modules without
   * parameters (activations, pooling...) are behind "show all" unless already chosen.
   * @param {string} action
   * @param {string} name
   * @param {Record<string, any>} values
   * @param {boolean} allowAll
   */
  const layerPicker = (action, name, values, allowAll) => {
    const layers = model.get("layers") || [];
    const nparams = model.get("layer_params") || [];
    const key = `${action}.${name}`;
    const chosen = () => {
      const v = values[name];
      return v === "all" ? ["all"] : Array.isArray(v) ? v.map(String) : v ? [String(v)] : [];
    };
    const summary = h("summary", { cls: "trainscope-picker-summary" });
    const describe = () => {
      const c = chosen();
      summary.textContent = c.includes("all") ? "all layers" : c.length === 0 ? "choose layers" : c.length <= 2 ? c.join(", ") : `${c.slice(0, 2).join(", ")} +${c.length - 2}`;
    };
    const list = h("div", { cls: "trainscope-picker-list" });
    const drawList = () => {
      const c = chosen();
      const rows = [];
      if (allowAll) rows.push(["all", "all layers", true]);
      let hidden = 0;
      layers.forEach((/** @type {string} */ l, /** @type {number} */ i) => {
        const free = (nparams[i] ?? 1) === 0;
        if (free && !showAllLayers.has(key) && !c.includes(l)) { hidden += 1; return; }
        rows.push([l, free ? `${l} (no parameters)` : l, !free]);
      });
      list.replaceChildren(...rows.map(([value, text, strong]) => {
        const cb = /** @type {HTMLInputElement} */ (h("input", { attrs: { type: "checkbox", value: String(value) } }));
        cb.checked = c.includes(String(value));
        cb.addEventListener("change", () => {
          let next = chosen().filter((x) => x !== "all");
          if (value === "all") next = cb.checked ? ["all"] : [];
          else if (cb.checked) next.push(String(value));
          else next = next.filter((x) => x !== value);
          values[name] = next.includes("all") ? "all" : next;
          describe();
          drawList();
        });
        return h("label", { cls: `trainscope-picker-item ${strong ? "" : "is-free"}` }, [cb, h("span", { text: String(text) })]);
      }), ...(hidden ? [(() => {
        const more = h("button", { cls: "trainscope-linklike", text: `show ${hidden} module${hidden > 1 ? "s" : ""} without parameters` });
        more.addEventListener("click", (e) => { e.preventDefault(); showAllLayers.add(key); drawList(); });
        return more;
      })()] : []));
    };
    describe();
    drawList();
    return /** @type {HTMLElement} */ (h("details", { cls: "trainscope-picker" }, [summary, list]));
  };

  /** @param {ActionSpec} spec */
  const actionCard = (spec) => {
    const layers = model.get("layers") || [];
    const values = forms.get(spec.name) || defaultParams(spec.schema, layers);
    forms.set(spec.name, values);
    const error = h("div", { cls: "trainscope-form-error" });
    /** @param {string} name */
    const field = (name) => {
      const p = spec.schema[name];
      /** @type {HTMLElement} */
      let input;
      if (p.type === "bool") {
        const cb = /** @type {HTMLInputElement} */ (h("input", { attrs: { type: "checkbox" } }));
        cb.checked = Boolean(values[name]);
        cb.addEventListener("change", () => { values[name] = cb.checked; });
        input = cb;
      } else if (p.type === "layers") {
        input = layerPicker(spec.name, name, values, p.default === "all");
      } else if (p.type === "choice" || p.type === "layer") {
        const options = p.type === "choice" ? (p.choices || []).map(String) : layers.slice();
        const blank = p.nullable || (!p.required && (p.default === null || p.default === undefined));
        const optionEls = options.map((o) => h("option", { text: p.type === "choice" ? choiceLabel(o) : o, attrs: { value: o } }));
        if (blank) optionEls.unshift(h("option", { text: "(default)", attrs: { value: "" } }));
        const sel = /** @type {HTMLSelectElement} */ (h("select", {}, optionEls));
        const current = values[name];
        for (const opt of Array.from(sel.options)) opt.selected = String(current ?? "") === opt.value;
        sel.addEventListener("change", () => { values[name] = sel.value; });
        input = sel;
      } else {
        const numeric = p.type === "int" || p.type === "float";
        const inp = /** @type {HTMLInputElement} */ (h("input", { attrs: { type: "text", inputmode: numeric ? "decimal" : "text", size: "8", placeholder: p.required ? "required" : "default" } }));
        inp.value = values[name] === undefined || values[name] === null ? "" : String(values[name]);
        inp.addEventListener("input", () => { values[name] = inp.value; });
        input = inp;
      }
      input.classList.add(`trainscope-param-${name}`);
      return h("label", { cls: "trainscope-field", title: `${name}${p.help ? `: ${p.help}` : ""}` }, [h("span", { text: fieldLabel(name, p) }), input]);
    };
    const { main, more } = splitFields(spec.schema);
    const fields = main.map(field);
    const extra = more.length ? h("details", { cls: "trainscope-more" }, [h("summary", { text: `${more.length} more option${more.length > 1 ? "s" : ""}` }), h("div", { cls: "trainscope-fields" }, more.map(field))]) : null;
    const button = /** @type {HTMLButtonElement} */ (h("button", { cls: `trainscope-btn trainscope-btn-secondary trainscope-action-${spec.name}`, text: spec.label, title: spec.description }));
    button.disabled = Boolean(model.get("read_only"));
    button.addEventListener("click", () => {
      const r = collectParams(spec.schema, values);
      if (!r.ok) {
        error.textContent = r.error;
        return;
      }
      error.textContent = "";
      send(spec.name, r.params, spec.label);
    });
    return h("div", { cls: "trainscope-card", attrs: { "data-action": spec.name } }, [
      h("div", { cls: "trainscope-card-head" }, [button]),
      spec.description ? h("div", { cls: "trainscope-card-desc", text: spec.description }) : null,
      fields.length ? h("div", { cls: "trainscope-fields" }, fields) : null,
      extra,
      error,
    ]);
  };

  const drawInterventions = () => {
    /** @type {ActionSpec[]} */
    const actions = model.get("actions") || [];
    const ro = model.get("read_only");
    const byCat = new Map();
    for (const a of actions) {
      if (a.name === "run_check") continue; // offered in the checklist
      if (!byCat.has(a.category)) byCat.set(a.category, []);
      byCat.get(a.category).push(a);
    }
    const parts = [];
    if (ro) parts.push(h("div", { cls: "trainscope-readonly", text: ro }));
    else parts.push(recommendBox);
    if (!actions.length) parts.push(h("div", { cls: "trainscope-empty", text: "No interventions are registered." }));
    if (byCat.size) parts.push(h("div", { cls: "trainscope-section-title", text: ro ? "Interventions (not available here)" : "All interventions" }));
    for (const [cat, list] of byCat) {
      const det = /** @type {HTMLDetailsElement} */ (h("details", { cls: "trainscope-category", attrs: { "data-category": cat } }, [
        h("summary", { cls: "trainscope-category-summary" }, [
          h("b", { text: categoryTitle(cat) }),
          h("span", { cls: "trainscope-muted", text: ` ${list.map((/** @type {ActionSpec} */ a) => a.label).join(" · ")}` }),
        ]),
        h("div", { cls: "trainscope-cards" }, list.map(actionCard)),
      ]));
      det.open = openCats.has(cat);
      det.addEventListener("toggle", () => { if (det.open) openCats.add(cat); else openCats.delete(cat); });
      parts.push(det);
    }
    return parts;
  };

  // the top suggestion of the diagnosis, as one prominent button with its parameters spelled out
  const recommendBox = h("div", { cls: "trainscope-recommend" });
  const drawRecommend = () => {
    const f = model.get("findings") || {};
    const rec = recommended(f.items || []);
    if (!rec) {
      recommendBox.replaceChildren(h("div", { cls: "trainscope-recommend-none" }, [
        h("b", { text: "Nothing to fix right now. " }),
        h("span", { cls: "trainscope-muted", text: f.available === false ? (f.message || "diagnosis unavailable") : "When the diagnosis finds a problem, its fix appears here as one click; every intervention is below." }),
      ]));
      return;
    }
    const { finding, fix } = rec;
    const b = /** @type {HTMLButtonElement} */ (h("button", { cls: `trainscope-btn trainscope-btn-primary trainscope-recommend-btn trainscope-suggest-${fix.action}`, text: fix.label || fix.action }));
    b.disabled = Boolean(model.get("read_only"));
    b.addEventListener("click", () => send(fix.action, fix.params || {}, fix.label || fix.action));
    const params = paramSummary(fix.params || {});
    recommendBox.replaceChildren(
      h("div", { cls: "trainscope-section-title", text: "Recommended" }),
      h("div", { cls: "trainscope-recommend-row" }, [
        b,
        h("div", { cls: "trainscope-recommend-why" }, [
          h("div", {}, [h("span", { cls: `trainscope-badge severity-${finding.severity}`, text: finding.severity }), h("span", { text: ` ${finding.title}` })]),
          params ? h("div", { cls: "trainscope-muted", text: `with ${params}` }) : null,
        ]),
      ]),
    );
  };

  // ------------------------------------------------------------ findings
  const drawFindings = () => {
    const f = model.get("findings") || {};
    if (!f.available) return [h("div", { cls: "trainscope-empty", text: f.message || "diagnosis unavailable" })];
    /** @type {Finding[]} */
    const items = (f.items || []).slice().sort((a, b) => (SEVERITY_ORDER[a.severity] ?? 3) - (SEVERITY_ORDER[b.severity] ?? 3));
    if (!items.length) return [h("div", { cls: "trainscope-empty", text: "Nothing looks wrong so far." })];
    const ro = Boolean(model.get("read_only"));
    return items.map((it) =>
      h("div", { cls: `trainscope-finding severity-${it.severity} ${it.active ? "" : "is-past"}` }, [
        h("div", { cls: "trainscope-finding-head" }, [
          h("span", { cls: `trainscope-badge severity-${it.severity}`, text: it.severity }),
          h("b", { text: ` ${it.title}` }),
          h("span", { cls: "trainscope-muted", text: ` steps ${formatInt(it.first_step)}–${formatInt(it.last_step)}${it.active ? "" : " (resolved)"}` }),
        ]),
        h("div", { cls: "trainscope-evidence", text: it.evidence }),
        it.layers && it.layers.length
          ? h("div", { cls: "trainscope-chips" }, it.layers.slice(0, 12).map((name) => {
              const chip = h("button", { cls: "trainscope-chip", text: name, title: "show this layer" });
              chip.addEventListener("click", () => model.send({ kind: "select", layer: name }));
              return chip;
            }))
          : null,
        it.active && it.interventions && it.interventions.length
          ? h("div", { cls: "trainscope-suggested" }, it.interventions.map((iv) => {
              const b = /** @type {HTMLButtonElement} */ (h("button", { cls: `trainscope-btn trainscope-suggest-${iv.action}`, text: iv.label || iv.action }));
              b.disabled = ro;
              b.addEventListener("click", () => send(iv.action, iv.params || {}, iv.label || iv.action));
              return b;
            }))
          : null,
        it.checklist && it.checklist.length ? h("div", { cls: "trainscope-muted", text: `checklist: ${it.checklist.join(", ")}` }) : null,
      ]),
    );
  };

  // ------------------------------------------------------------ checklist
  const drawChecklist = () => {
    const c = model.get("checklist") || {};
    if (!c.available) return [h("div", { cls: "trainscope-empty", text: c.message || "checklists unavailable" })];
    /** @type {ChecklistItem[]} */
    const items = c.items || [];
    const ro = Boolean(model.get("read_only"));
    /** @type {HTMLElement[]} */
    const out = [];
    let source = "";
    for (const it of items) {
      if (it.source !== source) {
        source = it.source;
        out.push(h("div", { cls: "trainscope-section-title", text: source === "karpathy" ? "Karpathy: a recipe for training neural networks" : source === "tobin" ? "Tobin: troubleshooting deep neural networks" : source }));
      }
      const run = it.automated ? /** @type {HTMLButtonElement} */ (h("button", { cls: `trainscope-btn trainscope-run-${it.id}`, text: "Run" })) : null;
      if (run) {
        run.disabled = ro;
        run.addEventListener("click", () => send("run_check", { check: it.check || it.id }, `Run: ${it.title}`));
      }
      out.push(h("div", { cls: `trainscope-check status-${it.status}`, attrs: { "data-check": it.id } }, [
        h("span", { cls: "trainscope-check-icon", text: CHECK_ICON[it.status] || "·", title: it.status }),
        h("div", { cls: "trainscope-check-body" }, [
          h("div", {}, [h("b", { text: it.title }), h("span", { cls: "trainscope-muted", text: ` (${it.source})` })]),
          h("div", { cls: "trainscope-muted", text: it.meaning }),
          it.evidence ? h("div", { cls: "trainscope-evidence", text: it.evidence }) : null,
        ]),
        run,
      ]));
    }
    return out;
  };

  // ------------------------------------------------------------ activity (acknowledgements)
  const drawActivity = () => {
    /** @type {TicketView[]} */
    const tickets = model.get("tickets") || [];
    for (const t of tickets) local.delete(t.id);
    const ro = Boolean(model.get("read_only"));
    const rows = [...Array.from(local.values()).reverse(), ...tickets].slice(0, 50).map((t) => {
      const full = /** @type {TicketView} */ (t);
      let undo = null;
      if (full.undoable && full.status === "applied") {
        const b = /** @type {HTMLButtonElement} */ (h("button", { cls: "trainscope-btn trainscope-undo", text: "Undo" }));
        b.disabled = ro;
        b.addEventListener("click", () => send("undo", { ticket: full.id }, `Undo ${full.label}`));
        undo = b;
      }
      /** @type {{id?: string, seconds?: number, label?: string, progress?: {done: number, total: number, text?: string} | null}} */
      const busy = model.get("busy") || {};
      const running = t.status === "pending" && busy.id === t.id;
      const text = t.status === "sending" ? t.message : running ? (busy.progress ? `${formatInt(busy.progress.done)}/${formatInt(busy.progress.total)} – training is paused until it finishes` : `running for ${formatDuration(busy.seconds)} – training is paused until it finishes`) : describeTicket(full);
      return h("div", { cls: `trainscope-ticket status-${t.status} ${running ? "is-running" : ""}`, attrs: { "data-ticket": t.id } }, [
        h("span", { cls: `trainscope-badge status-${running ? "running" : t.status}`, text: running ? "running" : t.status }),
        h("span", { cls: "trainscope-ticket-label", text: ` ${t.label} ` }),
        h("span", { cls: "trainscope-ticket-text", text }),
        full.latency_ms !== null && full.latency_ms !== undefined && full.status === "applied" ? h("span", { cls: "trainscope-muted", text: ` (${Math.round(full.latency_ms)} ms)` }) : null,
        undo,
      ]);
    });
    /** @type {{name?: string, live?: boolean, note?: string}} */
    const d = model.get("delivery") || {};
    const note = d.name ? h("div", { cls: "trainscope-muted trainscope-delivery-note", text: d.live ? `Clicks reach the running loop (${d.name}): ${d.note}.` : d.name === "read-only" ? "" : `Clicks apply after the running cell (${d.note}).` }) : null;
    activity.replaceChildren(...(rows.length ? rows : [h("div", { cls: "trainscope-empty", text: "Requests and their results appear here." })]), ...(note ? [note] : []));
  };

  // ------------------------------------------------------------ a long action holds the loop
  /** @type {Set<string>} requests whose Cancel was clicked (the button says so until it ends) */
  const cancelling = new Set();
  /** @param {string} id */
  const cancel = (id) => {
    cancelling.add(id);
    model.send({ kind: "cancel", id });
    drawBusy();
  };
  // its parts are made once and updated in place: progress arrives 4 times a second, and a
  // Cancel button replaced under the pointer would lose the click
  const busyTextEl = h("span", { cls: "trainscope-busy-text" });
  const busyProgress = /** @type {HTMLProgressElement} */ (h("progress", { cls: "trainscope-busy-progress", attrs: { max: "100" } }));
  const cancelBtn = /** @type {HTMLButtonElement} */ (h("button", { cls: "trainscope-btn trainscope-cancel", text: "Cancel", title: "stop it at its next iteration; everything it changed is put back exactly" }));
  const busyNote = h("span", { cls: "trainscope-muted" });
  busyBar.append(busyTextEl, busyProgress, cancelBtn, busyNote);
  /** @type {string} */
  let busyId = "";
  cancelBtn.addEventListener("click", () => { if (busyId) cancel(busyId); });
  const drawBusy = () => {
    const raw = /** @type {Partial<import("./lib/model_types.js").Busy>} */ (model.get("busy") || {});
    const busy = raw.id ? /** @type {import("./lib/model_types.js").Busy} */ (raw) : null;
    busyBar.hidden = !busy;
    root.classList.toggle("is-busy", Boolean(busy));
    if (!busy) {
      cancelling.clear();
      busyId = "";
      return;
    }
    busyId = busy.id;
    const asked = Boolean(busy.cancel_requested) || cancelling.has(busy.id);
    const frac = busyFraction(busy);
    const text = busyText({ ...busy, cancel_requested: asked });
    if (busyTextEl.textContent !== text) busyTextEl.textContent = text;
    busyProgress.hidden = frac === null;
    if (frac !== null) busyProgress.value = Math.round(frac * 100);
    cancelBtn.hidden = !busy.cancellable;
    cancelBtn.disabled = asked || Boolean(model.get("read_only"));
    cancelBtn.textContent = asked ? "Cancelling…" : "Cancel";
    busyNote.textContent = busy.cancellable ? "training continues when it ends" : `running for ${formatDuration(busy.seconds)}; training continues when it ends`;
  };

  // ------------------------------------------------------------ tabs
  const drawTabs = () => {
    const f = model.get("findings") || {};
    const c = model.get("checklist") || {};
    const nf = (f.items || []).filter((/** @type {Finding} */ x) => x.active).length;
    const nc = (c.items || []).filter((/** @type {ChecklistItem} */ x) => x.status === "fail" || x.status === "warn").length;
    const tabs = [
      ["interventions", "Interventions"],
      ["findings", `Findings${nf ? ` (${nf})` : ""}`],
      ["checklist", `Checklist${nc ? ` (${nc})` : ""}`],
    ];
    const buttons = Array.from(tabBar.children);
    if (buttons.length === tabs.length) {
      // update the labels in place (the tab buttons stay the same elements)
      tabs.forEach(([key, label], i) => {
        const b = buttons[i];
        if (b.textContent !== label) b.textContent = label;
        b.classList.toggle("is-active", tab === key);
      });
      return;
    }
    tabBar.replaceChildren(...tabs.map(([key, label]) => {
      const b = h("button", { cls: `trainscope-tab ${tab === key ? "is-active" : ""} trainscope-tab-${key}`, text: label });
      b.addEventListener("click", () => { tab = key; drawPanel(); });
      return b;
    }));
  };
  const drawPanel = () => {
    drawTabs();
    const content = tab === "interventions" ? drawInterventions() : tab === "findings" ? drawFindings() : drawChecklist();
    panel.classList.toggle("is-interventions", tab === "interventions");
    panel.replaceChildren(...content);
  };

  // the intervention forms (and what is typed in them) are rebuilt only when the actions, the
  // layers or read-only change; new findings only update the tab counts there
  const onFindings = () => {
    guard.run("recommend", drawRecommend);
    if (tab === "interventions") guard.run("tabs", drawTabs);
    else guard.run("panel", drawPanel);
  };
  const onPanel = () => guard.run("panel", drawPanel);
  const onActivity = () => guard.run("activity", drawActivity);
  model.on("change:actions", onPanel);
  model.on("change:layers", onPanel);
  model.on("change:read_only", onPanel);
  model.on("change:read_only", onActivity);
  model.on("change:findings", onFindings);
  model.on("change:checklist", onFindings);
  model.on("change:tickets", onActivity);
  model.on("change:delivery", onActivity);
  model.on("change:busy", onActivity);
  const onBusy = () => guard.run("busy", drawBusy);
  model.on("change:busy", onBusy);
  model.on("change:read_only", onBusy);
  model.on("change:layer_params", onPanel);
  drawBusy();
  drawRecommend();
  drawPanel();
  drawActivity();
  return () => {
    guard.dispose();
    model.off("change:actions", onPanel);
    model.off("change:layers", onPanel);
    model.off("change:read_only", onPanel);
    model.off("change:read_only", onActivity);
    model.off("change:findings", onFindings);
    model.off("change:checklist", onFindings);
    model.off("change:tickets", onActivity);
    model.off("change:delivery", onActivity);
    model.off("change:busy", onActivity);
    model.off("change:busy", onBusy);
    model.off("change:read_only", onBusy);
    model.off("change:layer_params", onPanel);
  };
}

export default { render };
