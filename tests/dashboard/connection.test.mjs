// The dashboard's socket and backoff (realtime/dashboard/connection.mjs), with a fake WebSocket and fake timers.
import assert from "node:assert/strict";
import { beforeEach, describe, mock, test } from "node:test";

import { BACKOFF_MAX_MS, CONNECT_TIMEOUT_MS, backoffDelay, createConnection, wsUrl } from "../../realtime/dashboard/connection.mjs";

class FakeSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  static made = [];
  static failNext = false;

  constructor(url) {
    if (FakeSocket.failNext) {
      FakeSocket.failNext = false;
      throw new Error("bad URL");
    }
    this.url = url;
    this.readyState = FakeSocket.CONNECTING;
    this.sent = [];
    this.closed = false;
    this.bufferedAmount = 0;
    FakeSocket.made.push(this);
  }
  send(data) {
    this.sent.push(data);
  }
  close() {
    this.closed = true;
    this.readyState = FakeSocket.CLOSED;
  }
  // what the browser would do
  open() {
    this.readyState = FakeSocket.OPEN;
    this.onopen && this.onopen();
  }
  receive(data) {
    this.onmessage && this.onmessage({ data });
  }
  drop(code, reason = "") {
    this.readyState = FakeSocket.CLOSED;
    this.onclose && this.onclose({ code, reason });
  }
}

function fakeTimers() {
  let now = 0;
  let next = 1;
  const pending = new Map();
  return {
    setTimeout: (fn, ms) => {
      pending.set(next, { fn, at: now + ms });
      return next++;
    },
    clearTimeout: (id) => pending.delete(id),
    /** Move the clock on, running what falls due. */
    advance(ms) {
      const until = now + ms;
      for (;;) {
        const due = [...pending.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
        if (!due) break;
        pending.delete(due[0]);
        now = due[1].at;
        due[1].fn();
      }
      now = until;
    },
    count: () => pending.size,
  };
}

let timers;
let log;
let conn;
beforeEach(() => {
  FakeSocket.made = [];
  timers = fakeTimers();
  log = [];
  conn = createConnection(
    "ws://127.0.0.1:8765/ws",
    {
      onConnecting: () => log.push(["connecting"]),
      onMessage: (m) => log.push(["message", m]),
      onClose: (c) => log.push(["close", c]),
      onError: (t) => log.push(["error", t]),
      onRetry: (r) => log.push(["retry", r]),
    },
    { WebSocket: FakeSocket, setTimeout: timers.setTimeout, clearTimeout: timers.clearTimeout, random: () => 0.5 }
  );
});
const last = () => FakeSocket.made[FakeSocket.made.length - 1];

describe("backoffDelay", () => {
  test("doubles from 0.5 s up to 5 s", () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6, 20].map((n) => backoffDelay(n, 0.5)),
      [500, 1000, 2000, 4000, 5000, 5000, 5000]
    );
  });
  test("jitters by ±20 %", () => {
    assert.equal(backoffDelay(1, 0), 400);
    assert.equal(backoffDelay(1, 0.999999), 600);
    assert.equal(backoffDelay(10, 0), 0.8 * BACKOFF_MAX_MS);
  });
});

describe("wsUrl", () => {
  const p = (q) => new URLSearchParams(q);
  test("next to the page, keeping a path prefix and the scheme", () => {
    assert.equal(wsUrl("http://127.0.0.1:8765/", p("")), "ws://127.0.0.1:8765/ws");
    assert.equal(wsUrl("https://box.example/ser/?stream=demo", p("stream=demo")), "wss://box.example/ser/ws");
  });
  test("carries the token, escaped; ?ws= overrides", () => {
    assert.equal(wsUrl("http://h:1/", p("token=a b&c")), "ws://h:1/ws?token=a%20b");
    assert.equal(wsUrl("http://h:1/", p("ws=ws://elsewhere:9/ws&token=t")), "ws://elsewhere:9/ws");
  });
});

