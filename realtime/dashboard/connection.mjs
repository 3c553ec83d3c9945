// ser dashboard: the WebSocket to the daemon, reopened with jittered exponential backoff.
// It knows nothing of the protocol: it reports what happens to the socket through the
// handlers and parses text frames as JSON; app.mjs turns those reports into reducer events.

export const BACKOFF_MIN_MS = 500;
export const BACKOFF_MAX_MS = 5000;
export const CONNECT_TIMEOUT_MS = 6000;

/** Delay before the attempt-th retry (1, 2, ...): 0.5, 1, 2, 4, 5, 5... s, each ±20 % by `random` in [0, 1). */
export function backoffDelay(attempt, random) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, attempt - 1));
  return Math.round(base * (0.8 + 0.4 * random));
}

/** The daemon's /ws next to the page (a relative URL, so a path prefix works), or ?ws=...; ?token=... is carried. */
export function wsUrl(href, params) {
  if (params.get("ws")) return params.get("ws");
  const base = new URL("ws", href);
  let url = (base.protocol === "https:" ? "wss:" : "ws:") + "//" + base.host + base.pathname;
  if (params.get("token")) url += "?token=" + encodeURIComponent(params.get("token"));
  return url;
}

/**
 * One logical connection that keeps reopening its socket.
 * handlers: onConnecting(), onMessage(value), onClose({code, reason}), onError(text), onRetry({attempt, delayMs}).
 * deps (for tests): WebSocket, setTimeout, clearTimeout, random.
 */
export function createConnection(url, handlers, deps = {}) {
  const WS = deps.WebSocket || globalThis.WebSocket;
  const setTimer = deps.setTimeout || globalThis.setTimeout;
  const clearTimer = deps.clearTimeout || globalThis.clearTimeout;
  const random = deps.random || Math.random;
  let ws = null;
  let attempt = 0; // failed attempts since the last connected()
  let retryTimer = null;
  let connectTimer = null;

  function scheduleRetry() {
    attempt += 1;
    const delayMs = backoffDelay(attempt, random());
    clearTimer(retryTimer);
    retryTimer = setTimer(connect, delayMs);
    handlers.onRetry({ attempt, delayMs });
  }

  function connect() {
    clearTimer(retryTimer);
    retryTimer = null;
    if (ws) {
      ws.onopen = ws.onclose = ws.onerror = ws.onmessage = null;
      try {
        ws.close();
      } catch (e) {
        /* already closed */
      }
      ws = null;
    }
    handlers.onConnecting();
    let sock;
    try {
      sock = new WS(url);
    } catch (e) {
      handlers.onError("Cannot open " + url + ": " + e.message);
      scheduleRetry();
      return;
    }
    ws = sock;
    sock.binaryType = "arraybuffer";
    clearTimer(connectTimer);
    connectTimer = setTimer(() => {
      if (sock.readyState === WS.CONNECTING) sock.close();
    }, CONNECT_TIMEOUT_MS);
    sock.onopen = () => clearTimer(connectTimer);
    sock.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let value;
      try {
        value = JSON.parse(event.data);
      } catch (e) {
        console.warn("ser: non-JSON message", event.data);
        return;
      }
      handlers.onMessage(value);
    };
    sock.onclose = (event) => {
      clearTimer(connectTimer);
      if (ws !== sock) return;
      ws = null;
      handlers.onClose({ code: event.code, reason: event.reason || "" });
      scheduleRetry();
    };
    sock.onerror = () => {
      /* onclose follows and handles it */
    };
  }

  const isOpen = () => ws !== null && ws.readyState === WS.OPEN;
  return {
    connect,
    /** Try at once, with the backoff started over (the "Reconnect now" button). */
    reconnectNow() {
      attempt = 0;
      connect();
    },
    /** The daemon said hello: the next failure starts the backoff from its shortest delay. */
    connected() {
      attempt = 0;
    },
    isOpen,
    bufferedAmount: () => (ws ? ws.bufferedAmount : 0),
    /** Send a protocol message (an object, as JSON); false when the socket is not open. */
    send(obj) {
      if (!isOpen()) return false;
      ws.send(JSON.stringify(obj));
      return true;
    },
    /** Send a binary frame (an ArrayBuffer); false when the socket is not open. */
    sendBinary(buffer) {
      if (!isOpen()) return false;
      ws.send(buffer);
      return true;
    },
  };
}
