// ser dashboard: the page's text panels from the reducer's state: the connection line, the
// model card, the daemon's messages, the stream cards, and the selected stream's head (name,
// voice, latency, window, time, top emotion). The bars and the timeline have modules of their own.

import { colorOf, num, pct } from "./format.mjs";
import { selectedStream, vectorOf } from "./protocol.mjs";

const MAX_ERRORS_SHOWN = 8;

// ---------------------------------------------------------------- words (pure)

/** The connection line; `now` (ms) counts down to the next attempt. */
export function connectionText(state, now) {
  if (state.connection === "open") return "Connected" + (state.connects > 1 ? " (reconnected)" : "");
  if (state.connection === "connecting") return "Connecting to the daemon…";
  if (state.connection !== "reconnecting") return "Disconnected";
  const secs = state.retryInMs !== null ? Math.max(0, Math.ceil((state.retryAt - now) / 1000)) : null;
  const close = state.lastClose || {};
  const why = close.reason ? " (" + close.reason + ")" : "";
  const head =
    close.code === 1008 || close.code === 1013
      ? "The daemon refused the connection"
      : state.connects
        ? "Disconnected from the daemon" + why
        : "Cannot reach the daemon";
  return head + (secs !== null ? "; retrying in " + secs + " s (attempt " + state.attempt + ")" : "; retrying…");
}

/** A stream card's one-line summary. */
export function streamSummary(labels, s) {
  if (s.count === 0) return "no predictions yet";
  if (s.voiced === false) return "silent";
  return s.top + " " + pct(vectorOf(labels, s.smoothed)[labels.indexOf(s.top)] || 0);
}

/** The widths (CSS %) of a stream card's mini bar: each label's share of the total. */
export function shareWidths(vec) {
  const total = vec.reduce((a, b) => a + b, 0) || 1;
  return vec.map((v) => ((v / total) * 100).toFixed(2) + "%");
}

/** The selected stream's facts line, in words. */
export function streamFacts(s) {
  const silent = s.voiced === false;
  return {
    voiced: silent ? "false" : "true",
    voice: silent ? "silent" : s.voiced === true ? "voice" : "voice (not reported)",
    latency: s.latency_ms === null ? "–" : Math.round(s.latency_ms) + " ms",
    windowNo: s.seq === null ? "–" : "#" + s.seq,
    time: s.t_end === null ? "–" : num(s.t_end, 1) + " s",
  };
}

// ---------------------------------------------------------------- DOM

/** Connection line only (also run every 500 ms while reconnecting, for the countdown). */
export function renderConnection(el, state, now) {
  el.conn.dataset.state = state.connection;
  el.connText.textContent = connectionText(state, now);
  el.reconnectNow.hidden = state.connection !== "reconnecting";
}

function renderModel(el, state) {
  const m = state.model || {};
  el.modelName.textContent = m.name || "–";
  el.modelBackend.textContent = m.backend || "–";
  el.modelWindow.textContent = typeof m.window_s === "number" || typeof m.hop_s === "number" ? num(m.window_s, 1) + " s / " + num(m.hop_s, 2) + " s" : "–";
  el.modelRate.textContent = typeof m.sample_rate === "number" ? m.sample_rate / 1000 + " kHz" : "–";
  el.modelLabels.textContent = state.labels.join(", ");
  el.proto.textContent = "protocol " + (state.protocol === null ? "–" : state.protocol);
}

function errorItem(e) {
  const li = document.createElement("li");
  li.appendChild(document.createTextNode(new Date(e.at).toLocaleTimeString() + " — " + (e.words || e.message) + " "));
  if (e.words && e.message) {
    const said = document.createElement("span");
    said.className = "said";
    said.textContent = "The daemon said: “" + e.message + "” ";
    li.appendChild(said);
  }
  const code = document.createElement("code");
  code.textContent = "(" + e.code + ")";
  li.appendChild(code);
  if (e.repeat > 1) li.appendChild(document.createTextNode(" ×" + e.repeat));
  return li;
}

function streamCard(id, onSelect) {
  const li = document.createElement("li");
  const b = document.createElement("button");
  b.type = "button";
  b.className = "stream-card";
  b.dataset.stream = id;
  b.innerHTML = '<span class="s-head"><span class="s-id"></span><span class="s-kind"></span></span><span class="s-top"></span><span class="mini" aria-hidden="true"></span>';
  b.querySelector(".s-id").textContent = id;
  b.addEventListener("click", () => onSelect(id));
  li.appendChild(b);
  return li;
}

