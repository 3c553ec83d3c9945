// ser dashboard: what the page knows, and the one pure function that changes it.
//
// reduce(state, event) -> { state, effects }. It never mutates `state`, never touches the
// DOM, the socket or the clock: the time comes in the event (`at`, ms since the epoch), and
// whatever should happen outside (a message to send, the microphone to release) comes back
// as data in `effects`, for app.mjs to carry out.
//
// Protocol v1 (see README.md, "WebSocket protocol"): server -> hello, prediction, streams,
// started, stopped, subscribed, error; client -> subscribe, start (+ binary PCM frames), stop.
//
// Events:
//   {type: "message", msg, at}            a parsed text message from the daemon (any JSON value)
//   {type: "connecting"}                  a new socket is being opened
//   {type: "closed", code, reason, at}    the socket closed
//   {type: "retrying", attempt, delayMs, at}  the next attempt is due in delayMs
//   {type: "problem", code, message, at}  a local error worth a line (e.g. the URL cannot be opened)
//   {type: "select", stream}              the user picked a stream
//   {type: "span", seconds}               the timeline span changed
//   {type: "errors-cleared"}
//   {type: "mic-asking"} / {type: "mic-failed", message} / {type: "mic-ready", sampleRate}
//   {type: "mic-stop", message?}          the user (or a lost device: with a message) stops the microphone
//   {type: "mic-chunk", data, open, buffered}  one PCM chunk from the worklet; open/buffered: the socket's
//   {type: "unload"}                      the page is going away
// Effects:
//   {type: "send", msg}  {type: "send-binary", data}  {type: "connected"} (reset the backoff)
//   {type: "mic-release"} (stop capturing)  {type: "log", text}

export const PROTOCOL = 1;
export const DEFAULT_LABELS = ["anger", "disgust", "fear", "happy", "neutral", "sad"];
export const MAX_HISTORY_S = 600; // kept per stream; the timeline shows up to 300 s of it
export const MAX_HISTORY_POINTS = 6000;
export const MAX_ERRORS_KEPT = 50;
export const MIC_ENCODING = "pcm_f32le"; // what mic-worklet.js produces
export const MIC_MAX_BUFFERED_BYTES = 2 * 1024 * 1024; // drop audio rather than queue without bound
export const MIC_STREAM_KIND = "this browser's microphone";

export const ERROR_WORDS = Object.freeze({
  bad_message: "The daemon did not understand a message from this page.",
  config_invalid: "The daemon refused a setting sent by this page.",
  invalid_audio_frame: "The daemon could not read an audio frame sent by this page.",
  message_too_large: "A message from this page was larger than the daemon accepts.",
  rate_limited: "This page sent messages faster than the daemon accepts; some were dropped.",
  server_busy: "The daemon is busy (too many clients or streams); try again later.",
  unauthorized: "The daemon refused this page: it needs a token (open the page with ?token=... in its address) or does not allow this page's origin.",
});

const SUBSCRIBE_ALL = Object.freeze({ type: "subscribe", streams: "*" });
const STOP = Object.freeze({ type: "stop" });

/** The state before anything happened; `selected` is the stream asked for in the address, if any. */
export function initialState(selected = null) {
  return {
    connection: "connecting", // connecting | open (hello received) | closed | reconnecting
    connects: 0, // hellos since the page loaded, one per connection
    attempt: 0, // failed attempts since the last hello
    retryInMs: null,
    retryAt: null,
    lastClose: null, // { code, reason }
    protocol: null,
    model: null,
    labels: DEFAULT_LABELS.slice(),
    streams: {}, // id -> { id, kind, ended, seq, t_end, smoothed, top, voiced, latency_ms, count, history }
    order: [], // stream ids in the order first seen
    selected: selected,
    mic: { state: "off", stream: null, sampleRate: null, framesSent: 0, dropped: 0, message: "Microphone off." },
    errors: [], // { code, message, words, at, repeat }
    spanS: 60,
  };
}

// ---------------------------------------------------------------- pure helpers

const has = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);
const isObject = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
const numberOrNull = (x) => (typeof x === "number" && isFinite(x) ? x : null);

/** A stream's id from a stream-list item or a message field, as a string; null when it has none. */
export function streamIdOf(s) {
  if (s === null || s === undefined) return null;
  if (typeof s === "object") {
    const id = s.id !== undefined ? s.id : s.stream !== undefined ? s.stream : s.name;
    return id === undefined || id === null ? null : String(id);
  }
  return String(s);
}

