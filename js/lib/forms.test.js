import { describe, expect, it } from "vitest";
import { categoryTitle, choiceLabel, coerceParam, collectParams, defaultParams, fieldLabel, paramSummary, recommended, requestId, splitFields } from "./forms.js";

const schema = {
  lr: { type: "float", min: 0, min_open: true, max: 10, log: true, required: true, default: 0.001 },
  steps: { type: "int", min: 1, default: 100 },
  mode: { type: "choice", choices: ["norm", "value"], nullable: true, default: null },
  nesterov: { type: "bool", default: false },
  layers: { type: "layers", default: "all" },
  after: { type: "layers", required: true, default: null },
  note: { type: "str", default: "" },
};

describe("defaultParams", () => {
  it("starts from the schema's defaults, leaving nullable ones to the action", () => {
    expect(defaultParams(schema, ["fc1", "fc2"])).toEqual({ lr: 0.001, steps: 100, nesterov: false, layers: "all", note: "" });
  });
  it("picks the first choice / layer when there is no default", () => {
    expect(defaultParams({ c: { type: "choice", choices: ["a", "b"] }, l: { type: "layer" } }, ["x"])).toEqual({ c: "a", l: "x" });
  });
});

describe("coerceParam", () => {
  it("parses and range-checks numbers", () => {
    expect(coerceParam("lr", schema.lr, "0.01")).toEqual({ ok: true, value: 0.01 });
    expect(coerceParam("lr", schema.lr, "0")).toEqual({ ok: false, error: "lr must be > 0" });
    expect(coerceParam("lr", schema.lr, "11")).toEqual({ ok: false, error: "lr must be ≤ 10" });
    expect(coerceParam("lr", schema.lr, "abc")).toEqual({ ok: false, error: "lr must be a number" });
    expect(coerceParam("steps", schema.steps, "2.5")).toEqual({ ok: false, error: "steps must be a whole number" });
  });
  it("requires required fields and omits empty optional ones", () => {
    expect(coerceParam("lr", schema.lr, "")).toEqual({ ok: false, error: "lr is required" });
    expect(coerceParam("after", schema.after, [])).toEqual({ ok: false, error: "after is required" });
    expect(coerceParam("mode", schema.mode, "")).toEqual({ ok: true, value: undefined, omit: true });
  });
  it("checks choices and layer lists", () => {
    expect(coerceParam("mode", schema.mode, "value")).toEqual({ ok: true, value: "value" });
    expect(coerceParam("mode", schema.mode, "bogus").ok).toBe(false);
    expect(coerceParam("layers", schema.layers, ["fc1", "fc2"])).toEqual({ ok: true, value: ["fc1", "fc2"] });
    expect(coerceParam("layers", schema.layers, ["all", "fc1"])).toEqual({ ok: true, value: "all" });
    expect(coerceParam("nesterov", schema.nesterov, true)).toEqual({ ok: true, value: true });
  });
});

describe("collectParams", () => {
  it("returns the parameters or the first error", () => {
    const ok = collectParams(schema, { lr: "0.1", steps: "5", mode: "", nesterov: true, layers: "all", after: ["fc1"], note: "x" });
    expect(ok).toEqual({ ok: true, params: { lr: 0.1, steps: 5, nesterov: true, layers: "all", after: ["fc1"], note: "x" } });
    expect(collectParams(schema, { lr: "-1" })).toEqual({ ok: false, error: "lr must be > 0" });
  });
});

describe("splitFields / requestId", () => {
  it("shows the first fields and every required one", () => {
    expect(splitFields(schema)).toEqual({ main: ["lr", "steps", "after"], more: ["mode", "nesterov", "layers", "note"] });
  });
  it("makes unique ids of the accepted alphabet", () => {
    const ids = new Set(Array.from({ length: 200 }, () => requestId()));
    expect(ids.size).toBe(200);
    for (const id of ids) expect(id).toMatch(/^[A-Za-z0-9_.:-]{1,64}$/);
  });
});

describe("labels for people", () => {
  it("labels a field with its help's first phrase, the name when there is none", () => {
    expect(fieldLabel("lr", { type: "float", help: "new learning rate (other param groups keep their ratio)" })).toBe("new learning rate");
    expect(fieldLabel("T_0", { type: "int", help: "cosine_restarts: steps of the first cycle" })).toBe("steps of the first cycle");
    expect(fieldLabel("p", { type: "float", help: "drop probability" })).toBe("drop probability");
    expect(fieldLabel("max_norm", { type: "float" })).toBe("max norm");
    expect(fieldLabel("x", { type: "float", help: "a very long explanation that would not fit in a form label" })).toBe("x");
  });
  it("writes identifiers as words", () => {
    expect(choiceLabel("kaiming_normal")).toBe("kaiming normal");
    expect(categoryTitle("lr")).toBe("Learning rate");
    expect(categoryTitle("my_things")).toBe("My things");
    expect(paramSummary({ scheme: "lsuv", layers: ["fc1", "fc2"], factor: 0.5 })).toBe("scheme lsuv, layers fc1, fc2, factor 0.5");
  });
});

describe("recommended", () => {
  const fix = (action) => ({ action, params: {}, label: action });
  it("leads with the first fix of the most severe active finding", () => {
    const items = [
      { severity: "warning", active: true, interventions: [fix("lr_find")] },
      { severity: "error", active: false, interventions: [fix("old")] },
      { severity: "error", active: true, interventions: [fix("reinit"), fix("switch_optimizer")] },
    ];
    expect(recommended(items)?.fix.action).toBe("reinit");
  });
  it("recommends nothing when no active finding has a fix", () => {
    expect(recommended([{ severity: "error", active: true, interventions: [] }, { severity: "warning", active: false, interventions: [fix("a")] }])).toBeNull();
    expect(recommended([])).toBeNull();
  });
});
