// ser dashboard: how labels and numbers look everywhere on the page (bars, timeline, stream cards).

// Okabe-Ito colours (distinguishable with the common colour-vision deficiencies). Every
// place that uses colour also says the label in words or uses a line style.
const LABEL_COLORS = {
  anger: "#D55E00",
  disgust: "#009E73",
  fear: "#CC79A7",
  happy: "#E69F00",
  neutral: "#56B4E9",
  sad: "#0072B2",
};
const FALLBACK_COLORS = ["#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#0072B2", "#F0E442", "#666666"];
const DASHES = [[], [9, 4], [2, 4], [12, 4, 2, 4], [5, 5], [14, 3, 3, 3, 3, 3], [1, 3], [20, 5]];

/** The colour of the i-th label: its own for the six known emotions, else one from a fixed cycle. */
export function colorOf(label, i) {
  return LABEL_COLORS[label] || FALLBACK_COLORS[i % FALLBACK_COLORS.length];
}

/** The i-th label's line dash pattern (canvas setLineDash), so lines differ without colour. */
export function dashOf(i) {
  return DASHES[i % DASHES.length];
}

/** A probability as a whole percentage, clamped to 0..100: 0.456 -> "46%". */
export function pct(p) {
  return Math.round(Math.max(0, Math.min(1, p)) * 100) + "%";
}

/** A finite number with fixed digits, else a dash. */
export function num(x, digits) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
}