/** "file · talk.wav" from a stream-list item {kind, source}. */
export function describeKind(info) {
  if (!isObject(info)) return "";
  const kind = String(info.kind || info.type || "");
  const source = info.source !== undefined && info.source !== null ? String(info.source).split(/[\\/]/).pop() : "";
  return [kind, source].filter(Boolean).join(" · ");
}

/** Index of the largest number (-1 when there is none). */
export function argmax(values) {
  let best = -1;
  let bestV = -Infinity;
  values.forEach((v, i) => {
    if (typeof v === "number" && v > bestV) {
      bestV = v;
      best = i;
    }
  });
  return best;
}

/** {label: p} -> [p per label, in the model's order]; missing labels are 0. */
export function vectorOf(labels, dict) {
  return labels.map((l) => (isObject(dict) && has(dict, l) && typeof dict[l] === "number" ? dict[l] : 0));
}

/** The selected stream's record, or null. */
export function selectedStream(state) {
  return state.selected !== null && has(state.streams, state.selected) ? state.streams[state.selected] : null;
}

/** history + point, without points older than MAX_HISTORY_S before it or beyond MAX_HISTORY_POINTS. */
export function appendHistory(history, point) {
  const cutoff = point.t - MAX_HISTORY_S;
  let drop = 0;
  while (drop < history.length && history[drop].t < cutoff) drop++;
  drop = Math.max(drop, history.length + 1 - MAX_HISTORY_POINTS);
  const kept = drop > 0 ? history.slice(drop) : history.slice();
  kept.push(point);
  return kept;
}

/** Words for an error code (local codes such as "closed" have none). */
export function wordsFor(code) {
  return has(ERROR_WORDS, code) ? ERROR_WORDS[code] : "";
}

// ---------------------------------------------------------------- state transitions (all pure)

const done = (state, effects = []) => ({ state, effects });

function putStream(state, stream) {
  return { ...state, streams: { ...state.streams, [stream.id]: stream } };
}

function ensureStream(state, id, info) {
  const old = has(state.streams, id) ? state.streams[id] : null;
  const s = old
    ? { ...old, kind: describeKind(info) || old.kind }
    : {
        id: id,
        kind: describeKind(info),
        ended: false,
        seq: null,
        t_end: null,
        smoothed: null,
        top: null,
        voiced: null,
        latency_ms: null,
        count: 0,
        history: [],
      };
  if (id === state.mic.stream) s.kind = MIC_STREAM_KIND;
  s.ended = false;
  const next = putStream(state, s);
  if (!old) next.order = [...state.order, id];
  if (next.selected === null) next.selected = id;
  return next;
}

function setStreamList(state, list) {
  if (!Array.isArray(list)) return state;
  const seen = new Set();
  let next = state;
  for (const item of list) {
    const id = streamIdOf(item);
    if (id === null) continue;
    seen.add(id);
    next = ensureStream(next, id, item);
  }
  // Streams the daemon no longer lists (say, a microphone stream from before a restart)
  // stay visible but are marked as ended.
  const gone = next.order.filter((id) => !seen.has(id) && !next.streams[id].ended);
  if (gone.length) {
    const streams = { ...next.streams };
    for (const id of gone) streams[id] = { ...streams[id], ended: true };
    next = { ...next, streams };
  }
  if (next.selected !== null && !has(next.streams, next.selected) && next.order.length) {
    next = { ...next, selected: next.order[0] };
  }
  return next;
}

function addError(state, code, message, at) {
  const last = state.errors[state.errors.length - 1];
  let errors;
  if (last && last.code === code && last.message === message) {
    errors = [...state.errors.slice(0, -1), { ...last, repeat: last.repeat + 1, at: at }];
  } else {
    errors = [...state.errors, { code: code, message: message, words: wordsFor(code), at: at, repeat: 1 }];
    if (errors.length > MAX_ERRORS_KEPT) errors = errors.slice(-MAX_ERRORS_KEPT);
  }
  return { ...state, errors };
}

const withMic = (state, fields) => ({ ...state, mic: { ...state.mic, ...fields } });

