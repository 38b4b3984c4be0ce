import { describe, expect, it } from "vitest";
import { busyFraction, busyText, describeTicket, formatDuration, formatInt, formatPercent, formatValue, groupSteps } from "./format.js";

describe("formatValue", () => {
  it("keeps four significant digits in the plain range", () => {
    expect(formatValue(0.123456)).toBe("0.1235");
    expect(formatValue(1234.5)).toBe("1235");
    expect(formatValue(-2.5)).toBe("-2.5");
  });
  it("switches to scientific notation outside [1e-3, 1e4)", () => {
    expect(formatValue(0.000123)).toBe("1.23e-4");
    expect(formatValue(123456)).toBe("1.23e5");
    expect(formatValue(0.0001)).toBe("1e-4");
    expect(formatValue(0.00025, "sci")).toBe("2.5e-4");
  });
  it("writes plain numbers in the plain range, also for sci columns (9.98, not 9.98e0)", () => {
    expect(formatValue(9.98, "sci")).toBe("9.98");
    expect(formatValue(13.7, "sci")).toBe("13.7");
    expect(formatValue(0.05, "sci")).toBe("0.05");
    expect(formatValue(0.107, "sci")).toBe("0.107");
  });
  it("shows missing and non-finite values distinctly", () => {
    expect(formatValue(null)).toBe("–");
    expect(formatValue(undefined)).toBe("–");
    expect(formatValue("inf")).toBe("∞");
    expect(formatValue("-inf")).toBe("−∞");
    expect(formatValue(Number.NaN)).toBe("NaN");
    expect(formatValue(0)).toBe("0");
  });
  it("formats fractions as percentages", () => {
    expect(formatValue(0.25, "pct")).toBe("25%");
    expect(formatPercent(0.0123)).toBe("1.2%");
    expect(formatPercent(0.0000001)).toBe("<0.1%");
    expect(formatPercent(0)).toBe("0%");
  });
});

describe("formatDuration / formatInt", () => {
  it("formats ETAs", () => {
    expect(formatDuration(12.4)).toBe("12s");
    expect(formatDuration(125)).toBe("2:05");
    expect(formatDuration(3725)).toBe("1:02:05");
    expect(formatDuration(null)).toBe("–");
    expect(formatDuration(-1)).toBe("–");
  });
  it("groups thousands", () => {
    expect(formatInt(1234567)).toBe("1,234,567");
    expect(formatInt(12)).toBe("12");
  });
});

describe("describeTicket", () => {
  it("says where a request stands", () => {
    expect(describeTicket({ status: "pending" })).toBe("pending: applies at the next step");
    expect(describeTicket({ status: "applied", applied_step: 1200, message: "applied at step 1200" })).toBe("applied at step 1,200");
    expect(describeTicket({ status: "applied", applied_step: 5, message: "lr is now 0.01" })).toBe("applied at step 5 – lr is now 0.01");
    expect(describeTicket({ status: "refused", message: "lr must be > 0" })).toBe("refused: lr must be > 0");
    expect(describeTicket({ status: "failed", message: "" })).toBe("failed: no reason given");
    expect(describeTicket({ status: "undone", message: "undone at step 17957" })).toBe("undone at step 17,957");
  });
  it("groups the thousands of step numbers in messages, nothing else", () => {
    expect(groupSteps("loss 2.3 at step 12345, 1500 examples, steps 1569")).toBe("loss 2.3 at step 12,345, 1500 examples, steps 1,569");
  });
});

describe("busyText / busyFraction", () => {
  it("says that training is paused, for what, and how far it got", () => {
    const b = { id: "a1", label: "LR finder", seconds: 3, progress: { done: 37, total: 100, text: "LR finder" } };
    expect(busyText(b)).toBe("Training paused: LR finder 37/100");
    expect(busyFraction(b)).toBe(0.37);
    expect(busyText({ ...b, cancel_requested: true })).toBe("Training paused: LR finder 37/100 – cancelling…");
    expect(busyText({ label: "Run check", seconds: 4, progress: { done: 1200, total: 2000, text: "Overfit one batch" } })).toBe("Training paused: Overfit one batch 1,200/2,000");
  });
  it("falls back to the elapsed time without progress, and to nothing without a busy action", () => {
    expect(busyText({ label: "Run check", seconds: 4 })).toBe("Training paused: Run check (4s)");
    expect(busyFraction({ label: "Run check", seconds: 4 })).toBeNull();
    expect(busyFraction({ progress: { done: 5, total: 0 } })).toBeNull();
    expect(busyText(null)).toBe("");
    expect(busyText({})).toBe("");
  });
});
