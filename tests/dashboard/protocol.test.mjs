// The dashboard's pure reducer (realtime/dashboard/protocol.mjs): node --test tests/dashboard/
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  DEFAULT_LABELS,
  ERROR_WORDS,
  MAX_ERRORS_KEPT,
  MAX_HISTORY_POINTS,
  MAX_HISTORY_S,
  MIC_MAX_BUFFERED_BYTES,
  MIC_STREAM_KIND,
  appendHistory,
  describeKind,
  initialState,
  reduce,
  selectedStream,
  streamIdOf,
  vectorOf,
} from "../../realtime/dashboard/protocol.mjs";

const LABELS = ["anger", "happy", "neutral", "sad"];
const MODEL = { name: "tiny", backend: "onnxruntime", labels: LABELS, sample_rate: 16000, window_s: 5, hop_s: 0.5 };
const T0 = 1_700_000_000_000;

function deepFreeze(x) {
  if (x && typeof x === "object" && !Object.isFrozen(x)) {
    Object.freeze(x);
    Object.values(x).forEach(deepFreeze);
  }
  return x;
}

/** Run events through reduce, checking on the way that it never writes to its input. */
function run(state, ...events) {
  const effects = [];
  for (const ev of events) {
    const before = JSON.stringify(state);
    deepFreeze(state); // a write to the input throws in a module (strict mode)
    const out = reduce(state, { at: T0, ...ev });
    assert.equal(JSON.stringify(state), before, "reduce changed its input on " + ev.type);
    assert.ok(Array.isArray(out.effects));
    effects.push(...out.effects);
    state = out.state;
  }
  return { state, effects };
}

const msg = (m) => ({ type: "message", msg: m });
const hello = (streams = [{ id: "demo", kind: "file", source: "/x/demo.wav" }], extra = {}) =>
  msg({ type: "hello", protocol: 1, model: MODEL, streams, limits: {}, ...extra });
const pred = (stream, seq, fields = {}) =>
  msg({
    type: "prediction",
    stream,
    seq,
    t_start: seq * 0.5 - 5,
    t_end: seq * 0.5,
    probs: { anger: 0.1, happy: 0.2, neutral: 0.3, sad: 0.4 },
    smoothed: { anger: 0.4, happy: 0.3, neutral: 0.2, sad: 0.1 },
    top: "anger",
    voiced: true,
    voiced_fraction: 1,
    latency_ms: 12.5,
    ...fields,
  });
const sends = (effects, type) => effects.filter((e) => e.type === "send" && (!type || e.msg.type === type));
const connected = () => run(initialState(), { type: "connecting" }, hello());

describe("hello", () => {
  test("takes the model, labels and streams and opens the connection", () => {
    const { state, effects } = connected();
    assert.equal(state.connection, "open");
    assert.equal(state.connects, 1);
    assert.equal(state.protocol, 1);
    assert.deepEqual(state.labels, LABELS);
    assert.equal(state.model.name, "tiny");
    assert.deepEqual(state.order, ["demo"]);
    assert.equal(state.selected, "demo");
    assert.equal(state.streams.demo.kind, "file · demo.wav");
    assert.equal(state.streams.demo.count, 0);
    assert.deepEqual(state.errors, []);
    assert.deepEqual(effects, [{ type: "connected" }, { type: "send", msg: { type: "subscribe", streams: "*" } }]);
  });

  test("before any hello the page shows the default labels and nothing selected", () => {
    const state = initialState();
    assert.deepEqual(state.labels, DEFAULT_LABELS);
    assert.equal(selectedStream(state), null);
    assert.equal(state.connection, "connecting");
  });

  test("a stream asked for in the address stays selected when the daemon lists it", () => {
    const { state } = run(initialState("b"), hello([{ id: "a" }, { id: "b" }]));
    assert.equal(state.selected, "b");
    const other = run(initialState("nope"), hello([{ id: "a" }, { id: "b" }])).state;
    assert.equal(other.selected, "a");
  });

  test("another protocol version is said as an error, and the page goes on", () => {
    const { state, effects } = run(initialState(), hello(undefined, { protocol: 2 }));
    assert.equal(state.errors.length, 1);
    assert.equal(state.errors[0].code, "protocol");
    assert.match(state.errors[0].message, /speaks protocol 2; this page was written for protocol 1/);
    assert.equal(state.errors[0].at, T0);
    assert.equal(sends(effects, "subscribe").length, 1);
  });
});

