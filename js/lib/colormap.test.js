import { describe, expect, it } from "vitest";
import { cellColor, lookupTable } from "./colormap.js";

describe("colour maps", () => {
  it("leaves empty cells transparent", () => {
    expect(cellColor(0, false)).toEqual([0, 0, 0, 0]);
    expect(cellColor(0, true)).toEqual([0, 0, 0, 0]);
  });
  it("runs from dark purple to yellow for densities", () => {
    expect(cellColor(1, false)).toEqual([68, 1, 84, 255]);
    expect(cellColor(255, false)).toEqual([253, 231, 37, 255]);
  });
  it("paints NaN / Inf rows red, never like ordinary values", () => {
    const [r, g, b] = cellColor(200, true);
    expect(r).toBeGreaterThan(150);
    expect(g).toBeLessThan(100);
    expect(b).toBeLessThan(100);
  });
  it("builds a 256-entry RGBA table matching cellColor", () => {
    const lut = lookupTable(false);
    expect(lut.length).toBe(1024);
    expect(Array.from(lut.subarray(128 * 4, 129 * 4))).toEqual(cellColor(128, false));
  });
});
