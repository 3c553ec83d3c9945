// The pure parts of the dashboard's views: timeline layout, bars, panels' words, microphone framing, formats.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { barRows, barWidth } from "../../realtime/dashboard/bars.mjs";
import { colorOf, dashOf, num, pct } from "../../realtime/dashboard/format.mjs";
import { MIC_CHUNK_S, chunkFrames, failureWords, micButton } from "../../realtime/dashboard/mic.mjs";
import { connectionText, shareWidths, streamFacts, streamSummary } from "../../realtime/dashboard/panels.mjs";
import { initialState } from "../../realtime/dashboard/protocol.mjs";
import {
  describeTimeline,
  plotArea,
  scales,
  silentBands,
  spreadTags,
  tickStep,
  ticks,
  timeRange,
  visiblePoints,
} from "../../realtime/dashboard/timeline.mjs";

const LABELS = ["anger", "happy", "sad"];
const stream = (fields = {}) => ({
  id: "demo",
  kind: "file",
  ended: false,
  seq: 7,
  t_end: 12.25,
  smoothed: { anger: 0.125, happy: 0.5, sad: 0.375 },
  top: "happy",
  voiced: true,
  latency_ms: 12.6,
  count: 3,
  history: [],
  ...fields,
});

describe("timeline layout", () => {
  test("plotArea leaves room for axis text and line names", () => {
    assert.deepEqual(plotArea(600, 260), { left: 36, top: 10, plotW: 490, plotH: 228 });
    assert.equal(plotArea(400, 260).plotW, 400 - 36 - 62, "narrow canvases keep less room for names");
    assert.deepEqual(plotArea(50, 20), { left: 36, top: 10, plotW: 10, plotH: 10 });
  });

  test("timeRange ends at the newest point", () => {
    assert.deepEqual(timeRange([], 60), { tNow: 60, t0: 0 });
    assert.deepEqual(timeRange([{ t: 100 }, { t: 130.5 }], 30), { tNow: 130.5, t0: 100.5 });
  });

  test("scales map the span onto the plot and clamp probabilities", () => {
    const area = plotArea(600, 260);
    const sc = scales(area, 40, 60);
    assert.equal(sc.x(40), 36);
    assert.equal(sc.x(100), 36 + 490);
    assert.equal(sc.x(70), 36 + 245);
    assert.equal(sc.y(1), 10);
    assert.equal(sc.y(0), 238);
    assert.equal(sc.y(0.5), 124);
    assert.equal(sc.y(3), 10);
    assert.equal(sc.y(-1), 238);
  });

  test("visiblePoints keeps points from 2 s before the left edge", () => {
    const h = [1, 7.9, 8, 9, 15].map((t) => ({ t }));
    assert.deepEqual(
      visiblePoints(h, 10).map((p) => p.t),
      [8, 9, 15]
    );
  });

  test("ticks are at least 52 px apart", () => {
    assert.equal(tickStep(60, 490), 10);
    assert.equal(tickStep(300, 490), 60);
    assert.equal(tickStep(30, 490), 5);
    assert.equal(tickStep(30, 10), 30, "no step fits: one tick at each end");
    assert.deepEqual(
      ticks(60, 490).map((t) => t.text),
      ["now", "−10 s", "−20 s", "−30 s", "−40 s", "−50 s", "−60 s"]
    );
    assert.deepEqual(
      ticks(30, 10).map((t) => t.back),
      [0, 30]
    );
  });

  test("silentBands cover each silent point since the point before it", () => {
    const pts = [
      [1, true],
      [2, false],
      [3, false],
      [4, true],
      [5, false],
    ].map(([t, voiced]) => ({ t, voiced }));
    assert.deepEqual(silentBands(pts, 0.5), [
      [1, 3],
      [4, 5],
    ]);
    assert.deepEqual(silentBands([{ t: 10, voiced: false }, { t: 11, voiced: true }], 0.5), [[9.5, 10]]);
    assert.deepEqual(silentBands([], 0.5), []);
    assert.deepEqual(silentBands([{ t: 1, voiced: true }], 0.5), []);
  });

  test("spreadTags keeps names apart and inside the plot", () => {
    assert.deepEqual(spreadTags([100, 50, 52], 12, 200), [
      { index: 1, y: 50 },
      { index: 2, y: 62 },
      { index: 0, y: 100 },
    ]);
    // Crowded at the bottom: pushed down, then the whole stack up to end at the bottom.
    assert.deepEqual(
      spreadTags([199, 195, 198], 12, 200).map((t) => [t.index, t.y]),
      [
        [1, 176],
        [2, 188],
        [0, 200],
      ]
    );
    assert.deepEqual(spreadTags([], 12, 200), []);
  });

  test("describeTimeline says what leads now, or that it is silent", () => {
    assert.equal(describeTimeline(LABELS, null, [], 60), "Timeline: no data yet");
    const pts = [
      { t: 1, v: [0.1, 0.2, 0.7], voiced: true },
      { t: 2, v: [0.6, 0.3, 0.1], voiced: true },
    ];
    assert.equal(describeTimeline(LABELS, "demo", pts, 60), "Timeline of the last 60 s on stream demo: 2 windows; now anger leads at 60%.");
    pts[1].voiced = false;
    assert.equal(describeTimeline(LABELS, "demo", pts, 30), "Timeline of the last 30 s on stream demo: 2 windows; now silent.");
  });
});