describe("subscribe", () => {
  test("is sent exactly once per connection, from hello", () => {
    let { state, effects } = connected();
    const all = [...effects];
    ({ state, effects } = run(
      state,
      hello(), // a second hello on the same connection
      pred("demo", 1),
      msg({ type: "streams", streams: [{ id: "demo" }, { id: "mic" }] }),
      msg({ type: "subscribed", streams: "*" })
    ));
    all.push(...effects);
    assert.equal(sends(all, "subscribe").length, 1);
    assert.equal(state.connects, 1);

    ({ state, effects } = run(
      state,
      { type: "closed", code: 1006, reason: "" },
      { type: "retrying", attempt: 1, delayMs: 500 },
      { type: "connecting" }
    ));
    assert.equal(sends(effects).length, 0, "nothing is sent while the connection is down");
    ({ state, effects } = run(state, hello()));
    assert.deepEqual(sends(effects, "subscribe"), [{ type: "send", msg: { type: "subscribe", streams: "*" } }]);
    assert.equal(state.connects, 2);
  });

  test("is not sent when the microphone starts", () => {
    const { effects } = run(connected().state, { type: "mic-asking" }, { type: "mic-ready", sampleRate: 48000 }, msg({ type: "started", stream: "remote-1" }));
    assert.equal(sends(effects, "subscribe").length, 0);
    assert.equal(sends(effects, "start").length, 1);
  });
});

describe("predictions", () => {
  test("for several streams: each keeps its own latest values, count and history", () => {
    const { state } = run(
      connected().state,
      pred("demo", 10),
      pred("mic", 3, { smoothed: { anger: 0.1, happy: 0.6, neutral: 0.2, sad: 0.1 }, top: "happy", latency_ms: 40 }),
      pred("demo", 11, { voiced: false, top: null }),
      pred("mic", 4, { smoothed: { anger: 0, happy: 0.1, neutral: 0.1, sad: 0.8 }, top: "sad" })
    );
    assert.deepEqual(state.order, ["demo", "mic"]);
    assert.equal(state.selected, "demo");
    const demo = state.streams.demo;
    const mic = state.streams.mic;
    assert.equal(demo.count, 2);
    assert.equal(demo.seq, 11);
    assert.equal(demo.t_end, 5.5);
    assert.equal(demo.voiced, false);
    assert.equal(demo.top, "anger"); // silence: the server names none, the page keeps its own argmax
    assert.deepEqual(
      demo.history.map((h) => [h.t, h.voiced]),
      [
        [5, true],
        [5.5, false],
      ]
    );
    assert.deepEqual(demo.history[0].v, [0.4, 0.3, 0.2, 0.1]);
    assert.equal(mic.count, 2);
    assert.equal(mic.seq, 4);
    assert.equal(mic.top, "sad");
    assert.equal(mic.latency_ms, 12.5);
    assert.deepEqual(mic.smoothed, { anger: 0, happy: 0.1, neutral: 0.1, sad: 0.8 });
    assert.deepEqual(
      mic.history.map((h) => h.v),
      [
        [0.1, 0.6, 0.2, 0.1],
        [0, 0.1, 0.1, 0.8],
      ]
    );
    assert.equal(mic.kind, "");
  });

  test("the server's top wins; an unknown one falls back to the largest smoothed value", () => {
    const { state } = run(connected().state, pred("demo", 1, { top: "neutral" }));
    assert.equal(state.streams.demo.top, "neutral");
    const other = run(connected().state, pred("demo", 1, { top: "bored" })).state;
    assert.equal(other.streams.demo.top, "anger");
  });

  test("a stream that starts over begins a fresh timeline", () => {
    let { state } = run(connected().state, pred("demo", 20), pred("demo", 21));
    assert.equal(state.streams.demo.history.length, 2);
    ({ state } = run(state, pred("demo", 0)));
    assert.deepEqual(
      state.streams.demo.history.map((h) => h.t),
      [0]
    );
    assert.equal(state.streams.demo.count, 3);
  });

  test("history is bounded in points", () => {
    let state = connected().state;
    const n = MAX_HISTORY_POINTS + 25;
    for (let i = 0; i < n; i++) state = reduce(state, { ...pred("demo", i, { t_end: i * 0.01 }), at: T0 }).state;
    const h = state.streams.demo.history;
    assert.equal(h.length, MAX_HISTORY_POINTS);
    assert.equal(h[0].t, 25 * 0.01);
    assert.equal(h[h.length - 1].t, (n - 1) * 0.01);
    assert.equal(state.streams.demo.count, n);
  });

  test("history is bounded in stream time", () => {
    let state = connected().state;
    for (let i = 0; i <= 2000; i++) state = reduce(state, { ...pred("demo", i, { t_end: i * 0.5 }), at: T0 }).state;
    const h = state.streams.demo.history;
    assert.equal(h[h.length - 1].t, 1000);
    assert.equal(h[0].t, 1000 - MAX_HISTORY_S);
    assert.equal(h.length, MAX_HISTORY_S / 0.5 + 1);
  });

  test("appendHistory copies: the old history is left as it was", () => {
    const old = [{ t: 1, v: [1], voiced: true }];
    const next = appendHistory(old, { t: 2, v: [0], voiced: false });
    assert.equal(old.length, 1);
    assert.deepEqual(
      next.map((p) => p.t),
      [1, 2]
    );
  });

  test("a stream list marks the streams it no longer names as ended", () => {
    let { state } = run(connected().state, pred("mic", 1));
    ({ state } = run(state, msg({ type: "streams", streams: [{ id: "demo", kind: "file" }] })));
    assert.equal(state.streams.mic.ended, true);
    assert.equal(state.streams.demo.ended, false);
    assert.equal(state.streams.demo.kind, "file");
    ({ state } = run(state, pred("mic", 2)));
    assert.equal(state.streams.mic.ended, false, "a prediction brings a stream back");
  });
});

