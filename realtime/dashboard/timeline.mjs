// ser dashboard: the selected stream's smoothed probabilities over the last span seconds of
// stream time, on a canvas. Each label has its own colour and dash pattern and is named at
// the right end of its line; silence is a labelled grey band. The pure layout maths comes
// first (tested in tests/dashboard/), then the drawing, one small function per layer.

import { colorOf, dashOf, pct } from "./format.mjs";
import { argmax, selectedStream } from "./protocol.mjs";

const GRID_STEPS = [0, 0.25, 0.5, 0.75, 1];
const TICK_STEPS_S = [5, 10, 15, 20, 30, 60, 120];
const MIN_TICK_PX = 52;
const TAG_GAP_PX = 12;
const BAND_LABEL_MIN_PX = 44;
const EARLY_S = 2; // points this far before the left edge still draw the line into view
const DEFAULT_HOP_S = 0.5;

// ---------------------------------------------------------------- layout maths (pure)

/** The plot rectangle inside a canvas of cssW x cssH CSS pixels (room for axis text and line names). */
export function plotArea(cssW, cssH) {
  const left = 36;
  const top = 10;
  const right = cssW < 420 ? 62 : 74; // room for the end-of-line labels
  const bottom = 22;
  return { left, top, plotW: Math.max(10, cssW - left - right), plotH: Math.max(10, cssH - top - bottom) };
}

/** Stream time at the right edge ("now": the newest point) and at the left edge. */
export function timeRange(history, spanS) {
  const tNow = history.length ? history[history.length - 1].t : spanS;
  return { tNow, t0: tNow - spanS };
}

/** Time and probability -> canvas coordinates. */
export function scales(area, t0, spanS) {
  return {
    x: (t) => area.left + ((t - t0) / spanS) * area.plotW,
    y: (p) => area.top + (1 - Math.max(0, Math.min(1, p))) * area.plotH,
  };
}

/** The points to draw: those from shortly before the left edge on. */
export function visiblePoints(history, t0) {
  return history.filter((pt) => pt.t >= t0 - EARLY_S);
}

/** Seconds between time ticks: the first step at least MIN_TICK_PX wide, else the whole span. */
export function tickStep(spanS, plotW) {
  return TICK_STEPS_S.find((st) => (st / spanS) * plotW >= MIN_TICK_PX) || spanS;
}

/** Time ticks back from now: [{ back (s), text }]. */
export function ticks(spanS, plotW) {
  const step = tickStep(spanS, plotW);
  const out = [];
  for (let back = 0; back <= spanS; back += step) out.push({ back, text: back === 0 ? "now" : "−" + back + " s" });
  return out;
}

/**
 * Silent stretches as [start, end] in stream time. A silent point covers the time since the
 * point before it (one hop before it for the first point).
 */
export function silentBands(points, hopS) {
  const bands = [];
  let start = null;
  points.forEach((pt, i) => {
    const prevT = i > 0 ? points[i - 1].t : pt.t - hopS;
    if (!pt.voiced && start === null) start = prevT;
    if (pt.voiced && start !== null) {
      bands.push([start, prevT]);
      start = null;
    }
  });
  if (start !== null) bands.push([start, points[points.length - 1].t]);
  return bands;
}

/**
 * Vertical positions for the line names: each at its line's end, nudged apart so that no two
 * are closer than `gap`, and none below `bottom`. Returns [{ index, y }] sorted top to bottom.
 */
export function spreadTags(ys, gap, bottom) {
  const tags = ys.map((y, index) => ({ index, y })).sort((a, b) => a.y - b.y);
  for (let i = 1; i < tags.length; i++) if (tags[i].y < tags[i - 1].y + gap) tags[i].y = tags[i - 1].y + gap;
  const overflow = tags.length ? tags[tags.length - 1].y - bottom : 0;
  if (overflow > 0) tags.forEach((t) => (t.y -= overflow));
  for (let i = tags.length - 2; i >= 0; i--) if (tags[i].y > tags[i + 1].y - gap) tags[i].y = tags[i + 1].y - gap;
  return tags;
}

/** The canvas's text alternative. */
export function describeTimeline(labels, streamId, points, spanS) {
  if (!points.length) return "Timeline: no data yet";
  const last = points[points.length - 1];
  const best = argmax(last.v);
  const now = last.voiced ? labels[best] + " leads at " + pct(last.v[best]) : "silent";
  return "Timeline of the last " + spanS + " s on stream " + streamId + ": " + points.length + " windows; now " + now + ".";
}

// ---------------------------------------------------------------- drawing

function themeColors() {
  const styles = getComputedStyle(document.documentElement);
  const v = (name, fallback) => styles.getPropertyValue(name).trim() || fallback;
  return { text: v("--muted", "#57606a"), grid: v("--line", "#d0d7de"), silent: v("--silent", "#8c959f"), name: v("--text", "#1b1f24") };
}

/** Match the backing store to the CSS size and pixel ratio; a context drawing in CSS pixels. */
function sizeCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 600;
  const cssH = canvas.clientHeight || 260;
  if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
  }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, cssW, cssH);
  return { g, cssW, cssH };
}

