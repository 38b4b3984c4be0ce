// Pure colour maps (no DOM): viridis-like for densities, reds for the NaN/Inf rows.

const VIRIDIS = [
  [68, 1, 84], [72, 35, 116], [64, 67, 135], [52, 94, 141], [41, 120, 142], [32, 144, 140],
  [34, 167, 132], [68, 190, 112], [121, 209, 81], [189, 222, 38], [253, 231, 37],
];
const REDS = [[254, 224, 210], [252, 146, 114], [222, 45, 38], [165, 15, 21]];

/**
 * @param {number[][]} stops
 * @param {number} f  0..1
 * @returns {[number, number, number]}
 */
function interpolate(stops, f) {
  const x = Math.min(Math.max(f, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const w = x - i;
  const a = stops[i];
  const b = stops[i + 1];
  /** @param {number} k */
  const mix = (k) => Math.round(a[k] * (1 - w) + b[k] * w);
  return [mix(0), mix(1), mix(2)];
}

/**
 * Colour of a quantised heatmap cell: 0 = empty (transparent), 1..255 = intensity.
 * @param {number} v  0..255
 * @param {boolean} special  a -Inf / +Inf / NaN row
 * @returns {[number, number, number, number]} rgba 0..255
 */
export function cellColor(v, special) {
  if (v === 0) return [0, 0, 0, 0];
  const f = (v - 1) / 254;
  const [r, g, b] = special ? interpolate(REDS, 0.35 + 0.65 * f) : interpolate(VIRIDIS, f);
  return [r, g, b, 255];
}

/**
 * A 256-entry lookup table (rgba per value) for fast canvas drawing.
 * @param {boolean} special
 * @returns {Uint8ClampedArray}
 */
export function lookupTable(special) {
  const lut = new Uint8ClampedArray(256 * 4);
  for (let v = 0; v < 256; v++) lut.set(cellColor(v, special), v * 4);
  return lut;
}

/**
 * The share of its column's values a quantised cell stands for, undoing Python's encoding
 * (`hist_image`: level = log1p(k * share) / log1p(k), cell = 1 + round(level * 254)).
 * Decoding only, for the tooltip: the image itself is computed in Python.
 * @param {number} v  0..255 (0: empty)
 * @param {number} k  the scale's k (1000)
 * @returns {number} 0..1
 */
export function cellShare(v, k) {
  if (!(v > 0) || !(k > 0)) return 0;
  const level = Math.min(1, (v - 1) / 254);
  return Math.expm1(level * Math.log1p(k)) / k;
}