describe("errors", () => {
  test("a daemon error is kept with its words; a repeat is counted, not listed again", () => {
    const { state } = run(
      connected().state,
      msg({ type: "error", code: "bad_message", message: "unknown type 'x'" }),
      { ...msg({ type: "error", code: "bad_message", message: "unknown type 'x'" }), at: T0 + 5000 },
      msg({ type: "error", code: "server_busy", message: "too many streams" })
    );
    assert.equal(state.errors.length, 2);
    assert.deepEqual(state.errors[0], { code: "bad_message", message: "unknown type 'x'", words: ERROR_WORDS.bad_message, at: T0 + 5000, repeat: 2 });
    assert.equal(state.errors[1].code, "server_busy");
    assert.equal(state.errors[1].words, ERROR_WORDS.server_busy);
  });

  test("codes without words, even ones named like Object's properties, get none", () => {
    const { state } = run(connected().state, msg({ type: "error", code: "constructor", message: "m" }), msg({ type: "error" }));
    assert.equal(state.errors[0].words, "");
    assert.deepEqual([state.errors[1].code, state.errors[1].message, state.errors[1].words], ["error", "", ""]);
  });

  test("at most MAX_ERRORS_KEPT are kept, the newest", () => {
    let state = connected().state;
    for (let i = 0; i < MAX_ERRORS_KEPT + 7; i++) state = reduce(state, { ...msg({ type: "error", code: "bad_message", message: "n" + i }), at: T0 }).state;
    assert.equal(state.errors.length, MAX_ERRORS_KEPT);
    assert.equal(state.errors[0].message, "n7");
    assert.equal(state.errors.at(-1).message, "n" + (MAX_ERRORS_KEPT + 6));
  });

  test("a refusal while the microphone starts stops it, in words", () => {
    const starting = run(connected().state, { type: "mic-asking" }, { type: "mic-ready", sampleRate: 16000 }).state;
    assert.equal(starting.mic.state, "starting");
    const { state, effects } = run(starting, msg({ type: "error", code: "server_busy", message: "max_remote_streams reached" }));
    assert.equal(state.mic.state, "error");
    assert.equal(state.mic.message, "The daemon refused the microphone stream: " + ERROR_WORDS.server_busy + " (max_remote_streams reached)");
    assert.deepEqual(effects, [{ type: "send", msg: { type: "stop" } }, { type: "mic-release" }]);
    // A bad audio frame is no refusal.
    const still = run(starting, msg({ type: "error", code: "invalid_audio_frame", message: "odd" })).state;
    assert.equal(still.mic.state, "starting");
  });

  test("errors-cleared empties the list", () => {
    const { state } = run(connected().state, msg({ type: "error", code: "bad_message", message: "x" }), { type: "errors-cleared" });
    assert.deepEqual(state.errors, []);
  });
});