function renderStreams(el, state, onSelect) {
  el.streamsEmpty.hidden = state.order.length > 0;
  // Rebuild only when the set of streams changes, so focus stays where the user put it.
  const key = state.order.join("\u0000");
  if (el.streamList.dataset.key !== key) {
    el.streamList.dataset.key = key;
    el.streamList.replaceChildren(...state.order.map((id) => streamCard(id, onSelect)));
  }
  el.streamList.querySelectorAll(".stream-card").forEach((b) => {
    const s = state.streams[b.dataset.stream];
    const shown = s.id === state.selected;
    b.setAttribute("aria-current", shown ? "true" : "false");
    b.dataset.ended = s.ended ? "true" : "false";
    b.querySelector(".s-kind").textContent = (s.kind || "") + (s.ended ? " (ended)" : "");
    const top = b.querySelector(".s-top");
    top.dataset.voiced = s.voiced === false ? "false" : "true";
    top.textContent = streamSummary(state.labels, s);
    const mini = b.querySelector(".mini");
    const widths = shareWidths(vectorOf(state.labels, s.smoothed));
    if (mini.childElementCount !== widths.length) {
      mini.replaceChildren(
        ...state.labels.map((label, i) => {
          const span = document.createElement("span");
          span.style.background = colorOf(label, i);
          return span;
        })
      );
    }
    Array.from(mini.children).forEach((span, i) => {
      span.style.width = widths[i];
      span.style.opacity = s.voiced === false ? "0.35" : "1";
    });
    b.setAttribute("aria-label", "Stream " + s.id + (s.kind ? ", " + s.kind : "") + ": " + top.textContent + (shown ? " (shown)" : ""));
  });
}

function renderDetailHead(el, state) {
  const s = selectedStream(state);
  el.detailH.textContent = s ? "Stream " + s.id : "No stream selected";
  if (s && s.kind) {
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = s.kind + (s.ended ? " (ended)" : "");
    el.detailH.appendChild(kind);
  }
  const top = el.topEmotion;
  if (!s || s.count === 0) {
    top.textContent = s ? "Waiting for predictions on this stream…" : "Waiting for predictions…";
    top.dataset.voiced = "";
    top.dataset.top = "";
    el.voice.dataset.voiced = "";
    el.voice.textContent = "no data";
    el.latency.textContent = el.windowNo.textContent = el.streamTime.textContent = "–";
    return;
  }
  const facts = streamFacts(s);
  el.voice.dataset.voiced = facts.voiced;
  el.voice.textContent = facts.voice;
  el.latency.textContent = facts.latency;
  el.windowNo.textContent = facts.windowNo;
  el.streamTime.textContent = facts.time;
  const silent = s.voiced === false;
  top.dataset.voiced = facts.voiced;
  top.dataset.top = silent ? "" : s.top || "";
  const extra = document.createElement("span");
  if (silent) {
    extra.className = "why";
    extra.textContent = "No voice in this window, so no emotion is named (bars are greyed).";
    top.replaceChildren(document.createTextNode("Silence"), extra);
  } else {
    const idx = state.labels.indexOf(s.top);
    extra.className = "pct";
    extra.textContent = idx >= 0 ? pct(vectorOf(state.labels, s.smoothed)[idx]) : "";
    top.replaceChildren(document.createTextNode((s.top || "–") + " "), extra);
  }
}

/**
 * The panels of the page (`el`: the elements by name, see app.mjs). `onSelect(id)` is called
 * when the user picks a stream card.
 */
export function createPanels(el, onSelect) {
  let shownErrors = null; // the errors array last drawn: the list is rebuilt only when it changes
  return {
    render(state, now) {
      renderConnection(el, state, now);
      renderModel(el, state);
      if (state.errors !== shownErrors) {
        shownErrors = state.errors;
        el.errors.hidden = state.errors.length === 0;
        el.errorList.replaceChildren(...state.errors.slice(-MAX_ERRORS_SHOWN).map(errorItem));
      }
      renderStreams(el, state, onSelect);
      renderDetailHead(el, state);
    },
  };
}