function drawGrid(g, area, sc, colors) {
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  g.setLineDash([]);
  g.fillStyle = colors.text;
  g.strokeStyle = colors.grid;
  g.textAlign = "right";
  g.textBaseline = "middle";
  GRID_STEPS.forEach((p) => {
    g.beginPath();
    g.moveTo(area.left, sc.y(p) + 0.5);
    g.lineTo(area.left + area.plotW, sc.y(p) + 0.5);
    g.stroke();
    g.fillText(Math.round(p * 100) + "%", area.left - 4, sc.y(p));
  });
}

function drawTimeAxis(g, area, sc, tNow, spanS) {
  const base = area.top + area.plotH;
  g.textAlign = "center";
  g.textBaseline = "top";
  ticks(spanS, area.plotW).forEach(({ back, text }) => {
    const xx = sc.x(tNow - back);
    g.beginPath();
    g.moveTo(xx + 0.5, base);
    g.lineTo(xx + 0.5, base + 4);
    g.stroke();
    g.fillText(text, xx, base + 6);
  });
}

// Silence: grey bands, labelled, so a flat line during silence is not read as an emotion.
function drawBands(g, area, sc, bands, colors) {
  bands.forEach(([a, b]) => {
    const xa = sc.x(a);
    const xb = sc.x(b);
    g.globalAlpha = 0.18;
    g.fillStyle = colors.silent;
    g.fillRect(xa, area.top, Math.max(1, xb - xa), area.plotH);
    g.globalAlpha = 1;
    if (xb - xa > BAND_LABEL_MIN_PX) {
      g.fillStyle = colors.text;
      g.textAlign = "center";
      g.textBaseline = "top";
      g.fillText("silent", (Math.max(area.left, xa) + Math.min(area.left + area.plotW, xb)) / 2, area.top + 4);
    }
  });
}

function drawLines(g, sc, labels, points) {
  g.lineWidth = 2;
  g.lineJoin = "round";
  labels.forEach((label, li) => {
    g.strokeStyle = colorOf(label, li);
    g.setLineDash(dashOf(li));
    g.beginPath();
    points.forEach((pt, i) => {
      if (i === 0) g.moveTo(sc.x(pt.t), sc.y(pt.v[li]));
      else g.lineTo(sc.x(pt.t), sc.y(pt.v[li]));
    });
    g.stroke();
  });
}

// Name each line at its right end: a tick in the line's colour, the name in the text colour
// (readable on any background).
function drawTags(g, area, sc, labels, last, colors) {
  const tags = spreadTags(labels.map((_, li) => sc.y(last.v[li])), TAG_GAP_PX, area.top + area.plotH);
  const x = area.left + area.plotW;
  g.textAlign = "left";
  g.textBaseline = "middle";
  g.font = "bold 11px system-ui, sans-serif";
  tags.forEach(({ index, y }) => {
    g.fillStyle = colorOf(labels[index], index);
    g.fillRect(x + 3, y - 1.5, 8, 3);
    g.fillStyle = colors.name;
    g.fillText(labels[index], x + 13, y);
  });
}

function drawEmpty(g, area, text, colors) {
  g.fillStyle = colors.text;
  g.textAlign = "center";
  g.textBaseline = "middle";
  g.font = "13px system-ui, sans-serif";
  g.fillText(text, area.left + area.plotW / 2, area.top + area.plotH / 2);
}

/** Draw the selected stream of `state` (the reducer's) on `canvas`. */
export function renderTimeline(canvas, state) {
  const { g, cssW, cssH } = sizeCanvas(canvas);
  const colors = themeColors();
  const area = plotArea(cssW, cssH);
  const spanS = state.spanS;
  const s = selectedStream(state);
  const hist = s ? s.history : [];
  const { tNow, t0 } = timeRange(hist, spanS);
  const sc = scales(area, t0, spanS);
  const points = visiblePoints(hist, t0);

  drawGrid(g, area, sc, colors);
  drawTimeAxis(g, area, sc, tNow, spanS);
  g.save();
  g.beginPath();
  g.rect(area.left, area.top, area.plotW, area.plotH);
  g.clip();
  drawBands(g, area, sc, silentBands(points, (state.model && state.model.hop_s) || DEFAULT_HOP_S), colors);
  drawLines(g, sc, state.labels, points);
  g.restore();
  g.setLineDash([]);
  if (points.length) drawTags(g, area, sc, state.labels, points[points.length - 1], colors);
  else drawEmpty(g, area, s ? "Waiting for predictions on this stream…" : "No stream selected", colors);

  canvas.dataset.points = String(points.length);
  canvas.dataset.stream = s ? s.id : "";
  canvas.setAttribute("aria-label", describeTimeline(state.labels, s && s.id, points, spanS));
}

/** The legend under the canvas: each label with its line's colour and dash, drawn. */
export function renderLegend(list, labels) {
  const key = labels.join("\u0000");
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren(
    ...labels.map((label, i) => {
      const li = document.createElement("li");
      const c = document.createElement("canvas");
      c.width = 68;
      c.height = 24;
      c.setAttribute("aria-hidden", "true");
      const g = c.getContext("2d");
      g.strokeStyle = colorOf(label, i);
      g.lineWidth = 5;
      g.setLineDash(dashOf(i).map((d) => d * 2));
      g.beginPath();
      g.moveTo(2, 12);
      g.lineTo(66, 12);
      g.stroke();
      li.append(c, document.createTextNode(label));
      return li;
    })
  );
}
