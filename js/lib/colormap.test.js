import { describe, expect, it } from "vitest";
import { cellColor, cellShare, lookupTable } from "./colormap.js";

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

describe("cellShare", () => {
  it("undoes the log1p(1000 x share) encoding of the heatmap cells", () => {
    const enc = (/** @type {number} */ share) => 1 + Math.round((Math.log1p(1000 * share) / Math.log1p(1000)) * 254);
    for (const share of [0.001, 0.01, 0.1, 0.5, 1]) {
      // half a quantisation step (1/508 of the level) moves a 0.1 % share by 2.7 %, a large one by 1.4 %
      expect(Math.abs(cellShare(enc(share), 1000) / share - 1)).toBeLessThan(0.03);
    }
    expect(cellShare(0, 1000)).toBe(0);
    expect(cellShare(255, 1000)).toBeCloseTo(1, 6);
    expect(cellShare(10, 0)).toBe(0);
  });
});
