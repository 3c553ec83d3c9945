"""The daemon's one port: WebSocket protocol v1 on ``/ws``; dashboard, ``/healthz`` and ``/metrics`` over HTTP.

Owns clients and what they may do. Every connection is checked before it gets
anything: the Host header (a loopback-bound daemon answers only to loopback
names, which defeats DNS rebinding), the Origin (the served page's own origin
or ``server.allowed_origins``; clients that send no Origin are not browsers),
the token when one is set (``?token=`` or an ``Authorization: Bearer`` header),
and the client limit. Each client then has a bounded send queue drained by its
own task: a client that reads too slowly loses its oldest predictions
(counted), never anyone else's. Limits on message size and message rate end a
misbehaving connection with an ``error`` and a clean close; malformed messages
and audio frames only earn an ``error``. Nothing a client sends can raise out
of its handler.

Built on ``websockets.asyncio.server.serve`` with ``process_request`` for the
HTTP routes, so one port serves both.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hmac
import ipaddress
import json
import logging
import mimetypes
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from realtime import protocol
from realtime.metrics import DaemonMetrics
from realtime.protocol import ProtocolError

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
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
PLACEHOLDER_PAGE = """<!doctype html><html lang="en"><meta charset="utf-8"><title>ser-listen</title>
<h1>ser-listen</h1><p>The dashboard is not installed. The daemon is running: connect a
WebSocket client to <code>/ws</code> (protocol v1), or read <a href="healthz">/healthz</a> and
<a href="metrics">/metrics</a>.</p></html>
"""


def dashboard_dir() -> Path:
    return Path(str(resources.files("realtime") / "dashboard"))


def is_loopback_host(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DaemonAPI(Protocol):
    """What the server needs from the daemon (kept narrow so tests and the daemon agree)."""

    def model_info(self) -> dict[str, Any]: ...
    def stream_list(self) -> list[dict[str, Any]]: ...
    def health(self) -> dict[str, Any]: ...
    def open_remote_stream(self, sample_rate: int, channels: int, encoding: str) -> Any: ...
    def close_remote_stream(self, stream: Any) -> None: ...


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    max_clients: int = 64
    max_message_bytes: int = 1 << 20
    hard_max_message_factor: int = 4
    max_messages_per_s: float = 200.0
    client_queue: int = 64
    send_buffer_bytes: int = 65536
    max_audio_realtime_factor: float = 1.5
    max_audio_burst_s: float = 10.0
    close_timeout_s: float = 1.0
    drain_timeout_s: float = 0.5
    ping_interval_s: float = 20.0

    @classmethod
    def from_config(cls, s: Any) -> ServerSettings:
        return cls(
            host=str(s.host),
            port=int(s.port),
            token=str(s.token) if s.token not in (None, "") else None,
            allowed_origins=tuple(str(o).rstrip("/") for o in (s.allowed_origins or [])),
            max_clients=int(s.max_clients),
            max_message_bytes=int(s.max_message_bytes),
            hard_max_message_factor=int(s.hard_max_message_factor),
            max_messages_per_s=float(s.max_messages_per_s),
            client_queue=int(s.client_queue),
            send_buffer_bytes=int(s.send_buffer_bytes),
            max_audio_realtime_factor=float(s.max_audio_realtime_factor),
            max_audio_burst_s=float(s.max_audio_burst_s),
            close_timeout_s=float(s.close_timeout_s),
            drain_timeout_s=float(s.drain_timeout_s),
            ping_interval_s=float(s.ping_interval_s),
        )


@dataclass
class Client:
    """One connection: its subscriptions, its stream, its bounded outbox and its rate bucket."""

    ws: ServerConnection
    id: int
    settings: ServerSettings
    subscriptions: set[str] | None = field(default_factory=set)  # None: every stream
    stream: Any = None
    encoding: str = ""
    channels: int = 1
    outbox: deque[tuple[bool, str]] = field(default_factory=deque)  # (droppable, text)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    tokens: float = 0.0
    last_refill: float = field(default_factory=time.monotonic)
    dropped: int = 0
    closing: bool = False
    audio_s: float = 0.0  # seconds of audio received on the current stream
    stream_started: float = 0.0

    def audio_allowed(self, seconds: float) -> bool:
        """A remote stream may run ahead of real time only by a burst, so one client cannot starve the engine."""
        self.audio_s += seconds
        elapsed = time.monotonic() - self.stream_started
        return self.audio_s <= elapsed * self.settings.max_audio_realtime_factor + self.settings.max_audio_burst_s

    def wants(self, stream_id: str) -> bool:
        return self.subscriptions is None or stream_id in self.subscriptions or (
            self.stream is not None and self.stream.id == stream_id
        )

    def take_token(self) -> bool:
        """Token bucket: ``max_messages_per_s`` per second with a one-second burst."""
        rate = self.settings.max_messages_per_s
        now = time.monotonic()
        self.tokens = min(rate, self.tokens + (now - self.last_refill) * rate)
        self.last_refill = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Server:
    """WebSocket + HTTP on one port; ``publish`` fans predictions out to subscribers."""

    def __init__(self, settings: ServerSettings, daemon: DaemonAPI, metrics: DaemonMetrics, static_dir: Path | None = None) -> None:
        self.settings = settings
        self.daemon = daemon
        self.metrics = metrics
        self.static_dir = static_dir if static_dir is not None else dashboard_dir()
        self.clients: dict[int, Client] = {}
        self._next_id = 1
        self._ws_server: WsServer | None = None
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
            process_request=self._process_request,
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

    async def shutdown(self) -> None:
        """Let each client's queued messages go out briefly, then close everyone with 1001."""
        if self._ws_server is None:
            return
        self._ws_server.server.close()  # no new connections
        clients = list(self.clients.values())
        if clients:
            await asyncio.wait(
                [asyncio.create_task(self._close(c, 1001, "ser-listen is shutting down")) for c in clients],
                timeout=self.settings.drain_timeout_s + self.settings.close_timeout_s + 0.5,
            )
        self._ws_server.close(close_connections=True)
        try:
            await asyncio.wait_for(self._ws_server.wait_closed(), timeout=self.settings.close_timeout_s + 0.5)
        except asyncio.TimeoutError:
            log.warning("some connections did not close in time")

    # ------------------------------------------------------------ HTTP

    def _host_ok(self, request: Request) -> bool:
        """A loopback-bound daemon answers only to loopback Host names (DNS-rebinding defence)."""
        if not is_loopback_host(self.settings.host):
            return True
        host = request.headers.get("Host", "")
        name = urlsplit("//" + host).hostname or ""
        return is_loopback_host(name) or any(urlsplit(o).hostname == name for o in self.settings.allowed_origins)

    def _token_ok(self, request: Request) -> bool:
        want = self.settings.token
        if want is None:
            return True
        given = parse_qs(urlsplit(request.path).query).get("token", [None])[0]
        auth = request.headers.get("Authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        given = given or request.headers.get("X-Ser-Token")
        return given is not None and hmac.compare_digest(given.encode(), want.encode())

    def origin_ok(self, request: Request) -> bool:
        """No Origin (not a browser), the page's own origin, or one listed in server.allowed_origins."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        origin = origin.rstrip("/")
        host = request.headers.get("Host", "")
        if origin in (f"http://{host}", f"https://{host}"):
            return True
        return origin in self.settings.allowed_origins

    @staticmethod
    def _response(conn: ServerConnection, status: int, body: bytes, content_type: str) -> Response:
        status = HTTPStatus(status)
        headers = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Length", str(len(body))),
                ("Content-Type", content_type),
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
            ]
        )
        return Response(status.value, status.phrase, headers, body)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if not self._host_ok(request):
            return self._response(conn, HTTPStatus.FORBIDDEN, b"forbidden Host header\n", CONTENT_TYPES[".txt"])
        if path == "/ws":
            return None  # the WebSocket handshake; origin and token are checked in _handle, with an error message
        if path == "/healthz":
            body = json.dumps(self.daemon.health()).encode()
            return self._response(conn, HTTPStatus.OK, body, "application/json")
        if path == "/metrics":
            if not self._token_ok(request):
                return self._response(conn, HTTPStatus.UNAUTHORIZED, b"token required\n", CONTENT_TYPES[".txt"])
            self.metrics.uptime.set(time.monotonic() - self.started_at)
            return self._response(conn, HTTPStatus.OK, self.metrics.registry.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
        name = "index.html" if path == "/" else path[1:]
        return self._static(conn, name)

    def _static(self, conn: ServerConnection, name: str) -> Response:
        """A file directly inside the dashboard folder, by exact name (no paths, so no traversal)."""
        try:
            names = {p.name for p in self.static_dir.iterdir() if p.is_file()}
        except OSError:
            names = set()
        if name in names and "/" not in name:
            path = self.static_dir / name
            ctype = CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(name)[0] or "application/octet-stream"
            return self._response(conn, HTTPStatus.OK, path.read_bytes(), ctype)
        if name == "index.html":
            return self._response(conn, HTTPStatus.OK, PLACEHOLDER_PAGE.encode(), CONTENT_TYPES[".html"])
        return self._response(conn, HTTPStatus.NOT_FOUND, b"not found\n", CONTENT_TYPES[".txt"])

    # ------------------------------------------------------------ WebSocket

    async def _reject(self, ws: ServerConnection, code: str, message: str, close_code: int) -> None:
        self.metrics.errors_sent.inc(1, code)
        try:
            await ws.send(protocol.dumps(protocol.error(code, message)))
            await ws.close(close_code, message[:120])
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
        if not self.origin_ok(request):
            origin = request.headers.get("Origin")
            await self._reject(ws, "unauthorized", f"origin {origin} is not allowed (server.allowed_origins)", 1008)
            return
        if not self._token_ok(request):
            await self._reject(ws, "unauthorized", "a valid token is required (?token=... or Authorization: Bearer)", 1008)
            return
        if len(self.clients) >= self.settings.max_clients:
            await self._reject(ws, "server_busy", f"too many clients (server.max_clients={self.settings.max_clients})", 1013)
            return
        self._bound_send_buffer(ws)
        client = Client(ws, self._next_id, self.settings, tokens=self.settings.max_messages_per_s)
        self._next_id += 1
        self.clients[client.id] = client
        self.metrics.clients.set(len(self.clients))
        sender = asyncio.create_task(self._sender(client))
        try:
            self._enqueue(client, protocol.hello(self.daemon.model_info(), self.daemon.stream_list(), self._limits()))
            async for message in ws:
                if client.closing:
                    break
                if not await self._on_message(client, message):
                    break
        except ConnectionClosed:
            pass
        except Exception:  # never let one client's bad luck reach the others
            log.exception("client %d: unexpected error", client.id)
        finally:
            self.clients.pop(client.id, None)
            self.metrics.clients.set(len(self.clients))
            if client.stream is not None:
                stream, client.stream = client.stream, None
                self.daemon.close_remote_stream(stream)
            sender.cancel()

    def _limits(self) -> dict[str, Any]:
        s = self.settings
        return {
            "max_message_bytes": s.max_message_bytes,
            "max_messages_per_s": s.max_messages_per_s,
            "max_clients": s.max_clients,
        }

    async def _on_message(self, client: Client, message: str | bytes) -> bool:
        """Handle one message; False ends the connection (after a clean close)."""
        if not client.take_token():
            self._error(client, "rate_limited", f"more than {self.settings.max_messages_per_s:g} messages per second")
            await self._close(client, 1008, "rate limit exceeded")
            return False
        if len(message) > self.settings.max_message_bytes:
            self._error(client, "message_too_large", f"{len(message)} bytes exceeds the limit of {self.settings.max_message_bytes}")
            await self._close(client, 1009, "message too large")
            return False
        try:
            if isinstance(message, bytes):
                if not self._on_audio(client, message):
                    await self._close(client, 1008, "audio faster than real time")
                    return False
            else:
                self._on_text(client, protocol.parse_client_message(message))
        except ProtocolError as exc:
            self._error(client, exc.code, exc.message)
        return True

    def _on_text(self, client: Client, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "subscribe":
            sel = msg["streams"]
            client.subscriptions = None if sel == "*" else set(sel)
            self._enqueue(client, protocol.subscribed(sel))
        elif kind == "start":
            if client.stream is not None:
                raise ProtocolError("config_invalid", f"stream {client.stream.id} is already started; send stop first")
            stream = self.daemon.open_remote_stream(msg["sample_rate"], msg["channels"], msg["encoding"])
            client.stream, client.encoding, client.channels = stream, msg["encoding"], msg["channels"]
            client.audio_s, client.stream_started = 0.0, time.monotonic()
            self._enqueue(client, protocol.started(stream.id))
        elif kind == "stop":
            if client.stream is None:
                raise ProtocolError("bad_message", "stop: no stream is started on this connection")
            stream, client.stream = client.stream, None
            # Keep receiving this stream's final predictions, which arrive after the stop.
            if client.subscriptions is not None:
                client.subscriptions.add(stream.id)
            self.daemon.close_remote_stream(stream)
            self._enqueue(client, protocol.stopped(stream.id))

    def _on_audio(self, client: Client, frame: bytes) -> bool:
        """Decode and feed one PCM frame; False when the client sends audio much faster than real time."""
        if client.stream is None:
            raise ProtocolError("invalid_audio_frame", "binary audio before start: send a start message first")
        frames = protocol.decode_pcm(frame, client.encoding, client.channels)
        if not client.audio_allowed(len(frames) / client.stream.input_rate):
            s = self.settings
            self._error(
                client,
                "rate_limited",
                f"audio arrives faster than {s.max_audio_realtime_factor:g}x real time (after a {s.max_audio_burst_s:g} s burst)",
            )
            return False
        client.stream.push(frames)
        return True

    # ------------------------------------------------------------ sending

    def _error(self, client: Client, code: str, message: str) -> None:
        self.metrics.errors_sent.inc(1, code)
        self._enqueue(client, protocol.error(code, message))

    def _enqueue(self, client: Client, msg: dict[str, Any] | str, droppable: bool = False) -> None:
        text = msg if isinstance(msg, str) else protocol.dumps(msg)
        box = client.outbox
        if len(box) >= self.settings.client_queue:
            for i, (can_drop, _) in enumerate(box):
                if can_drop:
                    del box[i]
                    client.dropped += 1
                    self.metrics.client_dropped.inc()
                    break
            else:
                if droppable:  # nothing droppable queued: drop the newcomer instead
                    client.dropped += 1
                    self.metrics.client_dropped.inc()
                    return
        box.append((droppable, text))
        client.wakeup.set()

    def publish(self, stream_id: str, text: str) -> None:
        """Send one prediction (already serialised) to every client that wants this stream."""
        for client in self.clients.values():
            if not client.closing and client.wants(stream_id):
                self._enqueue(client, text, droppable=True)

    def broadcast(self, msg: dict[str, Any]) -> None:
        text = protocol.dumps(msg)
        for client in self.clients.values():
            if not client.closing:
                self._enqueue(client, text)

    async def _sender(self, client: Client) -> None:
        try:
            while True:
                await client.wakeup.wait()
                client.wakeup.clear()
                while client.outbox:
                    _, text = client.outbox.popleft()
                    await client.ws.send(text)
        except (ConnectionClosed, asyncio.CancelledError):
            pass

    async def _drain(self, client: Client, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while client.outbox and time.monotonic() < deadline and client.ws.state.name == "OPEN":
            await asyncio.sleep(0.01)

    async def _close(self, client: Client, code: int, reason: str) -> None:
        client.closing = True
        await self._drain(client, self.settings.drain_timeout_s)
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close(code, reason)
