"""The daemon's one port: WebSocket protocol v1 on ``/ws``; dashboard, ``/healthz`` and ``/metrics`` over HTTP.

Owns clients and what they may do. Every connection is checked before it gets
anything: the Host header (a loopback-bound daemon answers only to loopback
names, which defeats DNS rebinding), the Origin (the served page's own origin
or ``server.allowed_origins``; clients that send no Origin are not browsers),
the token when one is set (``?token=`` or an ``Authorization: Bearer`` header),
and the client limit; a request whose headers cannot be read unambiguously
(a duplicate Host, Authorization or Origin, an unparsable Host) gets 400.
``/healthz`` and ``/metrics`` need the token too, and ``/healthz`` names no
file or device.

Every protocol rule lives in :class:`realtime.protocol.Session` (no I/O); this
module only moves bytes: it feeds each message to the client's session and
carries out the :class:`~realtime.protocol.Outcome`. Each client has one
:class:`~realtime.queues.BoundedQueue` as its outbox, drained by its own task:
its own stream's predictions and control messages are served and kept ahead
of other streams', ``streams`` updates are coalesced (the latest wins), a
client that reads too slowly loses its oldest predictions (counted), and one
whose queue fills with messages that cannot be dropped is closed. Nothing a
client sends can raise out of its handler.

Built on ``websockets.asyncio.server.serve`` with ``process_request`` for the
HTTP routes, so one port serves both.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hmac
import json
import logging
import mimetypes
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from realtime import protocol
from realtime.admission import Admission
from realtime.config import ServerConfig, is_loopback_host, section
from realtime.metrics import DaemonMetrics
from realtime.protocol import Close, Limits, Outcome, ProtocolError, Session
from realtime.queues import BoundedQueue

log = logging.getLogger("ser-listen")

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
}
PLACEHOLDER_PAGE = """<!doctype html><html lang="en"><meta charset="utf-8"><title>ser-listen</title>
<h1>ser-listen</h1><p>The dashboard is not installed. The daemon is running: connect a
WebSocket client to <code>/ws</code> (protocol v1), or read <a href="healthz">/healthz</a> and
<a href="metrics">/metrics</a>.</p></html>
"""


def dashboard_dir() -> Path:
    return Path(str(resources.files("realtime") / "dashboard"))


class DaemonAPI(Protocol):
    """What the server needs from the daemon (kept narrow so tests and the daemon agree)."""

    def model_info(self) -> dict[str, Any]: ...
    def stream_list(self) -> list[dict[str, Any]]: ...
    def health(self) -> dict[str, Any]: ...
    def open_remote_stream(self, sample_rate: int, channels: int, encoding: str, owner: str | None = None) -> Any: ...
    async def feed_remote_stream(self, stream: Any, frames: Any) -> None: ...
    def close_remote_stream(self, stream: Any) -> None: ...

    identity: dict[str, str]  # who answers where several do (a Ray Serve replica's deployment and tag); empty alone


class Connection(Protocol):
    """What the server uses of a WebSocket connection: python-websockets' ``ServerConnection`` has it all.

    ``transport`` may be None where the socket is not ours to abort (behind
    Ray Serve's proxy); iteration yields each message (str or bytes) and ends,
    or raises ``websockets.exceptions.ConnectionClosed``, when the peer goes.
    """

    state: Any
    transport: Any

    async def send(self, message: str) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...
    def __aiter__(self) -> Any: ...


class ServerSettings:
    """The server's view of the typed config's ``server`` section: that section itself (``ServerConfig``, which
    owns every key, default and check), read through, with the token and the allowed origins in the form the
    checks compare (no token: None; origins without a trailing slash)."""

    def __init__(self, server: Any) -> None:
        self.config: ServerConfig = section(server, ServerConfig)
        token = self.config.token
        self.token: str | None = str(token) if token not in (None, "") else None
        self.allowed_origins: tuple[str, ...] = tuple(str(o).rstrip("/") for o in (self.config.allowed_origins or []))

    @classmethod
    def from_config(cls, s: Any) -> ServerSettings:
        """The ``server`` section of the daemon config; types and ranges are checked once, by realtime.config."""
        return cls(s)

    def __getattr__(self, name: str) -> Any:  # every other key, as the config has it
        if name == "config":
            raise AttributeError(name)
        return getattr(self.config, name)

    def limits(self) -> Limits:
        """A connection's budgets: a view of the same section (``hello`` advertises them)."""
        return Limits(self.config)


# ---------------------------------------------------------------- HTTP requests, read once


class BadRequest(Exception):
    """Headers that cannot be read unambiguously: answered 400, never 500 or a traceback."""


@dataclass(frozen=True)
class RequestInfo:
    """What the checks need from a request, parsed once: any ambiguity was a :class:`BadRequest`."""

    path: str
    host: str  # the Host header as sent ("" when absent)
    host_name: str  # its name, without port or IPv6 brackets
    origin: str | None
    token: str | None  # from ?token=, Authorization: Bearer, or X-Ser-Token


def _one_header(request: Request, name: str) -> str | None:
    values = request.headers.get_all(name)
    if len(values) > 1:
        raise BadRequest(f"more than one {name} header")
    return values[0] if values else None


def inspect_request(request: Request) -> RequestInfo:
    """Parse the path, Host, Origin and token of a request; BadRequest when any is duplicated or malformed."""
    try:
        target = urlsplit(request.path)
        query = parse_qs(target.query, max_num_fields=64)
    except ValueError as exc:
        raise BadRequest(f"bad request target: {exc}") from None
    host = _one_header(request, "Host") or ""
    try:
        parts = urlsplit("//" + host)
        host_name = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise BadRequest("malformed Host header") from None
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        raise BadRequest("malformed Host header")
    origin = _one_header(request, "Origin")
    tokens = query.get("token", [])
    if len(tokens) > 1:
        raise BadRequest("more than one token parameter")
    token = tokens[0] if tokens else None
    auth = _one_header(request, "Authorization")
    if token is None and auth is not None and auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    header_token = _one_header(request, "X-Ser-Token")
    return RequestInfo(target.path, host, host_name, origin, token or header_token)


@dataclass(frozen=True)
class HttpAnswer:
    """An HTTP answer as data (status, body, type), so every I/O shell sends the same one."""

    status: HTTPStatus
    body: bytes
    content_type: str

    @classmethod
    def text(cls, status: HTTPStatus, text: str) -> HttpAnswer:
        return cls(status, text.encode(), CONTENT_TYPES[".txt"])

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("Content-Length", str(len(self.body))),
            ("Content-Type", self.content_type),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
        ]

    def response(self) -> Response:
        """As python-websockets' HTTP response (the daemon's own port)."""
        status = HTTPStatus(self.status)
        headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"), *self.headers()])
        return Response(status.value, status.phrase, headers, self.body)


