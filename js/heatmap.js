// Canvas heatmap of histograms: rows = value bins (bottom = lowest), columns = steps or layers.
import { cellColor, cellShare, lookupTable } from "./lib/colormap.js";
import { h } from "./lib/dom.js";

/** @typedef {import("./lib/model_types.js").HeatmapSpec} HeatmapSpec */

const LUT = lookupTable(false);
const LUT_SPECIAL = lookupTable(true);
const MARGIN = { left: 74, right: 8, top: 4, bottom: 22 };
const BAR = { gap: 8, width: 10, labels: 34 }; // the colour bar right of the plot
const BAR_SPACE = BAR.gap + BAR.width + BAR.labels;
const HEIGHT = 190;

/**
 * @param {DataView | ArrayBuffer | Uint8Array | null | undefined} v
 * @returns {Uint8Array}
 */
function bytes(v) {
  if (!v) return new Uint8Array(0);
  if (v instanceof Uint8Array) return v;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/**
 * The colour bar: the map from empty to full, labelled with what a colour means (Python sends
 * the tick positions and the unit; nothing is computed here). A note names the red rows.
 * @param {CanvasRenderingContext2D} ctx
 * @param {{k?: number, unit?: string, ticks: Array<[number, string]>}} scale
 * @param {number} x
 * @param {number} y
 * @param {number} hgt
 * @param {string} fg
 * @param {string} muted
 * @param {boolean} special
 */
function drawColorBar(ctx, scale, x, y, hgt, fg, muted, special) {
  const top = y + 10;
  const ph = Math.max(20, hgt - 10 - (special ? 14 : 0));
  for (let i = 0; i < ph; i++) {
    const [r, g, b] = cellColor(1 + Math.round((1 - i / (ph - 1)) * 254), false);
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(x, top + i, BAR.width, 1);
  }
  ctx.strokeStyle = muted;
  ctx.lineWidth = 1;
  ctx.strokeRect(x + 0.5, top + 0.5, BAR.width - 1, ph - 1);
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  ctx.fillStyle = fg;
  for (const [level, label] of scale.ticks) {
    if (!(level >= 0 && level <= 1)) continue;
    const ty = top + (1 - level) * (ph - 1);
    ctx.fillRect(x + BAR.width, ty, 3, 1);
    ctx.fillText(String(label), x + BAR.width + 4, Math.min(Math.max(ty, top + 4), top + ph - 4));
  }
  ctx.fillStyle = muted;
  ctx.textBaseline = "top";
  ctx.fillText("share", x - 2, y - 1);
  if (special) {
    const [r, g, b] = cellColor(200, true);
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(x, top + ph + 4, BAR.width, 8);
    ctx.fillStyle = muted;
    ctx.fillText("NaN/Inf", x + BAR.width + 3, top + ph + 3);
  }
}

/** @type {import("@anywidget/types").Render<import("./lib/model_types.js").HeatmapModel>} */
function render({ model, el }) {
  const title = h("div", { cls: "trainscope-map-title" });
  const canvas = /** @type {HTMLCanvasElement} */ (h("canvas", { cls: "trainscope-map-canvas" }));
  const tip = h("div", { cls: "trainscope-map-tip" });
  const root = h("div", { cls: "trainscope trainscope-map" }, [title, h("div", { cls: "trainscope-map-box" }, [canvas, tip])]);
  el.appendChild(root);

  // the width comes from the ResizeObserver: reading clientWidth in draw() would force a layout of
  // the whole page at every update (expensive next to a 200-row table)
  let width = 0;
  let pending = false;
  /** @type {{width: number, fg: string, muted: string, bg: string} | null} */
  let theme = null;
  const schedule = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      draw();
    });
  };

  const draw = () => {
    /** @type {HeatmapSpec} */
    const spec = model.get("spec") || {};
    const rows = spec.rows || 0;
    const cols = spec.cols || 0;
    const data = bytes(model.get("values"));
    title.textContent = spec.title || "";
    if (!width) width = root.clientWidth || 400; // once, before the first resize event
    width = Math.max(width, 200);
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(HEIGHT * dpr);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${HEIGHT}px`;
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, HEIGHT);
    if (!theme || theme.width !== width) {
      // theme colours: read once (and after a resize), not at every update (style recalculation)
      const style = getComputedStyle(root);
      theme = {
        width,
        fg: style.getPropertyValue("--jp-ui-font-color1").trim() || "#333",
        muted: style.getPropertyValue("--jp-ui-font-color2").trim() || "#777",
        bg: style.getPropertyValue("--jp-layout-color2").trim() || "#f3f3f3",
      };
    }
    const { fg, muted } = theme;
    ctx.font = "10px sans-serif";
    if (!rows || !cols || data.length < rows * cols) {
      ctx.fillStyle = muted;
      ctx.fillText(spec.empty || "no data yet", MARGIN.left, HEIGHT / 2);
      return;
    }
    const scale = spec.scale && Array.isArray(spec.scale.ticks) ? spec.scale : null;
    const pw = width - MARGIN.left - MARGIN.right - (scale ? BAR_SPACE : 0);
    const ph = HEIGHT - MARGIN.top - MARGIN.bottom;
    // draw the image at its own resolution, then scale it into the plot area (crisp cells)
    const img = new ImageData(cols, rows);
    const special = spec.special || [];
    for (let r = 0; r < rows; r++) {
      const lut = special[r] ? LUT_SPECIAL : LUT;
      const y = rows - 1 - r; // row 0 = lowest bin at the bottom
      for (let c = 0; c < cols; c++) {
        const v = data[r * cols + c];
        img.data.set(lut.subarray(v * 4, v * 4 + 4), (y * cols + c) * 4);
      }
    }
    const off = document.createElement("canvas");
    off.width = cols;
    off.height = rows;
    const octx = off.getContext("2d");
    if (!octx) return;
    octx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = theme.bg;
    ctx.fillRect(MARGIN.left, MARGIN.top, pw, ph);
    ctx.drawImage(off, MARGIN.left, MARGIN.top, pw, ph);
    // highlighted column (the selected layer)
    const hl = spec.highlight ?? -1;
    if (hl >= 0 && hl < cols) {
      ctx.strokeStyle = "#d62728";
      ctx.lineWidth = 2;
      ctx.strokeRect(MARGIN.left + (hl * pw) / cols, MARGIN.top, pw / cols, ph);
    }
    // y labels: zero and the NaN/Inf rows always, then evenly spaced bins that do not collide
    const labels = spec.row_labels || [];
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const rowY = (/** @type {number} */ r) => MARGIN.top + ph - ((r + 0.5) * ph) / rows;
    const must = [...Array(rows).keys()].filter((r) => labels[r] === "0" || special[r]);
    const every = Math.max(1, Math.ceil(rows / Math.max(2, Math.floor(ph / 16))));
    const regular = [...Array(rows).keys()].filter((r) => r % every === 0 && !must.includes(r));
    /** @type {number[]} */
    const placed = [];
    for (const r of [...must, ...regular]) {
      const y = rowY(r);
      if (placed.some((p) => Math.abs(p - y) < 12)) continue;
      placed.push(y);
      ctx.fillStyle = special[r] ? "#d62728" : fg;
      ctx.fillText(labels[r] || "", MARGIN.left - 4, y);
    }
    // x labels: first and last column, and the axis label between them (or the middle column's
    // label when there is none): columns are records in order, so a middle column's label would
    // suggest an even scale the steps do not have
    const xl = spec.col_labels || [];
    ctx.fillStyle = fg;
    ctx.textBaseline = "top";
    const picks = spec.x_label ? (cols > 1 ? [0, cols - 1] : [0]) : cols > 2 ? [0, Math.floor(cols / 2), cols - 1] : [...Array(cols).keys()];
    picks.forEach((c, k) => {
      ctx.textAlign = k === 0 ? "left" : k === picks.length - 1 ? "right" : "center";
      const x = k === 0 ? MARGIN.left : k === picks.length - 1 ? MARGIN.left + pw : MARGIN.left + ((c + 0.5) * pw) / cols;
      ctx.fillText(String(xl[c] ?? c), x, MARGIN.top + ph + 5);
    });
    if (spec.x_label && cols > 1) {
      ctx.textAlign = "center";
      ctx.fillStyle = muted;
      ctx.fillText(spec.x_label, MARGIN.left + pw / 2, MARGIN.top + ph + 5);
    }
    if (scale) drawColorBar(ctx, scale, MARGIN.left + pw + BAR.gap, MARGIN.top, ph, fg, muted, special.some(Boolean));
    ctx.save();
    ctx.translate(10, MARGIN.top + ph / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.fillStyle = muted;
    ctx.fillText(spec.y_label || "", 0, 0);
    ctx.restore();
  };

  /** @param {MouseEvent} ev */
  const onMove = (ev) => {
    /** @type {HeatmapSpec} */
    const spec = model.get("spec") || {};
    const rows = spec.rows || 0;
    const cols = spec.cols || 0;
    const rect = canvas.getBoundingClientRect();
    const scale = spec.scale && Array.isArray(spec.scale.ticks) ? spec.scale : null;
    const pw = rect.width - MARGIN.left - MARGIN.right - (scale ? BAR_SPACE : 0);
    const ph = rect.height - MARGIN.top - MARGIN.bottom;
    const c = Math.floor(((ev.clientX - rect.left - MARGIN.left) / pw) * cols);
    const r = rows - 1 - Math.floor(((ev.clientY - rect.top - MARGIN.top) / ph) * rows);
    if (!rows || c < 0 || c >= cols || r < 0 || r >= rows) {
      tip.textContent = "";
      return;
    }
    const v = bytes(model.get("values"))[r * cols + c] || 0;
    const col = (spec.col_labels || [])[c] ?? String(c);
    const share = scale ? cellShare(v, scale.k || 0) : (v - 1) / 254;
    const pct = share >= 0.1 ? Math.round(share * 100) : share >= 0.01 ? (share * 100).toFixed(1) : (share * 100).toPrecision(1);
    tip.textContent = `${col} · bin ${(spec.row_labels || [])[r] ?? r} · ${v ? (scale ? `${pct}% of this column's values` : `level ${Math.round(share * 100)}%`) : "empty"}`;
  };
  const onLeave = () => { tip.textContent = ""; };
  canvas.addEventListener("mousemove", onMove);
  canvas.addEventListener("mouseleave", onLeave);
  const ro =
    typeof ResizeObserver !== "undefined"
      ? new ResizeObserver((entries) => {
          const w = Math.round(entries[entries.length - 1].contentRect.width);
          if (w > 0 && w !== width) {
            width = w;
            schedule();
          }
        })
      : null;
  if (ro) ro.observe(root);
  model.on("change:spec", schedule);
  model.on("change:values", schedule);
  schedule();
  return () => {
    if (ro) ro.disconnect();
    canvas.removeEventListener("mousemove", onMove);
    canvas.removeEventListener("mouseleave", onLeave);
    model.off("change:spec", schedule);
    model.off("change:values", schedule);
  };
}

export default { render };