describe("createConnection", () => {
  test("opens a socket and hands on text messages parsed", () => {
    conn.connect();
    const s = last();
    assert.equal(s.url, "ws://127.0.0.1:8765/ws");
    assert.equal(s.binaryType, "arraybuffer");
    assert.equal(conn.isOpen(), false);
    assert.equal(conn.send({ type: "x" }), false, "nothing is sent before the socket opens");
    s.open();
    assert.equal(conn.isOpen(), true);
    s.receive('{"type":"hello","protocol":1}');
    s.receive(new ArrayBuffer(4)); // binary: not for the page
    const warn = mock.method(console, "warn", () => {});
    s.receive("not json");
    assert.equal(warn.mock.callCount(), 1);
    warn.mock.restore();
    assert.deepEqual(log, [["connecting"], ["message", { type: "hello", protocol: 1 }]]);
    assert.equal(conn.send({ type: "subscribe", streams: "*" }), true);
    const buf = new ArrayBuffer(8);
    assert.equal(conn.sendBinary(buf), true);
    assert.deepEqual(s.sent, ['{"type":"subscribe","streams":"*"}', buf]);
    s.bufferedAmount = 1234;
    assert.equal(conn.bufferedAmount(), 1234);
  });

  test("retries with growing delays until connected() starts the backoff over", () => {
    conn.connect();
    last().drop(1006);
    assert.deepEqual(log.slice(1), [["close", { code: 1006, reason: "" }], ["retry", { attempt: 1, delayMs: 500 }]]);
    assert.equal(conn.isOpen(), false);
    timers.advance(499);
    assert.equal(FakeSocket.made.length, 1);
    timers.advance(1);
    assert.equal(FakeSocket.made.length, 2, "a new socket after the delay");
    last().drop(1006);
    last().drop(1006); // a stale socket's close does nothing
    timers.advance(1000);
    last().drop(1001, "going away");
    assert.deepEqual(
      log.filter((e) => e[0] === "retry").map((e) => e[1]),
      [
        { attempt: 1, delayMs: 500 },
        { attempt: 2, delayMs: 1000 },
        { attempt: 3, delayMs: 2000 },
      ]
    );
    timers.advance(2000);
    last().open();
    conn.connected();
    last().drop(1001);
    assert.deepEqual(log.at(-1), ["retry", { attempt: 1, delayMs: 500 }]);
  });

  test("reconnectNow drops the old socket and tries at once, backoff from the start", () => {
    conn.connect();
    last().drop(1006);
    timers.advance(500);
    last().drop(1006);
    const old = last();
    conn.reconnectNow();
    assert.equal(FakeSocket.made.length, 3);
    assert.equal(timers.count(), 1, "the pending retry is cancelled; only the connect timeout is left");
    conn.reconnectNow();
    assert.equal(FakeSocket.made[2].closed, true, "the socket being replaced is closed");
    assert.equal(FakeSocket.made[2].onclose, null, "and can no longer report");
    assert.equal(old.closed, false);
    last().drop(1006);
    assert.deepEqual(log.at(-1), ["retry", { attempt: 1, delayMs: 500 }]);
  });

  test("a socket that never opens is closed after the connect timeout", () => {
    conn.connect();
    const s = last();
    timers.advance(CONNECT_TIMEOUT_MS - 1);
    assert.equal(s.closed, false);
    timers.advance(1);
    assert.equal(s.closed, true);
  });

  test("an opened socket is not timed out", () => {
    conn.connect();
    last().open();
    timers.advance(CONNECT_TIMEOUT_MS * 2);
    assert.equal(last().closed, false);
  });

  test("a URL that cannot be opened is an error, then a retry", () => {
    FakeSocket.failNext = true;
    conn.connect();
    assert.deepEqual(log, [["connecting"], ["error", "Cannot open ws://127.0.0.1:8765/ws: bad URL"], ["retry", { attempt: 1, delayMs: 500 }]]);
    timers.advance(500);
    assert.equal(FakeSocket.made.length, 1);
  });
});
