// ser dashboard: the entry point. Connects to the daemon's /ws (protocol v1), shows the model,
// the streams, the selected stream's smoothed probabilities and timeline, and streams this
// browser's microphone. Plain JavaScript modules, no libraries, no build step.
//
// Everything that happens becomes an event for the pure reducer (protocol.mjs); its effects
// are carried out here, and the page is redrawn from its state once per animation frame.
// window.serState is that state (plain data, for tests and debugging; the DOM follows it one
// animation frame later, and its data-state attributes say what was drawn); window.serSend sends
// one protocol message on the live connection.

import { renderBars } from "./bars.mjs";
import { createConnection, wsUrl } from "./connection.mjs";
import { createMic } from "./mic.mjs";
import { createPanels, renderConnection } from "./panels.mjs";
import { initialState, reduce, selectedStream } from "./protocol.mjs";
import { renderLegend, renderTimeline } from "./timeline.mjs";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const el = {
  conn: $("conn"),
  connText: $("conn-text"),
  reconnectNow: $("reconnect-now"),
  modelName: $("model-name"),
  modelBackend: $("model-backend"),
  modelWindow: $("model-window"),
  modelRate: $("model-rate"),
  modelLabels: $("model-labels"),
  proto: $("proto"),
  errors: $("errors"),
  errorList: $("error-list"),
  streamsEmpty: $("streams-empty"),
  streamList: $("stream-list"),
  detailH: $("detail-h"),
  voice: $("voice"),
  latency: $("latency"),
  windowNo: $("window-no"),
  streamTime: $("stream-time"),
  topEmotion: $("top-emotion"),
  bars: $("bars"),
  timeline: $("timeline"),
  legend: $("legend"),
};

let state = initialState(params.get("stream"));
window.serState = state;

const conn = createConnection(wsUrl(location.href, params), {
  onConnecting: () => dispatch({ type: "connecting" }),
  onMessage: (msg) => dispatch({ type: "message", msg }),
  onClose: ({ code, reason }) => dispatch({ type: "closed", code, reason }),
  onError: (message) => dispatch({ type: "problem", code: "connection", message }),
  onRetry: ({ attempt, delayMs }) => dispatch({ type: "retrying", attempt, delayMs }),
});
const mic = createMic({ button: $("mic-button"), status: $("mic-status"), dispatch, getMic: () => state.mic, socket: conn });
const panels = createPanels(el, (id) => dispatch({ type: "select", stream: id }));

const EFFECTS = {
  send: (e) => conn.send(e.msg),
  "send-binary": (e) => conn.sendBinary(e.data),
  connected: () => conn.connected(),
  "mic-release": () => mic.release(),
  log: (e) => console.info(e.text),
};

/** Feed one event to the reducer (stamped with the time), carry out its effects, redraw soon. */
function dispatch(event) {
  const out = reduce(state, { ...event, at: Date.now() });
  state = out.state;
  window.serState = state;
  out.effects.forEach((e) => EFFECTS[e.type](e));
  // A microphone chunk only moves counters that the page does not show.
  if (event.type !== "mic-chunk") scheduleRender();
}
window.serSend = (obj) => conn.send(obj);

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  const run = () => {
    renderPending = false;
    render();
  };
  if (document.hidden) setTimeout(run, 250);
  else requestAnimationFrame(run);
}

function render() {
  panels.render(state, Date.now());
  renderBars(el.bars, state.labels, selectedStream(state));
  renderLegend(el.legend, state.labels);
  renderTimeline(el.timeline, state);
  mic.render(state.mic);
}

el.reconnectNow.addEventListener("click", () => conn.reconnectNow());
$("errors-clear").addEventListener("click", () => dispatch({ type: "errors-cleared" }));
const span = $("timeline-span");
span.addEventListener("change", () => dispatch({ type: "span", seconds: Number(span.value) }));
window.addEventListener("resize", scheduleRender);
window.addEventListener("online", () => {
  if (state.connection !== "open") conn.connect();
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) scheduleRender();
});
// Keep the "retrying in N s" countdown honest.
setInterval(() => {
  if (state.connection === "reconnecting") renderConnection(el, state, Date.now());
}, 500);
window.addEventListener("beforeunload", () => dispatch({ type: "unload" }));

if (params.get("token")) {
  // Carry the token to the links that need it.
  for (const name of ["metrics", "healthz"]) {
    document.querySelectorAll(`a[href="${name}"]`).forEach((a) => (a.href = name + "?token=" + encodeURIComponent(params.get("token"))));
  }
}

render();
conn.connect();
