// JSDoc types mirroring the Python traits (the one place to read what the browser receives).

/**
 * @typedef {{name: string, live: boolean, note: string}} Delivery
 * @typedef {{label: string, status: string, message: string, applied_step: number | null}} LastAck
 * @typedef {{title?: string, run_state?: string, step?: number, epoch?: number | null,
 *   total_steps?: number | null, steps_per_s?: number | null, eta_s?: number | null,
 *   overhead?: number | null, ui_overhead?: number | null, loss?: number | string | null,
 *   val_loss?: number | string | null, lr?: number | string | null, delivery?: Delivery,
 *   cell_running?: boolean, last_ack?: LastAck | null, errors?: number, layers?: number,
 *   samples?: number, busy?: Busy | null}} HeaderState
 * @typedef {{done: number, total: number, text?: string}} Progress
 * @typedef {{id: string, action: string, label: string, seconds: number,
 *   progress?: Progress | null, cancellable?: boolean, cancel_requested?: boolean}} Busy
 * @typedef {{state: HeaderState}} HeaderModel
 *
 * @typedef {{key: string, label: string, fmt: "num" | "pct" | "sci", title: string}} Column
 * @typedef {{name: string, type: string, kind: string, n_params: number,
 *   values: Array<number | string | null>, status: Array<number | null>, nonfinite: boolean}} Row
 * @typedef {{columns: Column[], rows: Row[], step: number, selected: string}} LayerTableModel
 *
 * @typedef {{title?: string, rows?: number, cols?: number, row_labels?: string[],
 *   special?: boolean[], col_labels?: string[], x_label?: string, y_label?: string,
 *   empty?: string, highlight?: number,
 *   scale?: {k?: number, unit?: string, ticks: Array<[number, string]>} | null}} HeatmapSpec
 * @typedef {{spec: HeatmapSpec, values: DataView | ArrayBuffer | Uint8Array | null}} HeatmapModel
 *
 * @typedef {{name: string, label: string, description: string, category: string,
 *   schema: Record<string, import("./forms.js").ParamSpec>}} ActionSpec
 * @typedef {{id: string, action: string, label: string, params: Record<string, any>,
 *   source: string, status: string, message: string, submitted_step: number | null,
 *   applied_step: number | null, latency_ms: number | null, undoable: boolean,
 *   progress?: Progress | null, cancel_requested?: boolean}} TicketView
 * @typedef {{label: string, severity: string, title: string, first_step: number | null,
 *   last_step: number | null, active: boolean, layers: string[], evidence: string,
 *   checklist: string[], interventions: Array<{action: string, params: Record<string, any>, label: string}>}} Finding
 * @typedef {{id: string, source: string, title: string, meaning: string, status: string,
 *   evidence: string, automated: boolean, check?: string | null}} ChecklistItem
 * @typedef {{actions: ActionSpec[], tickets: TicketView[],
 *   findings: {available?: boolean, message?: string, items?: Finding[]},
 *   checklist: {available?: boolean, message?: string, items?: ChecklistItem[]},
 *   layers: string[], layer_params: number[], read_only: string, delivery: Delivery | {},
 *   busy: Busy | {}}} ControlsModel
 */

export {};