describe("malformed and unknown input", () => {
  const junk = [
    null,
    5,
    "hello",
    [],
    [{ type: "hello" }],
    {},
    { type: 7 },
    { type: "prediction" },
    { type: "prediction", stream: null, seq: 1 },
    { type: "started" },
    { type: "stopped", stream: "x" },
    { type: "streams", streams: { demo: 1 } },
    { type: "streams" },
  ];
  for (const value of junk) {
    test("ignores " + JSON.stringify(value), () => {
      const before = connected().state;
      const { state } = run(before, msg(value));
      assert.equal(state, before, "state unchanged");
    });
  }

  test("an unknown type is logged, nothing else", () => {
    const before = connected().state;
    const { state, effects } = run(before, msg({ type: "gossip", text: "hi" }));
    assert.equal(state, before);
    assert.deepEqual(effects, [{ type: "log", text: "ser: ignoring message of type gossip" }]);
  });

  test("unknown and broken events change nothing", () => {
    const before = connected().state;
    for (const ev of [null, undefined, 3, {}, { type: "nope" }, { type: "toString" }, { type: "__proto__" }]) {
      const out = reduce(before, ev);
      assert.equal(out.state, before);
      assert.deepEqual(out.effects, []);
    }
  });

  test("odd fields in a prediction are read as missing", () => {
    const { state } = run(
      connected().state,
      pred("demo", 1),
      msg({ type: "prediction", stream: "demo", seq: "2", t_end: "x", smoothed: "high", probs: 3, voiced: "yes", latency_ms: NaN, top: 5 })
    );
    const s = state.streams.demo;
    assert.equal(s.count, 2);
    assert.equal(s.seq, null);
    assert.equal(s.t_end, null);
    assert.equal(s.smoothed, null);
    assert.equal(s.voiced, true);
    assert.equal(s.latency_ms, null);
    assert.equal(s.top, "anger"); // all zero: the first label
    assert.equal(s.history.length, 1, "no point without a time");
  });

  test("a malformed hello still opens the connection with the default labels", () => {
    const { state, effects } = run(initialState(), msg({ type: "hello", protocol: 1, model: "tiny", streams: "demo" }));
    assert.equal(state.connection, "open");
    assert.equal(state.model, null);
    assert.deepEqual(state.labels, DEFAULT_LABELS);
    assert.deepEqual(state.order, []);
    assert.equal(sends(effects, "subscribe").length, 1);
  });

  test("stream ids named like Object's properties are ordinary streams", () => {
    const { state } = run(connected().state, pred("__proto__", 1), pred("constructor", 1));
    assert.deepEqual(state.order, ["demo", "__proto__", "constructor"]);
    assert.equal(state.streams["__proto__"].count, 1);
    assert.equal(state.streams.constructor.count, 1);
    assert.equal(run(state, { type: "select", stream: "toString" }).state.selected, "demo");
  });
});

