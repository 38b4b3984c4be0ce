"""The dashboard's pushes: header, curves, layer table, per-layer views, controls, diagnosis.

Each ``_push_*`` sends one part's new state (called with the dashboard's lock held, from the
update loop in :mod:`~trainscope.widgets.dashboard` or a refresh); see :mod:`._dash_state`.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from ..actions import REGISTRY
from ..history import History
from ._dash_state import DashboardState
from ._health import layer_rows
from ._panels import action_specs, checklist_payload, findings_payload
from ._series import hist_image, jsonable_number

__all__ = ["DashboardViews"]


class DashboardViews(DashboardState):
    """Draws the dashboard's parts from the history (mixed into :class:`Dashboard`)."""


    # ------------------------------------------------------------------ pushes (hold the lock)
    def _run_state(self, step: int) -> str:
        if self.probe is None:
            return "saved run"
        if self._detached:
            return "detached"
        if self._cell_running:
            return "running"
        if time.monotonic() - self._bg_seen < 2.0:
            return "running (background)"
        if self._bg_status is not None:
            return f"{self._bg_status} (background)"
        if self._cell_error:
            return self._cell_error
        if self.total_steps and step >= self.total_steps:
            return "finished"
        return "waiting for the first step" if step == 0 else "idle"

    def _epoch(self, step: int) -> float | None:
        spe = self.steps_per_epoch
        if spe is None and self.probe is not None:
            with contextlib.suppress(Exception):
                spe = len(self.probe.data) if self.probe.data is not None else None  # type: ignore[arg-type]
        if spe:
            return round(step / spe, 2)
        ep = self.history.scalars.get("epoch")
        if ep is not None and ep.total:
            return float(ep.last(1)[1][-1])
        return None

    def _last(self, name: str, h: History | None = None) -> float | None:
        s = (h or self.history).scalars.get(name)
        if s is None or not s.total:
            return None
        return float(s.last(1)[1][-1])

    def _push_header(self) -> None:
        h = self.history
        probe = self.probe
        step = probe.step_count if probe is not None else max(h.step + 1, 0)
        now = time.monotonic()
        if self._rate is not None:
            t_prev, s_prev, ui_prev = self._rate
            dt = now - t_prev
            if dt >= 0.05:
                rate = (step - s_prev) / dt
                ui = (self._ui_seconds - ui_prev) / dt
                a = 0.3 if self._steps_per_s is not None else 1.0
                self._steps_per_s = (
                    rate if self._steps_per_s is None else (1 - a) * self._steps_per_s + a * rate
                )
                self._ui_frac = ui if self._ui_frac is None else 0.7 * self._ui_frac + 0.3 * ui
                self._rate = (now, step, self._ui_seconds)
        else:
            self._rate = (now, step, self._ui_seconds)
        running = self._cell_running or now - self._bg_seen < 2.0
        sps = self._steps_per_s if running else None
        eta = None
        if self.total_steps and sps and sps > 0 and step < self.total_steps:
            eta = (self.total_steps - step) / sps
        last = self._acks.latest()
        overhead = None
        if probe is not None:
            with contextlib.suppress(Exception):
                overhead = probe.overhead
        self.header.state = {
            "title": self._title,
            "run_state": self._run_state(step),
            "step": step,
            "epoch": self._epoch(step),
            "total_steps": self.total_steps,
            "steps_per_s": jsonable_number(sps, 3),
            "eta_s": jsonable_number(eta, 3),
            "overhead": jsonable_number(overhead, 3),
            "ui_overhead": jsonable_number(self._ui_frac, 3) if running else None,
            "loss": jsonable_number(self._last("loss")),
            "val_loss": jsonable_number(self._last("val_loss")),
            "lr": jsonable_number(self._last("lr")),
            "delivery": self._delivery.describe()
            if probe is not None
            else {"name": "read-only", "live": False, "note": ""},
            "cell_running": bool(self._cell_running),
            "busy": dict(self._busy) if self._busy else None,
            "last_ack": {k: last.get(k) for k in ("label", "status", "message", "applied_step")}
            if last
            else None,
            "errors": len(probe.errors) if probe is not None else 0,
            "layers": len(h.layers),
            "samples": h.samples(),
        }

    def _push_curves(self, force: bool = False) -> None:
        if (self.tabs.selected_index or 0) != 0:
            # a hidden plot is laid out at zero size (bqplot logs NaN transforms): the curves
            # wait, marked dirty, and are drawn when their tab is shown again (_on_tab)
            self._dirty["scalars"] = True
            self._curves_stale = True
            return
        self._curves_stale = False
        self._dirty["scalars"] = False
        events = self._dirty["events"]
        self.curves.update(
            self.histories,
            force=force or events,
            steps=self.probe.step_count if self.probe is not None else None,
        )

    def _order(self) -> list[int]:
        h = self.history
        return [i for i in h.forward_order if i < len(h.layers)]

    def _selected_index(self) -> int | None:
        name = self.table.selected
        if not name:
            return None
        try:
            return self.history.layer_index(name)
        except KeyError:
            return None

    def _push_table(self, force: bool = False) -> None:
        self._dirty["record"] = False
        h = self.history
        rec = h.latest
        step = rec.step if rec is not None else -1
        if not force and step == self._table_step:
            return
        self._table_step = step
        rows = layer_rows(h)
        with self.table.hold_sync():
            self.table.rows = rows
            self.table.step = step
            if not self.table.selected and rows:
                # start on the first layer with parameters, so the detail is never empty
                first = next((r for r in rows if r["n_params"] > 0), rows[0])
                self.table.selected = first["name"]

    def _push_views(self, force: bool = False) -> None:
        """Update the per-layer view that is visible (the others wait until shown)."""
        self._dirty["views"] = False
        h = self.history
        tab = self.tabs.selected_index or 0
        sel = self._selected_index()
        order = self._order()
        key = (tab, sel, h.samples(), h.step, len(h.events))
        if not force and self._view_keys.get("views") == key:
            return
        self._view_keys["views"] = key
        if tab == 1:
            self._push_layer_maps(sel)
        elif tab == 2:
            self.depth.update(h, order, sel)
            self._push_depth_map(order, sel)
        elif tab == 3:
            self.layer_curves.update(h, order, sel)
        elif tab == 4:
            self.lr_finder.update(
                h, read_only=bool(self.controls.read_only), registry=list(REGISTRY)
            )
        elif tab == 5:
            self.landscape.update()

    def _push_layer_maps(self, sel: int | None) -> None:
        h = self.history
        name = h.layers[sel].name if sel is not None else ""
        for kind, widget, what in (
            ("act", self.act_map, "outputs"),
            ("ograd", self.grad_map, "output gradients"),
        ):
            steps, counts = np.zeros(0), np.zeros((0, 0))
            if sel is not None:  # this layer only: cheap however many layers there are
                steps, counts = h.layer_histograms(kind, sel)
            if sel is None or len(steps) == 0 or not np.any(counts):
                widget.show(
                    None,
                    title=f"{what} of {name or '(no layer)'} over time",
                    empty="no histograms recorded yet",
                )
                continue
            img = hist_image(counts)
            widget.show(
                img,
                title=f"{what} of {name} over time",
                col_labels=[f"step {int(s)}" for s in steps],
                x_label=f"{len(steps)} records in order (steps not to scale)",
            )

    def _push_depth_map(self, order: list[int], sel: int | None) -> None:
        h = self.history
        rec = h.latest
        if rec is None or rec.act_hist is None or not order:
            self.depth_map.show(
                None,
                title="output distribution by depth",
                empty="no histograms recorded yet",
            )
            return
        img = hist_image(np.asarray(rec.act_hist)[order])
        self.depth_map.show(
            img,
            title=f"output distribution by depth (step {rec.step})",
            col_labels=[h.layers[i].name for i in order],
            x_label="layer (forward order)",
            highlight=order.index(sel) if sel is not None and sel in order else -1,
        )

    def _push_controls(self) -> None:
        key = tuple((name, id(spec)) for name, spec in REGISTRY.items())
        names = [self.history.layers[i].name for i in self._order()]
        with self.controls.hold_sync():
            if key != self._registry_key:
                self._registry_key = key
                self.controls.actions = action_specs()
            if names != self.controls.layers:
                self.controls.layer_params = [
                    int(self.history.layers[i].n_params) for i in self._order()
                ]
                self.controls.layers = names
            d = (
                self._delivery.describe()
                if self.probe is not None
                else {"name": "read-only", "live": False, "note": ""}
            )
            if d != self.controls.delivery:
                self.controls.delivery = d

    def _push_diagnosis(self, force: bool = False) -> None:
        """Findings and checklist (guarded: those modules may be absent or fail)."""
        h = self.history
        version = (h.samples(), h.step, len(h.events), len(self._acks))
        if not force and version == self._diag_version:
            return
        self._diag_version = version
        t0 = time.perf_counter()
        findings = findings_payload(self.probe, h)
        checklist = checklist_payload(self.probe)
        with self.controls.hold_sync():
            self.controls.findings = findings
            self.controls.checklist = checklist
        self._diag_cost = time.perf_counter() - t0
        # keep the diagnosis under ~1% of wall time however slow it is
        self._slow.interval = max(2.0, 2 * self._heavy.interval, 100 * self._diag_cost)
