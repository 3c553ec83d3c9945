// ser dashboard: connects to the daemon's /ws (protocol v1), shows the model, the streams,
// the selected stream's smoothed probabilities and timeline, and streams this browser's
// microphone. Plain JavaScript, no libraries, no build step.
//
// Protocol v1 (see ARCHITECTURE.md): server -> hello, prediction, started, error (and,
// optionally, streams); client -> subscribe, start (+ binary PCM frames), stop.
//
// window.serState holds what the page currently knows (plain data, for tests and debugging).
"use strict";

(function () {
  const PROTOCOL = 1;
  const DEFAULT_LABELS = ["anger", "disgust", "fear", "happy", "neutral", "sad"];
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
  const MAX_HISTORY_S = 600; // kept per stream; the timeline shows up to 300 s of it
  const MAX_HISTORY_POINTS = 6000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 5000;
  const CONNECT_TIMEOUT_MS = 6000;
  const MAX_ERRORS_SHOWN = 8;
  const MIC_CHUNK_S = 0.05; // 50 ms per binary frame
  const MIC_MAX_BUFFERED_BYTES = 2 * 1024 * 1024; // drop audio rather than queue without bound

  const ERROR_WORDS = {
    bad_message: "The daemon did not understand a message from this page.",
    config_invalid: "The daemon refused a setting sent by this page.",
    invalid_audio_frame: "The daemon could not read an audio frame sent by this page.",
    message_too_large: "A message from this page was larger than the daemon accepts.",
    rate_limited: "This page sent messages faster than the daemon accepts; some were dropped.",
    server_busy: "The daemon is busy (too many clients or streams); try again later.",
    unauthorized: "The daemon refused this page: it needs a token (open the page with ?token=... in its address) or does not allow this page's origin.",
  };

  const params = new URLSearchParams(location.search);

  const state = {
    connection: "connecting", // connecting | open | reconnecting | closed
    connects: 0, // successful hellos since the page loaded
    attempt: 0, // failed attempts since the last successful one
    retryInMs: null,
    lastClose: null,
    protocol: null,
    model: null,
    labels: DEFAULT_LABELS.slice(),
    streams: {}, // id -> { id, kind, info, ended, seq, t_end, smoothed, probs, top, voiced, latency_ms, count, history }
    order: [], // stream ids in the order first seen
    selected: params.get("stream"),
    userSelected: params.has("stream"),
    mic: { state: "off", stream: null, sampleRate: null, encoding: "pcm_f32le", framesSent: 0, bytesSent: 0, dropped: 0, message: "" },
    errors: [], // { code, message, words, at }
    spanS: 60,
    rendered: { stream: null, seq: null, points: 0 },
  };
  window.serState = state;
  // For tests and the console: send one protocol message on the live connection.
  window.serSend = (obj) => send(obj);

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
    errorsClear: $("errors-clear"),
    micButton: $("mic-button"),
    micStatus: $("mic-status"),
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
    timelineSpan: $("timeline-span"),
    legend: $("legend"),
  };

  // ---------------------------------------------------------------- helpers

  function colorOf(label, i) {
    return LABEL_COLORS[label] || FALLBACK_COLORS[i % FALLBACK_COLORS.length];
  }
  function dashOf(i) {
    return DASHES[i % DASHES.length];
  }
  function pct(p) {
    return Math.round(Math.max(0, Math.min(1, p)) * 100) + "%";
  }
  function num(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
  }
  function streamIdOf(s) {
    if (s === null || s === undefined) return null;
    if (typeof s === "object") {
      const id = s.id !== undefined ? s.id : s.stream !== undefined ? s.stream : s.name;
      return id === undefined || id === null ? null : String(id);
    }
    return String(s);
  }
  function describeKind(info) {
    if (!info || typeof info !== "object") return "";
    const kind = String(info.kind || info.type || "");
    const source = info.source !== undefined && info.source !== null ? String(info.source).split(/[\\/]/).pop() : "";
    return [kind, source].filter(Boolean).join(" · ");
  }
  function argmax(values) {
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
  function vectorOf(dict) {
    return state.labels.map((l) => (dict && typeof dict[l] === "number" ? dict[l] : 0));
  }

  // ---------------------------------------------------------------- streams

  function ensureStream(id, info) {
    let s = state.streams[id];
    if (!s) {
      s = {
        id: id,
        kind: describeKind(info),
        info: info && typeof info === "object" ? info : null,
        ended: false,
        seq: null,
        t_end: null,
        t_start: null,
        smoothed: null,
        probs: null,
        top: null,
        voiced: null,
        latency_ms: null,
        count: 0,
        history: [],
      };
      state.streams[id] = s;
      state.order.push(id);
    } else if (info && typeof info === "object") {
      s.info = info;
      s.kind = describeKind(info) || s.kind;
    }
    if (id === state.mic.stream) s.kind = "this browser's microphone";
    s.ended = false;
    if (state.selected === null) state.selected = id;
    return s;
  }

  function setStreamList(list) {
    if (!Array.isArray(list)) return;
    const seen = new Set();
    list.forEach((item) => {
      const id = streamIdOf(item);
      if (id === null) return;
      seen.add(id);
      ensureStream(id, typeof item === "object" ? item : null);
    });
    // Streams the daemon no longer lists (say, a microphone stream from before a restart)
    // stay visible but are marked as ended.
    state.order.forEach((id) => {
      if (!seen.has(id)) state.streams[id].ended = true;
    });
    if (state.selected !== null && !state.streams[state.selected] && state.order.length) state.selected = state.order[0];
  }

  function onPrediction(msg) {
    const id = streamIdOf(msg.stream);
    if (id === null) return;
    const s = ensureStream(id, null);
    const seq = typeof msg.seq === "number" ? msg.seq : null;
    const tEnd = typeof msg.t_end === "number" ? msg.t_end : null;
    // A stream that starts over (daemon restarted, file reopened) begins a fresh timeline.
    if ((seq !== null && s.seq !== null && seq < s.seq) || (tEnd !== null && s.t_end !== null && tEnd < s.t_end - 1)) {
      s.history = [];
    }
    s.seq = seq;
    s.t_start = typeof msg.t_start === "number" ? msg.t_start : null;
    s.t_end = tEnd;
    s.probs = msg.probs || null;
    s.smoothed = msg.smoothed || msg.probs || null;
    s.voiced = msg.voiced === undefined || msg.voiced === null ? null : Boolean(msg.voiced);
    s.latency_ms = typeof msg.latency_ms === "number" ? msg.latency_ms : null;
    s.count += 1;
    const vec = vectorOf(s.smoothed);
    // The server names the smoothed leader (null in silence); fall back to our own argmax.
    const best = argmax(vec);
    s.top = typeof msg.top === "string" && state.labels.includes(msg.top) ? msg.top : best >= 0 ? state.labels[best] : null;
    if (tEnd !== null) {
      s.history.push({ t: tEnd, v: vec, voiced: s.voiced !== false });
      const cutoff = tEnd - MAX_HISTORY_S;
      let drop = 0;
      while (drop < s.history.length && s.history[drop].t < cutoff) drop++;
      if (s.history.length - drop > MAX_HISTORY_POINTS) drop = s.history.length - MAX_HISTORY_POINTS;
      if (drop) s.history.splice(0, drop);
    }
    scheduleRender();
  }

  // ---------------------------------------------------------------- connection

  let ws = null;
  let retryTimer = null;
  let connectTimer = null;

  function wsUrl() {
    if (params.get("ws")) return params.get("ws");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const base = new URL("ws", location.href); // relative: works behind a path prefix too
    let url = scheme + "//" + base.host + base.pathname;
    if (params.get("token")) url += "?token=" + encodeURIComponent(params.get("token"));
    return url;
  }

  function send(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    state.retryInMs = null;
    if (ws) {
      ws.onopen = ws.onclose = ws.onerror = ws.onmessage = null;
      try {
        ws.close();
      } catch (e) {
        /* already closed */
      }
    }
    setConnection(state.connects ? "reconnecting" : "connecting");
    let sock;
    try {
      sock = new WebSocket(wsUrl());
    } catch (e) {
      addError("connection", "Cannot open " + wsUrl() + ": " + e.message);
      scheduleReconnect();
      return;
    }
    ws = sock;
    sock.binaryType = "arraybuffer";
    clearTimeout(connectTimer);
    connectTimer = setTimeout(() => {
      if (sock.readyState === WebSocket.CONNECTING) sock.close();
    }, CONNECT_TIMEOUT_MS);
    sock.onopen = () => {
      clearTimeout(connectTimer);
      // Subscribe at once; we subscribe again after hello, which is harmless.
      send({ type: "subscribe", streams: "*" });
    };
    sock.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (e) {
        console.warn("ser: non-JSON message", event.data);
        return;
      }
      handle(msg);
    };
    sock.onclose = (event) => {
      clearTimeout(connectTimer);
      if (ws !== sock) return;
      ws = null;
      state.lastClose = { code: event.code, reason: event.reason || "" };
      // A daemon going away (1001) is said in the connection state; any other reason is worth an error line.
      // (Not when the reason only repeats the error message that came just before the close.)
      const last = state.errors[state.errors.length - 1];
      const repeated = last && event.reason && last.message.startsWith(event.reason);
      if (event.code !== 1001 && event.code !== 1000 && !repeated && (event.reason || event.code === 1008)) {
        addError("closed", "The daemon closed the connection: " + (event.reason || "code " + event.code));
      }
      if (state.mic.state === "streaming" || state.mic.state === "starting") {
        state.mic.stream = null;
        setMic("waiting", "Connection lost; the microphone resumes when the daemon is back.");
      }
      scheduleReconnect();
    };
    sock.onerror = () => {
      /* onclose follows and handles it */
    };
  }

  function scheduleReconnect() {
    state.attempt += 1;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, state.attempt - 1));
    const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
    state.retryInMs = delay;
    state.retryAt = Date.now() + delay;
    setConnection("reconnecting");
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, delay);
  }

  function setConnection(s) {
    state.connection = s;
    renderConnection();
  }

  function handle(msg) {
    switch (msg.type) {
      case "hello":
        onHello(msg);
        break;
      case "prediction":
        onPrediction(msg);
        break;
      case "streams":
        setStreamList(msg.streams);
        scheduleRender();
        break;
      case "started":
        onStarted(msg);
        break;
      case "subscribed":
      case "stopped":
        break;
      case "error":
        onServerError(msg);
        break;
      default:
        console.info("ser: ignoring message of type", msg.type);
    }
  }

  function onHello(msg) {
    state.protocol = msg.protocol;
    state.model = msg.model || null;
    if (state.model && Array.isArray(state.model.labels) && state.model.labels.length) {
      const labels = state.model.labels.map(String);
      if (labels.join("\u0000") !== state.labels.join("\u0000")) {
        state.labels = labels;
        Object.values(state.streams).forEach((s) => (s.history = []));
        buildBars();
      }
    }
    if (msg.protocol !== PROTOCOL) {
      addError("protocol", "The daemon speaks protocol " + msg.protocol + "; this page was written for protocol " + PROTOCOL + ".");
    }
    setStreamList(Array.isArray(msg.streams) ? msg.streams : []);
    state.connects += 1;
    state.attempt = 0;
    state.retryInMs = null;
    setConnection("open");
    send({ type: "subscribe", streams: "*" });
    if (state.mic.state === "waiting") sendStart();
    scheduleRender();
  }

  function onServerError(msg) {
    const code = String(msg.code || "error");
    addError(code, String(msg.message || ""));
    if (state.mic.state === "starting" && code !== "invalid_audio_frame") {
      stopMic("The daemon refused the microphone stream: " + (ERROR_WORDS[code] || code) + (msg.message ? " (" + msg.message + ")" : ""));
    }
  }

  function addError(code, message) {
    const words = ERROR_WORDS[code] || "";
    const last = state.errors[state.errors.length - 1];
    if (last && last.code === code && last.message === message) {
      last.repeat = (last.repeat || 1) + 1;
      last.at = new Date();
    } else {
      state.errors.push({ code: code, message: message, words: words, at: new Date(), repeat: 1 });
      if (state.errors.length > 50) state.errors.shift();
    }
    renderErrors();
  }

  // ---------------------------------------------------------------- microphone

  const mic = { ctx: null, media: null, source: null, node: null, sink: null };

  async function startMic() {
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setMic("error", "This browser only allows the microphone on https:// or http://localhost pages. Open the dashboard at http://localhost:PORT/ or http://127.0.0.1:PORT/.");
      return;
    }
    if (!window.AudioWorkletNode) {
      setMic("error", "This browser has no AudioWorklet support, which the microphone needs.");
      return;
    }
    setMic("asking", "Asking for microphone permission…");
    try {
      mic.media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
        video: false,
      });
      mic.ctx = new (window.AudioContext || window.webkitAudioContext)();
      await mic.ctx.audioWorklet.addModule(new URL("mic-worklet.js", location.href).href);
      mic.source = mic.ctx.createMediaStreamSource(mic.media);
      const chunkFrames = Math.round(mic.ctx.sampleRate * MIC_CHUNK_S);
      mic.node = new AudioWorkletNode(mic.ctx, "ser-mic-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { chunkFrames: chunkFrames },
      });
      mic.node.port.onmessage = (event) => onMicChunk(event.data);
      // A silent sink keeps the graph pulled in every browser without playing the mic back.
      mic.sink = mic.ctx.createGain();
      mic.sink.gain.value = 0;
      mic.source.connect(mic.node);
      mic.node.connect(mic.sink);
      mic.sink.connect(mic.ctx.destination);
      if (mic.ctx.state === "suspended") await mic.ctx.resume();
      state.mic.sampleRate = mic.ctx.sampleRate;
      mic.media.getAudioTracks().forEach((t) => {
        t.onended = () => stopMic("The microphone was disconnected.");
      });
    } catch (e) {
      const why = e && e.name === "NotAllowedError" ? "permission was denied" : e && e.name === "NotFoundError" ? "no microphone was found" : (e && e.message) || String(e);
      teardownMic();
      setMic("error", "Cannot use the microphone: " + why + ".");
      return;
    }
    state.mic.framesSent = 0;
    state.mic.bytesSent = 0;
    state.mic.dropped = 0;
    if (state.connection === "open") sendStart();
    else setMic("waiting", "Waiting for the daemon connection…");
  }

  function sendStart() {
    state.mic.stream = null;
    const ok = send({ type: "start", sample_rate: state.mic.sampleRate, encoding: state.mic.encoding, channels: 1 });
    setMic(ok ? "starting" : "waiting", ok ? "Starting a stream at " + (state.mic.sampleRate / 1000) + " kHz…" : "Waiting for the daemon connection…");
  }

  function onStarted(msg) {
    const id = streamIdOf(msg.stream);
    if (state.mic.state !== "starting" || id === null) return;
    state.mic.stream = id;
    const s = ensureStream(id, null);
    s.kind = "this browser's microphone";
    s.history = [];
    s.seq = null;
    s.t_end = null;
    state.selected = id; // the user just asked for the microphone: show it
    setMic("streaming", "Streaming this browser's microphone as stream " + id + " (" + state.mic.sampleRate / 1000 + " kHz, mono).");
    send({ type: "subscribe", streams: "*" });
    scheduleRender();
  }

  function onMicChunk(buffer) {
    if (state.mic.state !== "streaming" || !ws || ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > MIC_MAX_BUFFERED_BYTES) {
      state.mic.dropped += 1;
      return;
    }
    ws.send(buffer); // Float32Array's buffer: little-endian on every platform browsers run on
    state.mic.framesSent += 1;
    state.mic.bytesSent += buffer.byteLength;
  }

  function teardownMic() {
    if (mic.node) {
      try {
        mic.node.port.postMessage("stop");
        mic.node.disconnect();
      } catch (e) {
        /* gone */
      }
    }
    if (mic.source) mic.source.disconnect();
    if (mic.media) mic.media.getTracks().forEach((t) => t.stop());
    if (mic.ctx) mic.ctx.close().catch(() => {});
    mic.ctx = mic.media = mic.source = mic.node = mic.sink = null;
  }

  function stopMic(message) {
    const wasStreaming = state.mic.state === "streaming" || state.mic.state === "starting";
    if (wasStreaming) send({ type: "stop" });
    const id = state.mic.stream;
    if (id && state.streams[id]) state.streams[id].ended = true;
    teardownMic();
    state.mic.stream = null;
    setMic(message ? "error" : "off", message || "Microphone off.");
    scheduleRender();
  }

  function setMic(s, message) {
    state.mic.state = s;
    state.mic.message = message;
    renderMic();
  }

  // ---------------------------------------------------------------- rendering

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

  function renderConnection() {
    el.conn.dataset.state = state.connection;
    let text;
    if (state.connection === "open") {
      text = "Connected" + (state.connects > 1 ? " (reconnected)" : "");
    } else if (state.connection === "connecting") {
      text = "Connecting to the daemon…";
    } else if (state.connection === "reconnecting") {
      const secs = state.retryInMs !== null ? Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000)) : null;
      const close = state.lastClose || {};
      const why = close.reason ? " (" + close.reason + ")" : "";
      const head =
        close.code === 1008 || close.code === 1013
          ? "The daemon refused the connection"
          : state.connects
            ? "Disconnected from the daemon" + why
            : "Cannot reach the daemon";
      text = head + (secs !== null ? "; retrying in " + secs + " s (attempt " + state.attempt + ")" : "; retrying…");
    } else {
      text = "Disconnected";
    }
    el.connText.textContent = text;
    el.reconnectNow.hidden = state.connection !== "reconnecting";
  }

  function renderModel() {
    const m = state.model || {};
    el.modelName.textContent = m.name || "–";
    el.modelBackend.textContent = m.backend || "–";
    el.modelWindow.textContent = typeof m.window_s === "number" || typeof m.hop_s === "number" ? num(m.window_s, 1) + " s / " + num(m.hop_s, 2) + " s" : "–";
    el.modelRate.textContent = typeof m.sample_rate === "number" ? m.sample_rate / 1000 + " kHz" : "–";
    el.modelLabels.textContent = state.labels.join(", ");
    el.proto.textContent = "protocol " + (state.protocol === null ? "–" : state.protocol);
  }

  function renderErrors() {
    el.errors.hidden = state.errors.length === 0;
    el.errorList.textContent = "";
    state.errors.slice(-MAX_ERRORS_SHOWN).forEach((e) => {
      const li = document.createElement("li");
      const time = e.at.toLocaleTimeString();
      li.appendChild(document.createTextNode(time + " — " + (e.words || e.message) + " "));
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
      el.errorList.appendChild(li);
    });
  }

  function renderMic() {
    const on = state.mic.state === "streaming" || state.mic.state === "starting" || state.mic.state === "asking" || state.mic.state === "waiting";
    el.micButton.setAttribute("aria-pressed", on ? "true" : "false");
    el.micButton.textContent = on ? "Stop the microphone" : "Use this browser's microphone";
    el.micStatus.dataset.state = state.mic.state;
    el.micStatus.textContent = state.mic.message || "Microphone off.";
  }

  function buildBars() {
    el.bars.textContent = "";
    el.legend.textContent = "";
    state.labels.forEach((label, i) => {
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
      name.appendChild(sw);
      name.appendChild(document.createTextNode(label));
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
      el.bars.appendChild(row);

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
      el.legend.appendChild(li);
    });
  }

  function renderStreams() {
    el.streamsEmpty.hidden = state.order.length > 0;
    // Rebuild only when the set of streams changes, so focus stays where the user put it.
    const key = state.order.join("\u0000");
    if (el.streamList.dataset.key !== key) {
      el.streamList.dataset.key = key;
      el.streamList.textContent = "";
      state.order.forEach((id) => {
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button";
        b.className = "stream-card";
        b.dataset.stream = id;
        b.innerHTML = '<span class="s-head"><span class="s-id"></span><span class="s-kind"></span></span><span class="s-top"></span><span class="mini" aria-hidden="true"></span>';
        b.querySelector(".s-id").textContent = id;
        b.addEventListener("click", () => selectStream(id, true));
        li.appendChild(b);
        el.streamList.appendChild(li);
      });
    }
    el.streamList.querySelectorAll(".stream-card").forEach((b) => {
      const s = state.streams[b.dataset.stream];
      if (!s) return;
      b.setAttribute("aria-current", s.id === state.selected ? "true" : "false");
      b.dataset.ended = s.ended ? "true" : "false";
      b.querySelector(".s-kind").textContent = (s.kind || "") + (s.ended ? " (ended)" : "");
      const top = b.querySelector(".s-top");
      top.dataset.voiced = s.voiced === false ? "false" : "true";
      if (s.count === 0) top.textContent = "no predictions yet";
      else if (s.voiced === false) top.textContent = "silent";
      else top.textContent = s.top + " " + pct(vectorOf(s.smoothed)[state.labels.indexOf(s.top)] || 0);
      const mini = b.querySelector(".mini");
      const vec = vectorOf(s.smoothed);
      if (mini.childElementCount !== vec.length) {
        mini.textContent = "";
        vec.forEach((_, i) => {
          const span = document.createElement("span");
          span.style.background = colorOf(state.labels[i], i);
          mini.appendChild(span);
        });
      }
      const total = vec.reduce((a, b2) => a + b2, 0) || 1;
      Array.from(mini.children).forEach((span, i) => {
        span.style.width = ((vec[i] / total) * 100).toFixed(2) + "%";
        span.style.opacity = s.voiced === false ? "0.35" : "1";
      });
      b.setAttribute("aria-label", "Stream " + s.id + (s.kind ? ", " + s.kind : "") + ": " + top.textContent + (s.id === state.selected ? " (shown)" : ""));
    });
  }

  function selectStream(id, byUser) {
    state.selected = id;
    if (byUser) state.userSelected = true;
    render();
  }

  function renderDetail() {
    const s = state.selected !== null ? state.streams[state.selected] : null;
    el.detailH.textContent = s ? "Stream " + s.id : "No stream selected";
    if (s && s.kind) {
      const kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = s.kind + (s.ended ? " (ended)" : "");
      el.detailH.appendChild(kind);
    }
    const rows = el.bars.children;
    if (!s || s.count === 0) {
      el.topEmotion.textContent = s ? "Waiting for predictions on this stream…" : "Waiting for predictions…";
      el.topEmotion.dataset.voiced = "";
      el.topEmotion.dataset.top = "";
      el.voice.dataset.voiced = "";
      el.voice.textContent = "no data";
      el.latency.textContent = el.windowNo.textContent = el.streamTime.textContent = "–";
      el.bars.dataset.seq = "";
      el.bars.dataset.stream = s ? s.id : "";
      for (const row of rows) {
        row.dataset.value = "";
        row.dataset.top = "false";
        row.querySelector(".fill").style.width = "0";
        row.querySelector(".val").textContent = "–";
        row.removeAttribute("aria-valuenow");
      }
      return;
    }
    const vec = vectorOf(s.smoothed);
    const silent = s.voiced === false;
    el.voice.dataset.voiced = silent ? "false" : "true";
    el.voice.textContent = silent ? "silent" : s.voiced === true ? "voice" : "voice (not reported)";
    el.latency.textContent = s.latency_ms === null ? "–" : Math.round(s.latency_ms) + " ms";
    el.windowNo.textContent = s.seq === null ? "–" : "#" + s.seq;
    el.streamTime.textContent = s.t_end === null ? "–" : num(s.t_end, 1) + " s";
    const topIdx = state.labels.indexOf(s.top);
    el.topEmotion.textContent = "";
    el.topEmotion.dataset.voiced = silent ? "false" : "true";
    el.topEmotion.dataset.top = silent ? "" : s.top || "";
    if (silent) {
      el.topEmotion.appendChild(document.createTextNode("Silence"));
      const why = document.createElement("span");
      why.className = "why";
      why.textContent = "No voice in this window, so no emotion is named (bars are greyed).";
      el.topEmotion.appendChild(why);
    } else {
      el.topEmotion.appendChild(document.createTextNode((s.top || "–") + " "));
      const p = document.createElement("span");
      p.className = "pct";
      p.textContent = topIdx >= 0 ? pct(vec[topIdx]) : "";
      el.topEmotion.appendChild(p);
    }
    el.bars.dataset.voiced = silent ? "false" : "true";
    el.bars.dataset.seq = s.seq === null ? "" : String(s.seq);
    el.bars.dataset.stream = s.id;
    state.labels.forEach((label, i) => {
      const row = rows[i];
      if (!row) return;
      const v = vec[i];
      row.dataset.value = String(v);
      row.dataset.top = !silent && i === topIdx ? "true" : "false";
      row.querySelector(".fill").style.width = (Math.max(0, Math.min(1, v)) * 100).toFixed(2) + "%";
      row.querySelector(".val").textContent = pct(v);
      row.setAttribute("aria-valuenow", String(Math.round(v * 100)));
      row.setAttribute("aria-valuetext", label + " " + pct(v) + (silent ? " (silent)" : ""));
    });
  }

  function renderTimeline() {
    const canvas = el.timeline;
    const dpr = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 600;
    const cssH = canvas.clientHeight || 260;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const styles = getComputedStyle(document.documentElement);
    const textColor = styles.getPropertyValue("--muted").trim() || "#57606a";
    const gridColor = styles.getPropertyValue("--line").trim() || "#d0d7de";
    const silentColor = styles.getPropertyValue("--silent").trim() || "#8c959f";
    g.clearRect(0, 0, cssW, cssH);
    const right = cssW < 420 ? 62 : 74; // room for the end-of-line labels
    const left = 36;
    const top = 10;
    const bottom = 22;
    const plotW = Math.max(10, cssW - left - right);
    const plotH = Math.max(10, cssH - top - bottom);
    const span = state.spanS;
    const s = state.selected !== null ? state.streams[state.selected] : null;
    const hist = s ? s.history : [];
    const tNow = hist.length ? hist[hist.length - 1].t : span;
    const t0 = tNow - span;
    const x = (t) => left + ((t - t0) / span) * plotW;
    const y = (p) => top + (1 - Math.max(0, Math.min(1, p))) * plotH;

    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    g.setLineDash([]);
    g.fillStyle = textColor;
    g.strokeStyle = gridColor;
    g.textAlign = "right";
    g.textBaseline = "middle";
    [0, 0.25, 0.5, 0.75, 1].forEach((p) => {
      g.beginPath();
      g.moveTo(left, y(p) + 0.5);
      g.lineTo(left + plotW, y(p) + 0.5);
      g.stroke();
      g.fillText(Math.round(p * 100) + "%", left - 4, y(p));
    });
    g.textAlign = "center";
    g.textBaseline = "top";
    const step = [5, 10, 15, 20, 30, 60, 120].find((st) => (st / span) * plotW >= 52) || span;
    for (let back = 0; back <= span; back += step) {
      const xx = x(tNow - back);
      g.beginPath();
      g.moveTo(xx + 0.5, top + plotH);
      g.lineTo(xx + 0.5, top + plotH + 4);
      g.stroke();
      g.fillText(back === 0 ? "now" : "−" + back + " s", xx, top + plotH + 6);
    }

    const visible = [];
    for (let i = 0; i < hist.length; i++) if (hist[i].t >= t0 - 2) visible.push(hist[i]);

    // Silence: grey bands, labelled, so a flat line during silence is not read as an emotion.
    g.save();
    g.beginPath();
    g.rect(left, top, plotW, plotH);
    g.clip();
    let bandStart = null;
    const bands = [];
    for (let i = 0; i < visible.length; i++) {
      const pt = visible[i];
      const prevT = i > 0 ? visible[i - 1].t : pt.t - ((state.model && state.model.hop_s) || 0.5);
      if (!pt.voiced && bandStart === null) bandStart = prevT;
      if (pt.voiced && bandStart !== null) {
        bands.push([bandStart, prevT]);
        bandStart = null;
      }
    }
    if (bandStart !== null) bands.push([bandStart, visible[visible.length - 1].t]);
    bands.forEach(([a, b]) => {
      g.globalAlpha = 0.18;
      g.fillStyle = silentColor;
      g.fillRect(x(a), top, Math.max(1, x(b) - x(a)), plotH);
      g.globalAlpha = 1;
      if (x(b) - x(a) > 44) {
        g.fillStyle = textColor;
        g.textAlign = "center";
        g.textBaseline = "top";
        g.fillText("silent", (Math.max(left, x(a)) + Math.min(left + plotW, x(b))) / 2, top + 4);
      }
    });

    g.lineWidth = 2;
    g.lineJoin = "round";
    state.labels.forEach((label, li) => {
      g.strokeStyle = colorOf(label, li);
      g.setLineDash(dashOf(li));
      g.beginPath();
      visible.forEach((pt, i) => {
        if (i === 0) g.moveTo(x(pt.t), y(pt.v[li]));
        else g.lineTo(x(pt.t), y(pt.v[li]));
      });
      g.stroke();
    });
    g.restore();
    g.setLineDash([]);

    // Name each line at its right end; nudge the names apart so none overlap.
    if (visible.length) {
      const last = visible[visible.length - 1];
      const tags = state.labels.map((label, li) => ({ label: label, li: li, y: y(last.v[li]) }));
      tags.sort((a, b) => a.y - b.y);
      const gap = 12;
      for (let i = 1; i < tags.length; i++) if (tags[i].y < tags[i - 1].y + gap) tags[i].y = tags[i - 1].y + gap;
      const overflow = tags.length ? tags[tags.length - 1].y - (top + plotH) : 0;
      if (overflow > 0) tags.forEach((t) => (t.y -= overflow));
      for (let i = tags.length - 2; i >= 0; i--) if (tags[i].y > tags[i + 1].y - gap) tags[i].y = tags[i + 1].y - gap;
      g.textAlign = "left";
      g.textBaseline = "middle";
      g.font = "bold 11px system-ui, sans-serif";
      const nameColor = styles.getPropertyValue("--text").trim() || "#1b1f24";
      tags.forEach((t) => {
        // A tick in the line's colour, the name in the text colour (readable on any background).
        g.fillStyle = colorOf(t.label, t.li);
        g.fillRect(left + plotW + 3, t.y - 1.5, 8, 3);
        g.fillStyle = nameColor;
        g.fillText(t.label, left + plotW + 13, t.y);
      });
    } else {
      g.fillStyle = textColor;
      g.textAlign = "center";
      g.textBaseline = "middle";
      g.font = "13px system-ui, sans-serif";
      g.fillText(s ? "Waiting for predictions on this stream…" : "No stream selected", left + plotW / 2, top + plotH / 2);
    }

    canvas.dataset.points = String(visible.length);
    canvas.dataset.stream = s ? s.id : "";
    canvas.dataset.lastT = visible.length ? String(visible[visible.length - 1].t) : "";
    state.rendered.points = visible.length;
    if (visible.length) {
      const last = visible[visible.length - 1];
      const best = argmax(last.v);
      canvas.setAttribute(
        "aria-label",
        "Timeline of the last " + span + " s on stream " + s.id + ": " + visible.length + " windows; now " + (last.voiced ? state.labels[best] + " leads at " + pct(last.v[best]) : "silent") + "."
      );
    } else {
      canvas.setAttribute("aria-label", "Timeline: no data yet");
    }
  }

  function render() {
    renderConnection();
    renderModel();
    renderStreams();
    renderDetail();
    renderTimeline();
    renderMic();
    const s = state.selected !== null ? state.streams[state.selected] : null;
    state.rendered.stream = s ? s.id : null;
    state.rendered.seq = s ? s.seq : null;
  }

  // ---------------------------------------------------------------- wiring

  el.micButton.addEventListener("click", () => {
    const st = state.mic.state;
    if (st === "off" || st === "error") startMic();
    else stopMic();
  });
  el.reconnectNow.addEventListener("click", () => {
    state.attempt = 0;
    connect();
  });
  el.errorsClear.addEventListener("click", () => {
    state.errors = [];
    renderErrors();
  });
  el.timelineSpan.addEventListener("change", () => {
    state.spanS = Number(el.timelineSpan.value) || 60;
    scheduleRender();
  });
  window.addEventListener("resize", scheduleRender);
  window.addEventListener("online", () => {
    if (state.connection !== "open") connect();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) scheduleRender();
  });
  // Keep the "retrying in N s" countdown honest.
  setInterval(() => {
    if (state.connection === "reconnecting") renderConnection();
  }, 500);
  window.addEventListener("beforeunload", () => {
    if (state.mic.state === "streaming") send({ type: "stop" });
  });

  if (params.get("token")) {
    // Carry the token to the links that need it.
    for (const name of ["metrics", "healthz"]) {
      document.querySelectorAll(`a[href="${name}"]`).forEach((a) => (a.href = name + "?token=" + encodeURIComponent(params.get("token"))));
    }
  }

  buildBars();
  render();
  connect();
})();