describe("reconnecting", () => {
  function streamingMic() {
    return run(
      connected().state,
      pred("demo", 5),
      { type: "mic-asking" },
      { type: "mic-ready", sampleRate: 48000 },
      msg({ type: "started", stream: "remote-1" }),
      pred("remote-1", 1)
    ).state;
  }

  test("a lost connection leaves the streams and puts the microphone in waiting", () => {
    const before = streamingMic();
    assert.equal(before.mic.state, "streaming");
    const { state, effects } = run(before, { type: "closed", code: 1006, reason: "" });
    assert.equal(state.connection, "closed");
    assert.deepEqual(state.lastClose, { code: 1006, reason: "" });
    assert.equal(state.mic.state, "waiting");
    assert.equal(state.mic.stream, null);
    assert.match(state.mic.message, /resumes when the daemon is back/);
    assert.deepEqual(state.errors, [], "an abnormal close without a reason is said in the connection line only");
    assert.equal(state.streams.demo.count, 1);
    assert.deepEqual(effects, []);
  });

  test("retrying and connecting say when the next attempt is", () => {
    let { state } = run(streamingMic(), { type: "closed", code: 1001, reason: "going away" });
    ({ state } = run(state, { type: "retrying", attempt: 2, delayMs: 1100, at: T0 + 10 }));
    assert.equal(state.connection, "reconnecting");
    assert.equal(state.attempt, 2);
    assert.equal(state.retryInMs, 1100);
    assert.equal(state.retryAt, T0 + 1110);
    ({ state } = run(state, { type: "connecting" }));
    assert.equal(state.connection, "reconnecting", "after a first connection every new attempt is a reconnect");
    assert.equal(state.retryInMs, null);
    assert.equal(run(initialState(), { type: "connecting" }).state.connection, "connecting");
  });

  test("the next hello resubscribes, restarts the microphone and ends the streams that are gone", () => {
    let { state } = run(streamingMic(), { type: "closed", code: 1006, reason: "" }, { type: "retrying", attempt: 1, delayMs: 500 }, { type: "connecting" });
    let effects;
    ({ state, effects } = run(state, hello([{ id: "demo" }])));
    assert.equal(state.connection, "open");
    assert.equal(state.connects, 2);
    assert.equal(state.attempt, 0);
    assert.equal(state.retryInMs, null);
    assert.equal(state.streams["remote-1"].ended, true);
    assert.equal(state.streams.demo.ended, false);
    assert.equal(state.streams.demo.history.length, 1, "same labels: the timeline goes on");
    assert.equal(state.mic.state, "starting");
    assert.deepEqual(effects, [
      { type: "connected" },
      { type: "send", msg: { type: "subscribe", streams: "*" } },
      { type: "send", msg: { type: "start", sample_rate: 48000, encoding: "pcm_f32le", channels: 1 } },
    ]);
    ({ state } = run(state, msg({ type: "started", stream: "remote-2" })));
    assert.equal(state.mic.state, "streaming");
    assert.equal(state.mic.stream, "remote-2");
    assert.equal(state.selected, "remote-2");
    assert.equal(state.streams["remote-2"].kind, MIC_STREAM_KIND);
  });

  test("a daemon with other labels starts every timeline afresh", () => {
    const before = run(connected().state, pred("demo", 1), pred("demo", 2)).state;
    const { state } = run(before, { type: "closed", code: 1006 }, { type: "connecting" }, msg({ type: "hello", protocol: 1, model: { ...MODEL, labels: ["calm", "angry"] }, streams: [{ id: "demo" }] }));
    assert.deepEqual(state.labels, ["calm", "angry"]);
    assert.deepEqual(state.streams.demo.history, []);
  });

  test("a close with a reason is an error line, unless it repeats the error just before it", () => {
    let { state } = run(connected().state, { type: "closed", code: 1008, reason: "rate limit exceeded" });
    assert.equal(state.errors.length, 1);
    assert.equal(state.errors[0].message, "The daemon closed the connection: rate limit exceeded");
    ({ state } = run(connected().state, msg({ type: "error", code: "unauthorized", message: "a token is required" }), { type: "closed", code: 1008, reason: "a token is required" }));
    assert.deepEqual(
      state.errors.map((e) => e.code),
      ["unauthorized"]
    );
    ({ state } = run(connected().state, { type: "closed", code: 1008, reason: "" }));
    assert.equal(state.errors[0].message, "The daemon closed the connection: code 1008");
  });
});