function startStream(state) {
  const rate = state.mic.sampleRate;
  return done(withMic(state, { stream: null, state: "starting", message: "Starting a stream at " + rate / 1000 + " kHz…" }), [
    { type: "send", msg: { type: "start", sample_rate: rate, encoding: MIC_ENCODING, channels: 1 } },
  ]);
}

function stopMic(state, message) {
  const live = state.mic.state === "streaming" || state.mic.state === "starting";
  const effects = live ? [{ type: "send", msg: STOP }] : [];
  effects.push({ type: "mic-release" });
  let next = state;
  const id = state.mic.stream;
  if (id !== null && has(state.streams, id)) next = putStream(next, { ...state.streams[id], ended: true });
  next = withMic(next, { stream: null, state: message ? "error" : "off", message: message || "Microphone off." });
  return done(next, effects);
}

// ---------------------------------------------------------------- messages from the daemon

function onHello(state, msg, at) {
  let next = { ...state, protocol: msg.protocol === undefined ? null : msg.protocol, model: isObject(msg.model) ? msg.model : null };
  const labels = next.model && Array.isArray(next.model.labels) && next.model.labels.length ? next.model.labels.map(String) : null;
  if (labels && labels.join("\u0000") !== state.labels.join("\u0000")) {
    // Old points are vectors in the old label order: start every timeline afresh.
    const streams = {};
    for (const id of state.order) streams[id] = { ...state.streams[id], history: [] };
    next = { ...next, labels, streams };
  }
  if (msg.protocol !== PROTOCOL) {
    next = addError(next, "protocol", "The daemon speaks protocol " + msg.protocol + "; this page was written for protocol " + PROTOCOL + ".", at);
  }
  next = setStreamList(next, Array.isArray(msg.streams) ? msg.streams : []);
  if (state.connection === "open") return done(next); // a second hello on one connection only updates what it says
  next = { ...next, connection: "open", connects: next.connects + 1, attempt: 0, retryInMs: null, retryAt: null };
  // The one subscribe of this connection: "*" includes streams that appear later.
  const effects = [{ type: "connected" }, { type: "send", msg: SUBSCRIBE_ALL }];
  if (next.mic.state === "waiting") {
    const started = startStream(next);
    next = started.state;
    effects.push(...started.effects);
  }
  return done(next, effects);
}

function onPrediction(state, msg) {
  const id = streamIdOf(msg.stream);
  if (id === null) return state;
  const next = ensureStream(state, id, null);
  const old = next.streams[id];
  const seq = numberOrNull(msg.seq);
  const tEnd = numberOrNull(msg.t_end);
  // A stream that starts over (daemon restarted, file reopened) begins a fresh timeline.
  const restarted = (seq !== null && old.seq !== null && seq < old.seq) || (tEnd !== null && old.t_end !== null && tEnd < old.t_end - 1);
  const smoothed = isObject(msg.smoothed) ? msg.smoothed : isObject(msg.probs) ? msg.probs : null;
  const voiced = msg.voiced === undefined || msg.voiced === null ? null : Boolean(msg.voiced);
  const vec = vectorOf(next.labels, smoothed);
  // The server names the smoothed leader (null in silence); fall back to our own argmax.
  const best = argmax(vec);
  const top = typeof msg.top === "string" && next.labels.includes(msg.top) ? msg.top : best >= 0 ? next.labels[best] : null;
  let history = restarted ? [] : old.history;
  if (tEnd !== null) history = appendHistory(history, { t: tEnd, v: vec, voiced: voiced !== false });
  return putStream(next, {
    ...old,
    seq: seq,
    t_end: tEnd,
    smoothed: smoothed,
    voiced: voiced,
    latency_ms: numberOrNull(msg.latency_ms),
    top: top,
    count: old.count + 1,
    history: history,
  });
}

function onStarted(state, msg) {
  const id = streamIdOf(msg.stream);
  if (state.mic.state !== "starting" || id === null) return done(state);
  const rate = state.mic.sampleRate / 1000;
  let next = withMic(state, { stream: id, state: "streaming", message: "Streaming this browser's microphone as stream " + id + " (" + rate + " kHz, mono)." });
  next = ensureStream(next, id, null);
  next = putStream(next, { ...next.streams[id], history: [], seq: null, t_end: null });
  return done({ ...next, selected: id }); // the user just asked for the microphone: show it
}

