import { describe, expect, it } from "vitest";
import { nextSort, sortKey, sortRows } from "./sort.js";

const rows = [
  { name: "fc1", values: [0.5, null] },
  { name: "act", values: [null, 2] },
  { name: "fc2", values: ["inf", 1] },
  { name: "fc3", values: [0.1, 1] },
];

describe("sortRows", () => {
  it("keeps forward order without a sort column", () => {
    expect(sortRows(rows, null, "asc").map((r) => r.name)).toEqual(["fc1", "act", "fc2", "fc3"]);
  });
  it("sorts numbers, infinity included, with missing values last either way", () => {
    expect(sortRows(rows, 0, "asc").map((r) => r.name)).toEqual(["fc3", "fc1", "fc2", "act"]);
    expect(sortRows(rows, 0, "desc").map((r) => r.name)).toEqual(["fc2", "fc1", "fc3", "act"]);
  });
  it("breaks ties by forward order", () => {
    expect(sortRows(rows, 1, "asc").map((r) => r.name)).toEqual(["fc2", "fc3", "act", "fc1"]);
  });
  it("sorts by name with column -1", () => {
    expect(sortRows(rows, -1, "asc").map((r) => r.name)).toEqual(["act", "fc1", "fc2", "fc3"]);
  });
  it("does not mutate its input", () => {
    const copy = rows.slice();
    sortRows(rows, 0, "asc");
    expect(rows).toEqual(copy);
  });
});

describe("sortKey / nextSort", () => {
  it("maps JSON values to numbers", () => {
    expect(sortKey("inf")).toBe(Number.POSITIVE_INFINITY);
    expect(sortKey("-inf")).toBe(Number.NEGATIVE_INFINITY);
    expect(Number.isNaN(sortKey(null))).toBe(true);
  });
  it("cycles desc -> asc -> forward order", () => {
    let s = { column: null, dir: "desc" };
    s = nextSort(s, 2);
    expect(s).toEqual({ column: 2, dir: "desc" });
    s = nextSort(s, 2);
    expect(s).toEqual({ column: 2, dir: "asc" });
    expect(nextSort(s, 2).column).toBe(null);
    expect(nextSort(s, 3)).toEqual({ column: 3, dir: "desc" });
  });
});