describe("bars", () => {
  test("barWidth is a clamped percentage with two decimals", () => {
    assert.equal(barWidth(0.1234), "12.34%");
    assert.equal(barWidth(1.5), "100.00%");
    assert.equal(barWidth(-0.2), "0.00%");
  });

  test("barRows: nothing before the first prediction", () => {
    assert.equal(barRows(LABELS, null), null);
    assert.equal(barRows(LABELS, stream({ count: 0 })), null);
  });

  test("barRows: values, words and the top row", () => {
    const view = barRows(LABELS, stream());
    assert.equal(view.silent, false);
    assert.deepEqual(view.rows[1], { label: "happy", value: 0.5, width: "50.00%", text: "50%", now: 50, valuetext: "happy 50%", top: true });
    assert.deepEqual(
      view.rows.map((r) => [r.label, r.value, r.top]),
      [
        ["anger", 0.125, false],
        ["happy", 0.5, true],
        ["sad", 0.375, false],
      ]
    );
  });

  test("barRows: in silence no row leads and every row says so", () => {
    const view = barRows(LABELS, stream({ voiced: false }));
    assert.equal(view.silent, true);
    assert.ok(view.rows.every((r) => !r.top));
    assert.equal(view.rows[0].valuetext, "anger 13% (silent)");
  });
});

describe("panels", () => {
  const st = (fields) => ({ ...initialState(), ...fields });

  test("connectionText", () => {
    assert.equal(connectionText(st({ connection: "open", connects: 1 }), 0), "Connected");
    assert.equal(connectionText(st({ connection: "open", connects: 2 }), 0), "Connected (reconnected)");
    assert.equal(connectionText(st({}), 0), "Connecting to the daemon…");
    assert.equal(connectionText(st({ connection: "closed" }), 0), "Disconnected");
    assert.equal(
      connectionText(st({ connection: "reconnecting", connects: 1, attempt: 2, retryInMs: 1000, retryAt: 5000, lastClose: { code: 1001, reason: "going away" } }), 3100),
      "Disconnected from the daemon (going away); retrying in 2 s (attempt 2)"
    );
    assert.equal(connectionText(st({ connection: "reconnecting", attempt: 1, retryInMs: 500, retryAt: 500, lastClose: { code: 1006, reason: "" } }), 9999), "Cannot reach the daemon; retrying in 0 s (attempt 1)");
    assert.equal(connectionText(st({ connection: "reconnecting", connects: 1, lastClose: { code: 1008, reason: "x" } }), 0), "The daemon refused the connection; retrying…");
  });

  test("streamSummary", () => {
    assert.equal(streamSummary(LABELS, stream({ count: 0 })), "no predictions yet");
    assert.equal(streamSummary(LABELS, stream({ voiced: false })), "silent");
    assert.equal(streamSummary(LABELS, stream()), "happy 50%");
  });

  test("shareWidths: each label's share; all zero is all zero", () => {
    assert.deepEqual(shareWidths([1, 1, 2]), ["25.00%", "25.00%", "50.00%"]);
    assert.deepEqual(shareWidths([0, 0]), ["0.00%", "0.00%"]);
  });

  test("streamFacts", () => {
    assert.deepEqual(streamFacts(stream()), { voiced: "true", voice: "voice", latency: "13 ms", windowNo: "#7", time: "12.3 s" });
    assert.deepEqual(streamFacts(stream({ voiced: null, latency_ms: null, seq: null, t_end: null })), {
      voiced: "true",
      voice: "voice (not reported)",
      latency: "–",
      windowNo: "–",
      time: "–",
    });
    assert.equal(streamFacts(stream({ voiced: false })).voice, "silent");
  });
});

describe("microphone", () => {
  test("chunks are 50 ms of frames", () => {
    assert.equal(MIC_CHUNK_S, 0.05);
    assert.equal(chunkFrames(48000), 2400);
    assert.equal(chunkFrames(44100), 2205);
    assert.equal(chunkFrames(16000), 800);
  });

  test("the button says what a press does", () => {
    for (const s of ["asking", "waiting", "starting", "streaming"]) assert.deepEqual(micButton(s), { pressed: true, text: "Stop the microphone" });
    for (const s of ["off", "error"]) assert.deepEqual(micButton(s), { pressed: false, text: "Use this browser's microphone" });
  });

  test("failures in words", () => {
    assert.equal(failureWords({ name: "NotAllowedError", message: "x" }), "permission was denied");
    assert.equal(failureWords({ name: "NotFoundError" }), "no microphone was found");
    assert.equal(failureWords(new Error("worklet failed")), "worklet failed");
    assert.equal(failureWords("odd"), "odd");
  });
});

describe("formats", () => {
  test("pct and num", () => {
    assert.equal(pct(0.456), "46%");
    assert.equal(pct(0.005), "1%");
    assert.equal(pct(2), "100%");
    assert.equal(pct(-1), "0%");
    assert.equal(num(0.25, 1), "0.3");
    assert.equal(num(NaN, 1), "–");
    assert.equal(num("1", 1), "–");
  });

  test("colours and dashes: own ones for known labels, a cycle for others", () => {
    assert.equal(colorOf("sad", 0), "#0072B2");
    assert.equal(colorOf("calm", 0), "#D55E00");
    assert.equal(colorOf("calm", 8), colorOf("calm", 0));
    assert.notEqual(colorOf("calm", 1), colorOf("calm", 0));
    assert.deepEqual(dashOf(0), []);
    assert.deepEqual(dashOf(9), dashOf(1));
  });
});