describe("microphone", () => {
  test("ready before the connection is open: it waits, then starts on hello", () => {
    let { state, effects } = run(initialState(), { type: "mic-asking" }, { type: "mic-ready", sampleRate: 44100 });
    assert.equal(state.mic.state, "waiting");
    assert.deepEqual(sends(effects), []);
    ({ state, effects } = run(state, hello()));
    assert.equal(state.mic.state, "starting");
    assert.equal(state.mic.message, "Starting a stream at 44.1 kHz…");
    assert.equal(sends(effects, "start")[0].msg.sample_rate, 44100);
  });

  test("stopped while asking: the capture that arrives late is released", () => {
    const { state, effects } = run(connected().state, { type: "mic-asking" }, { type: "mic-stop" }, { type: "mic-ready", sampleRate: 48000 }, { type: "mic-failed", message: "late" });
    assert.equal(state.mic.state, "off");
    assert.deepEqual(effects, [{ type: "mic-release" }, { type: "mic-release" }]);
  });

  test("chunks are sent only while streaming, and dropped when the socket is backed up", () => {
    let state = run(connected().state, { type: "mic-asking" }, { type: "mic-ready", sampleRate: 48000 }).state;
    const data = new ArrayBuffer(8);
    let out = reduce(state, { type: "mic-chunk", data, open: true, buffered: 0 });
    assert.equal(out.state, state, "not streaming yet");
    assert.deepEqual(out.effects, []);
    state = run(state, msg({ type: "started", stream: "remote-1" })).state;
    out = reduce(state, { type: "mic-chunk", data, open: true, buffered: 100 });
    assert.equal(out.effects.length, 1);
    assert.equal(out.effects[0].type, "send-binary");
    assert.equal(out.effects[0].data, data);
    assert.equal(out.state.mic.framesSent, 1);
    out = reduce(out.state, { type: "mic-chunk", data, open: true, buffered: MIC_MAX_BUFFERED_BYTES + 1 });
    assert.deepEqual(out.effects, []);
    assert.equal(out.state.mic.dropped, 1);
    assert.equal(out.state.mic.framesSent, 1);
    const closed = reduce(out.state, { type: "mic-chunk", data, open: false, buffered: 0 });
    assert.equal(closed.state, out.state);
  });

  test("the user stops a streaming microphone: stop is sent and its stream is ended", () => {
    const streaming = run(connected().state, { type: "mic-asking" }, { type: "mic-ready", sampleRate: 48000 }, msg({ type: "started", stream: "remote-1" })).state;
    assert.equal(run(streaming, { type: "unload" }).effects[0].msg.type, "stop");
    const { state, effects } = run(streaming, { type: "mic-stop" });
    assert.equal(state.mic.state, "off");
    assert.equal(state.mic.message, "Microphone off.");
    assert.equal(state.mic.stream, null);
    assert.equal(state.streams["remote-1"].ended, true);
    assert.deepEqual(effects, [{ type: "send", msg: { type: "stop" } }, { type: "mic-release" }]);
    const lost = run(streaming, { type: "mic-stop", message: "The microphone was disconnected." }).state;
    assert.equal(lost.mic.state, "error");
    assert.deepEqual(run(lost, { type: "unload" }).effects, []);
  });

  test("started for another page's start attempt is ignored", () => {
    const before = connected().state;
    assert.equal(run(before, msg({ type: "started", stream: "remote-9" })).state, before);
  });
});

describe("the user", () => {
  test("selects a stream and a timeline span", () => {
    let { state } = run(connected().state, pred("mic", 1), { type: "select", stream: "mic" }, { type: "span", seconds: 120 });
    assert.equal(state.selected, "mic");
    assert.equal(selectedStream(state).id, "mic");
    assert.equal(state.spanS, 120);
    ({ state } = run(state, { type: "span", seconds: NaN }));
    assert.equal(state.spanS, 60);
  });
});

describe("helpers", () => {
  test("streamIdOf", () => {
    assert.equal(streamIdOf("demo"), "demo");
    assert.equal(streamIdOf(3), "3");
    assert.equal(streamIdOf({ id: 0 }), "0");
    assert.equal(streamIdOf({ stream: "s" }), "s");
    assert.equal(streamIdOf({ name: "n" }), "n");
    assert.equal(streamIdOf({}), null);
    assert.equal(streamIdOf(null), null);
  });

  test("describeKind", () => {
    assert.equal(describeKind({ kind: "file", source: "C:\\audio\\talk.flac" }), "file · talk.flac");
    assert.equal(describeKind({ type: "mic" }), "mic");
    assert.equal(describeKind("file"), "");
  });

  test("vectorOf follows the labels and reads what is missing as 0", () => {
    assert.deepEqual(vectorOf(["a", "b", "c"], { c: 0.5, a: 0.25, z: 1 }), [0.25, 0, 0.5]);
    assert.deepEqual(vectorOf(["a", "toString"], null), [0, 0]);
    assert.deepEqual(vectorOf(["toString"], {}), [0]);
  });
});