STREAM_FIELDS_PUBLIC = ("id", "kind", "sample_rate", "channels")
REDACTED_KEYS = frozenset({"path", "file", "filename", "device_name", "source_name"})


def public_health(state: dict[str, Any]) -> dict[str, Any]:
    """The daemon's state as /healthz shows it: streams by id and kind only; no file paths or device names.

    Streams keep only :data:`STREAM_FIELDS_PUBLIC` (their ``source`` names a file or a device);
    anywhere else, a key that names a file or a device (:data:`REDACTED_KEYS`) is left out.
    """

    def scrub(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: scrub(x) for k, x in v.items() if k not in REDACTED_KEYS}
        if isinstance(v, list):
            return [scrub(x) for x in v]
        return v

    out = scrub({k: v for k, v in state.items() if k != "streams"})
    if "streams" in state:
        out["streams"] = [{k: s[k] for k in STREAM_FIELDS_PUBLIC if k in s} for s in state["streams"]]
    return out


# ---------------------------------------------------------------- clients

DRAIN_STALL_S = 0.1  # a closing client that takes no message for this long is not reading: stop waiting for it
STREAMS_UPDATE_INTERVAL_S = 0.25  # `streams` messages go out at most this often (the latest list)
POLICY_CLOSE_WAIT_S = 0.25  # a client closed for breaking a rule gets this long to answer the close, then is dropped
SHUTDOWN_CLOSE_WAIT_S = 0.25  # on shutdown, the wait for closing handshakes before connections are dropped
PRIVATE_PATHS = frozenset({"/healthz", "/metrics"})  # routes that need the token (when one is set); the page is public
CONTROL_KEY = "control"  # outbox key of replies, errors and stream-list updates
OWN, OTHERS = 0, 1  # outbox priority classes: this client's stream and control first, others' predictions after