function onServerError(state, msg, at) {
  const code = String(msg.code || "error");
  const next = addError(state, code, String(msg.message || ""), at);
  if (state.mic.state === "starting" && code !== "invalid_audio_frame") {
    return stopMic(next, "The daemon refused the microphone stream: " + (wordsFor(code) || code) + (msg.message ? " (" + msg.message + ")" : ""));
  }
  return done(next);
}

function onMessage(state, { msg, at }) {
  if (!isObject(msg)) return done(state, [{ type: "log", text: "ser: ignoring a message that is not a JSON object" }]);
  switch (msg.type) {
    case "hello":
      return onHello(state, msg, at);
    case "prediction":
      return done(onPrediction(state, msg));
    case "streams":
      return done(setStreamList(state, msg.streams));
    case "started":
      return onStarted(state, msg);
    case "error":
      return onServerError(state, msg, at);
    case "subscribed":
    case "stopped":
      return done(state);
    default:
      return done(state, [{ type: "log", text: "ser: ignoring message of type " + String(msg.type) }]);
  }
}

// ---------------------------------------------------------------- the connection, the user, the microphone

function onClosed(state, { code, reason, at }) {
  reason = reason || "";
  let next = { ...state, connection: "closed", lastClose: { code: code, reason: reason } };
  // A daemon going away (1001) is said in the connection state; any other reason is worth an error line.
  // (Not when the reason only repeats the error message that came just before the close.)
  const last = state.errors[state.errors.length - 1];
  const repeated = last && reason && last.message.startsWith(reason);
  if (code !== 1001 && code !== 1000 && !repeated && (reason || code === 1008)) {
    next = addError(next, "closed", "The daemon closed the connection: " + (reason || "code " + code), at);
  }
  if (state.mic.state === "streaming" || state.mic.state === "starting") {
    next = withMic(next, { stream: null, state: "waiting", message: "Connection lost; the microphone resumes when the daemon is back." });
  }
  return done(next);
}

function onMicReady(state, { sampleRate }) {
  // Stopped while the browser was still asking: let the capture go again.
  if (state.mic.state !== "asking") return done(state, [{ type: "mic-release" }]);
  const next = withMic(state, { sampleRate: sampleRate, framesSent: 0, dropped: 0 });
  if (next.connection === "open") return startStream(next);
  return done(withMic(next, { state: "waiting", message: "Waiting for the daemon connection…" }));
}

function onMicChunk(state, { data, open, buffered }) {
  if (state.mic.state !== "streaming" || !open) return done(state);
  if (buffered > MIC_MAX_BUFFERED_BYTES) return done(withMic(state, { dropped: state.mic.dropped + 1 }));
  return done(withMic(state, { framesSent: state.mic.framesSent + 1 }), [{ type: "send-binary", data: data }]);
}

const HANDLERS = {
  message: onMessage,
  connecting: (state) => done({ ...state, connection: state.connects ? "reconnecting" : "connecting", retryInMs: null, retryAt: null }),
  closed: onClosed,
  retrying: (state, { attempt, delayMs, at }) =>
    done({ ...state, connection: "reconnecting", attempt: attempt, retryInMs: delayMs, retryAt: at + delayMs }),
  problem: (state, { code, message, at }) => done(addError(state, code, message, at)),
  select: (state, { stream }) => done(has(state.streams, stream) ? { ...state, selected: stream } : state),
  span: (state, { seconds }) => done({ ...state, spanS: Number(seconds) || 60 }),
  "errors-cleared": (state) => done({ ...state, errors: [] }),
  "mic-asking": (state) => done(withMic(state, { state: "asking", message: "Asking for microphone permission…" })),
  // Only while asking: a capture that fails after the user stopped it has nothing left to say.
  "mic-failed": (state, { message }) => done(state.mic.state === "asking" ? withMic(state, { state: "error", message: message }) : state),
  "mic-ready": onMicReady,
  "mic-stop": (state, { message }) => stopMic(state, message),
  "mic-chunk": onMicChunk,
  unload: (state) => done(state, state.mic.state === "streaming" ? [{ type: "send", msg: STOP }] : []),
};

/** The page's one state transition: (state, event) -> { state, effects }. Unknown events change nothing. */
export function reduce(state, event) {
  if (!isObject(event) || typeof event.type !== "string" || !has(HANDLERS, event.type)) return done(state);
  return HANDLERS[event.type](state, event);
}
