// ser dashboard: one labelled bar per emotion with the selected stream's smoothed probability.
// Each row is a role="meter" with its value in words; the top emotion's row is marked.

import { colorOf, pct } from "./format.mjs";
import { vectorOf } from "./protocol.mjs";

/** A bar's CSS width for a probability, clamped to 0..100 %: 0.1234 -> "12.34%". */
export function barWidth(v) {
  return (Math.max(0, Math.min(1, v)) * 100).toFixed(2) + "%";
}

/**
 * What the bars show for a stream record: null before its first prediction, else
 * { silent, rows: [{ label, value, width, text, now, valuetext, top }] } in the labels' order.
 * In silence no row is the top one.
 */
export function barRows(labels, stream) {
  if (!stream || stream.count === 0) return null;
  const vec = vectorOf(labels, stream.smoothed);
  const silent = stream.voiced === false;
  const topIdx = labels.indexOf(stream.top);
  return {
    silent: silent,
    rows: labels.map((label, i) => ({
      label: label,
      value: vec[i],
      width: barWidth(vec[i]),
      text: pct(vec[i]),
      now: Math.round(vec[i] * 100),
      valuetext: label + " " + pct(vec[i]) + (silent ? " (silent)" : ""),
      top: !silent && i === topIdx,
    })),
  };
}

function buildRow(label, i) {
  const row = document.createElement("div");
  row.className = "bar-row";
  row.dataset.label = label;
  row.dataset.value = "";
  row.setAttribute("role", "meter");
  row.setAttribute("aria-valuemin", "0");
  row.setAttribute("aria-valuemax", "100");
  row.setAttribute("aria-label", label);
  const name = document.createElement("span");
  name.className = "name";
  const sw = document.createElement("span");
  sw.className = "swatch";
  sw.style.background = colorOf(label, i);
  sw.setAttribute("aria-hidden", "true");
  name.append(sw, document.createTextNode(label));
  const track = document.createElement("span");
  track.className = "track";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.background = colorOf(label, i);
  fill.style.display = "block";
  track.appendChild(fill);
  const val = document.createElement("span");
  val.className = "val";
  val.textContent = "–";
  row.append(name, track, val);
  return row;
}

/** Show `stream` (a record from the reducer's state, or null) in the bars of `container`. */
export function renderBars(container, labels, stream) {
  const key = labels.join("\u0000");
  if (container.dataset.key !== key) {
    // New labels (a different model): new rows.
    container.dataset.key = key;
    container.replaceChildren(...labels.map(buildRow));
  }
  const view = barRows(labels, stream);
  container.dataset.stream = stream ? stream.id : "";
  container.dataset.seq = view && stream.seq !== null ? String(stream.seq) : "";
  if (view) container.dataset.voiced = view.silent ? "false" : "true";
  Array.from(container.children).forEach((row, i) => {
    const r = view && view.rows[i];
    row.dataset.value = r ? String(r.value) : "";
    row.dataset.top = r && r.top ? "true" : "false";
    row.querySelector(".fill").style.width = r ? r.width : "0";
    row.querySelector(".val").textContent = r ? r.text : "–";
    if (r) {
      row.setAttribute("aria-valuenow", String(r.now));
      row.setAttribute("aria-valuetext", r.valuetext);
    } else {
      row.removeAttribute("aria-valuenow");
      row.removeAttribute("aria-valuetext");
    }
  });
}