@dataclass
class Client:
    """One connection: its protocol session (every rule), its stream object and its bounded outbox."""

    ws: Connection
    id: int
    session: Session
    outbox: BoundedQueue[str]
    stream: Any = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    sent: int = 0
    closing: bool = False


class Server:
    """WebSocket + HTTP on one port; ``publish`` fans predictions out to subscribers."""

    def __init__(
        self,
        settings: ServerSettings,
        daemon: DaemonAPI,
        metrics: DaemonMetrics,
        static_dir: Path | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.settings = settings
        # client slots here, remote-stream slots in the daemon: one object counts both (the daemon passes its own)
        self.admission = admission if admission is not None else Admission(settings.max_clients, 0)
        self.limits = settings.limits()
        self.daemon = daemon
        self.metrics = metrics
        self.static_dir = static_dir if static_dir is not None else dashboard_dir()
        self.clients: dict[int, Client] = {}
        self._next_id = 1
        self._ws_server: WsServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams_pending: dict[str, Any] | None = None
        self._streams_timer: asyncio.TimerHandle | None = None
        self._streams_sent_at = float("-inf")
        self.port = settings.port
        self.started_at = time.monotonic()
        self.on_client_count: Callable[[int], None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        """Bind and serve; returns the bound port (``port=0`` picks a free one)."""
        s = self.settings
        self._ws_server = await serve(
            self._handle,
            s.host,
            s.port,
            process_request=lambda _connection, request: self._process_request(request),
            max_size=s.max_message_bytes * max(1, s.hard_max_message_factor),
            max_queue=16,
            ping_interval=s.ping_interval_s,
            close_timeout=s.close_timeout_s,
            compression=None,  # predictions are small; deflate would cost CPU per client
            server_header="ser-listen",
        )
        sock = next(iter(self._ws_server.sockets))
        self.port = sock.getsockname()[1]
        return self.port

    def _close_all_wait_s(self) -> float:
        """How long ``shutdown`` waits for every client's drain and closing handshake."""
        return self.settings.drain_timeout_s + SHUTDOWN_CLOSE_WAIT_S + 0.1

    def shutdown_budget_s(self) -> float:
        """The most ``shutdown`` takes: the clients' closes, then the listener's (the daemon plans its exit with it)."""
        return self._close_all_wait_s() + SHUTDOWN_CLOSE_WAIT_S

    async def shutdown(self) -> None:
        """Let each client's queued messages go out briefly, close everyone with 1001, drop who does not answer.

        Bounded (``shutdown_budget_s``): at most ``drain_timeout_s`` for queued messages (less for a
        client that is not reading) and ``SHUTDOWN_CLOSE_WAIT_S`` for the closing handshakes, whatever
        the clients do.
        """
        if self._ws_server is not None:
            self._ws_server.server.close()  # no new connections (an embedding shell stops its own listener)
        if self._streams_timer is not None:
            self._streams_timer.cancel()
            self._flush_streams()
        clients = list(self.clients.values())
        if clients:
            await asyncio.wait(
                [asyncio.create_task(self._close(c, protocol.SHUTTING_DOWN, handshake_s=SHUTDOWN_CLOSE_WAIT_S)) for c in clients],
                timeout=self._close_all_wait_s(),
            )
        for c in clients:
            if c.ws.transport is not None and c.ws.state.name != "CLOSED":
                c.ws.transport.abort()
        if self._ws_server is None:
            return
        self._ws_server.close(close_connections=True)
        try:
            await asyncio.wait_for(self._ws_server.wait_closed(), timeout=SHUTDOWN_CLOSE_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("some connections did not close in time")

    # ------------------------------------------------------------ HTTP

    def _host_ok(self, info: RequestInfo) -> bool:
        """A loopback-bound daemon answers only to loopback Host names (DNS-rebinding defence)."""
        if not is_loopback_host(self.settings.host):
            return True
        name = info.host_name
        return is_loopback_host(name) or any(urlsplit(o).hostname == name for o in self.settings.allowed_origins)

    def _token_ok(self, info: RequestInfo) -> bool:
        want = self.settings.token
        if want is None:
            return True
        return info.token is not None and hmac.compare_digest(info.token.encode(), want.encode())

    def origin_ok(self, info: RequestInfo) -> bool:
        """No Origin (not a browser), the page's own origin, or one listed in server.allowed_origins."""
        if info.origin is None:
            return True
        origin = info.origin.rstrip("/")
        if origin in (f"http://{info.host}", f"https://{info.host}"):
            return True
        return origin in self.settings.allowed_origins

    def refusal(self, info: RequestInfo, private: bool) -> HttpAnswer | None:
        """403 for a Host this daemon does not answer to, 401 for a ``private`` route without the token; None: go on.

        The one gate of every HTTP route, this server's own and those another
        shell adds beside them (the Ray Serve ingress's ``/metrics/encoder``).
        """
        if not self._host_ok(info):
            self.metrics.connections_refused.inc(1, "forbidden_host")
            return HttpAnswer.text(HTTPStatus.FORBIDDEN, "forbidden Host header\n")
        if private and not self._token_ok(info):
            self.metrics.connections_refused.inc(1, "unauthorized")
            return HttpAnswer.text(HTTPStatus.UNAUTHORIZED, "token required\n")
        return None

    def answer_http(self, info: RequestInfo) -> HttpAnswer | None:
        """The answer to a plain HTTP request, whatever serves the socket (None: ``/ws``, the WebSocket handshake).

        The Host, token and route rules live here once, for the daemon's own port
        (``_process_request``) and for the Ray Serve ingress (``realtime.cluster``).
        """
        path = info.path
        refused = self.refusal(info, private=path in PRIVATE_PATHS)
        if refused is not None:
            return refused
        if path == "/ws":
            return None  # the WebSocket handshake; origin and token are checked in serve_connection, with an error message
        if path == "/healthz":
            return self._health()
        if path == "/metrics":
            self.metrics.uptime.set(time.monotonic() - self.started_at)
            return HttpAnswer(HTTPStatus.OK, self.metrics.render().encode(), CONTENT_TYPE_LATEST)
        name = "index.html" if path == "/" else path[1:]
        return self._static(name)

    def _process_request(self, request: Request) -> Response | None:
        """python-websockets' ``process_request``: the HTTP answer, or None to go on with the WebSocket handshake."""
        try:
            info = inspect_request(request)
        except BadRequest as exc:
            self.metrics.connections_refused.inc(1, "bad_request")
            return HttpAnswer.text(HTTPStatus.BAD_REQUEST, f"bad request: {exc}\n").response()
        answer = self.answer_http(info)
        return None if answer is None else answer.response()

    def _health(self) -> HttpAnswer:
        """The daemon's own account of its state (200 when ``status`` is ``ok``, else 503), redacted."""
        state = self.daemon.health()
        status = HTTPStatus.OK if state.get("status") == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
        return HttpAnswer(status, json.dumps(public_health(state)).encode(), "application/json")

    def _static(self, name: str) -> HttpAnswer:
        """A file directly inside the dashboard folder, by exact name (no paths, so no traversal)."""
        try:
            names = {p.name for p in self.static_dir.iterdir() if p.is_file()}
        except OSError:
            names = set()
        if name in names and "/" not in name:
            path = self.static_dir / name
            ctype = CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(name)[0] or "application/octet-stream"
            return HttpAnswer(HTTPStatus.OK, path.read_bytes(), ctype)
        if name == "index.html":
            return HttpAnswer(HTTPStatus.OK, PLACEHOLDER_PAGE.encode(), CONTENT_TYPES[".html"])
        return HttpAnswer.text(HTTPStatus.NOT_FOUND, "not found\n")

    # ------------------------------------------------------------ WebSocket

    async def _reject(self, ws: Connection, refusal: Outcome, reason: str) -> None:
        """Turn a connection away before it gets a session: its error, then the close."""
        self.metrics.connections_refused.inc(1, reason)
        for msg in refusal.replies:
            self.metrics.errors_sent.inc(1, msg["code"])
        try:
            for msg in refusal.replies:
                await ws.send(protocol.dumps(msg))
            assert refusal.close is not None
            await ws.close(refusal.close.code, refusal.close.reason)
        except ConnectionClosed:
            pass

    def _bound_send_buffer(self, ws: ServerConnection) -> None:
        """Cap the kernel's send buffer for this client (no autotuning up to megabytes).

        Without it a client that stops reading soaks up thousands of predictions in socket
        buffers, so its bounded queue never fills, it gets stale predictions minutes late, and
        each such client can pin megabytes of kernel memory. With it, back-pressure reaches the
        per-client queue quickly and the oldest predictions are dropped there (and counted).
        """
        n = self.settings.send_buffer_bytes
        sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
        if n > 0 and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, n)

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        info = inspect_request(request)  # already read once by _process_request: cannot fail here
        self._bound_send_buffer(ws)
        await self.serve_connection(ws, info)

    async def serve_connection(self, ws: Connection, info: RequestInfo) -> None:
        """One WebSocket client from its accepted handshake to its end: checks, session, outbox.

        ``ws`` is python-websockets' connection on the daemon's own port, or the
        Ray Serve ingress's adapter of a Starlette WebSocket (``realtime.cluster``):
        both give :class:`Connection`, so every rule is applied by this one method.
        """
        if not self.origin_ok(info):
            refusal = protocol.refusal("unauthorized", f"origin {info.origin} is not allowed (server.allowed_origins)")
            await self._reject(ws, refusal, "unauthorized")
            return
        if not self._token_ok(info):
            refusal = protocol.refusal("unauthorized", "a valid token is required (?token=... or Authorization: Bearer)")
            await self._reject(ws, refusal, "unauthorized")
            return
        busy = self.admission.client_refusal()
        if busy is not None:
            await self._reject(ws, protocol.refusal("server_busy", busy), "server_busy")
            return
        session = Session(self.limits, time.monotonic())
        client = Client(ws, self._next_id, session, BoundedQueue(self.settings.client_queue, order="fifo"))
        self._next_id += 1
        self.clients[client.id] = client
        self.metrics.clients.set(len(self.clients))
        sender = asyncio.create_task(self._sender(client))
        try:
            hello = protocol.hello(self.daemon.model_info(), self.daemon.stream_list(), self._limits(), self.daemon.identity)
            self._enqueue_control(client, protocol.dumps(hello))
            async for message in ws:
                if client.closing:  # a close is under way (its code, after the drain): ignore, do not end early
                    continue
                if not await self._on_message(client, message):
                    break
        except ConnectionClosed:
            pass
        except Exception:  # never let one client's bad luck reach the others
            log.exception("client %d: unexpected error", client.id)
        finally:
            self.clients.pop(client.id, None)
            self.admission.client_left()
            self.metrics.clients.set(len(self.clients))
            if client.stream is not None:
                stream, client.stream = client.stream, None
                self.daemon.close_remote_stream(stream)
            sender.cancel()

    def _limits(self) -> dict[str, Any]:
        return {**self.limits.advertised(), "max_clients": self.admission.max_clients}

    async def _on_message(self, client: Client, message: str | bytes) -> bool:
        """Feed one message to the session and carry out its outcome; False ends the connection."""
        outcome = client.session.receive(message, time.monotonic())
        if outcome.start is not None:
            req = outcome.start
            self._send_replies(client, outcome)
            try:
                client.stream = self.daemon.open_remote_stream(
                    req.sample_rate, req.channels, req.encoding, owner=f"client-{client.id}"
                )
            except ProtocolError as exc:
                outcome = client.session.start_refused(exc)
            else:
                outcome = client.session.stream_opened(client.stream.id)
        elif outcome.stop is not None:
            stream, client.stream = client.stream, None
            if stream is not None:
                self.daemon.close_remote_stream(stream)
        elif outcome.audio is not None and client.stream is not None:
            await self.daemon.feed_remote_stream(client.stream, outcome.audio)  # DSP off the loop, in order
        reason = next((m["code"] for m in outcome.replies if m["type"] == "error"), "closed")
        self._send_replies(client, outcome)
        if outcome.close is not None:
            self.metrics.clients_closed.inc(1, reason)
            await self._close(client, outcome.close, handshake_s=POLICY_CLOSE_WAIT_S)
            return False
        return not client.closing

    # ------------------------------------------------------------ sending

    def _send_replies(self, client: Client, outcome: Outcome) -> None:
        replies, outcome.replies = outcome.replies, []
        for msg in replies:
            if msg["type"] == "error":
                self.metrics.errors_sent.inc(1, msg["code"])
            self._enqueue_control(client, protocol.dumps(msg))

    def _enqueue_control(self, client: Client, text: str, coalesce: str | None = None) -> None:
        """A message that cannot be dropped; when the outbox is full of them, the client is not reading: close it."""
        r = client.outbox.put(text, CONTROL_KEY, priority=OWN, droppable=False, coalesce=coalesce)
        self._count_drops(client, r.dropped)
        if r.overflow and not client.closing:
            self.metrics.clients_closed.inc(1, "not_reading")
            client.closing = True  # at once: more overflows before the close task runs are the same close
            self._spawn(self._close(client, protocol.NOT_READING, drain=False, handshake_s=POLICY_CLOSE_WAIT_S))
            return
        client.wakeup.set()

    def _count_drops(self, client: Client, dropped: list[tuple[str, str]]) -> None:
        n = sum(1 for _, reason in dropped if reason in ("evicted", "rejected"))
        if n:
            client.dropped += n
            self.metrics.client_dropped.inc(n)

    def publish(self, stream_id: str, text: str) -> None:
        """Send one prediction (already serialised) to every client that wants this stream."""
        for client in list(self.clients.values()):
            if client.closing or not client.session.wants(stream_id):
                continue
            prio = OWN if client.session.owns(stream_id) else OTHERS
            r = client.outbox.put(text, stream_id, priority=prio, droppable=True)
            self._count_drops(client, r.dropped)
            if r.accepted:
                client.wakeup.set()

    def broadcast(self, msg: dict[str, Any]) -> None:
        """A control message to every client (event loop only).

        ``streams`` updates are rate-limited: the first goes at once, then at most one every
        ``STREAMS_UPDATE_INTERVAL_S``, carrying the latest list; and at most one is pending per
        client. Stream churn (clients that start, stop, vanish) would otherwise cost a message
        per change per client.
        """
        if msg.get("type") != "streams":
            self._send_all(protocol.dumps(msg))
            return
        self._streams_pending = msg
        if self._streams_timer is not None:
            return
        delay = self._streams_sent_at + STREAMS_UPDATE_INTERVAL_S - time.monotonic()
        if delay <= 0:
            self._flush_streams()
        else:
            self._streams_timer = asyncio.get_running_loop().call_later(delay, self._flush_streams)

    def _flush_streams(self) -> None:
        self._streams_timer = None
        msg, self._streams_pending = self._streams_pending, None
        if msg is not None:
            self._streams_sent_at = time.monotonic()
            self._send_all(protocol.dumps(msg), coalesce="streams")

    def _send_all(self, text: str, coalesce: str | None = None) -> None:
        for client in list(self.clients.values()):
            if not client.closing:
                self._enqueue_control(client, text, coalesce=coalesce)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sender(self, client: Client) -> None:
        try:
            while True:
                await client.wakeup.wait()
                client.wakeup.clear()
                while (text := client.outbox.get_nowait()) is not None:
                    await client.ws.send(text)
                    client.sent += 1
        except (ConnectionClosed, asyncio.CancelledError):
            pass

    async def _drain(self, client: Client, timeout: float) -> None:
        """Wait (bounded) for the outbox to empty; give up early on a client that takes nothing."""
        deadline = time.monotonic() + timeout
        last, idle_since = client.sent, time.monotonic()
        while client.outbox and client.ws.state.name == "OPEN":
            now = time.monotonic()
            if client.sent != last:
                last, idle_since = client.sent, now
            if now >= deadline or now - idle_since > DRAIN_STALL_S:
                return
            await asyncio.sleep(0.01)

    async def _close(self, client: Client, close: Close, drain: bool = True, handshake_s: float | None = None) -> None:
        """Let the queued messages go out (bounded), then close; a client that does not read is closed at once.

        A client that has not answered the close within ``handshake_s`` (default
        ``close_timeout_s``) is dropped, so one that keeps sending (a flood already over its
        budget) costs no more reading, and one that never reads cannot hold its close open.
        """
        client.closing = True
        if drain:
            await self._drain(client, self.settings.drain_timeout_s)
        wait = handshake_s if handshake_s is not None else self.settings.close_timeout_s
        try:  # bounded: sending the close frame itself waits while a non-reader's buffers are full
            await asyncio.wait_for(client.ws.close(close.code, close.reason), wait)
        except ConnectionClosed:
            pass
        except asyncio.TimeoutError:  # no closing handshake in time: stop reading what it still sends
            if client.ws.transport is not None:
                client.ws.transport.abort()
