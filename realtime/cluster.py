"""ser on Ray Serve: an ingress that speaks protocol v1 and an encoder that batches chunks across it.

Owns the cluster application (``serve run conf/serve.yaml``; ``import_path:
realtime.cluster:build_app``). Two deployments:

- :class:`Ingress` (FastAPI): ``/ws`` is protocol v1 exactly as ``ser-listen``
  serves it, because it *is* the daemon's code: each replica runs a
  :class:`~realtime.daemon.Daemon` with no port and no local source, whose
  :class:`~realtime.server.Server` gets each accepted WebSocket (through
  :class:`StarletteConnection`) and each HTTP request (``answer_http``). So the
  session rules, budgets, error codes, token, Origin and Host checks, the
  streams (ring, chunk cutting, VAD, smoothing, window clock), the scheduler
  (fair batches, stale windows dropped and counted) and the metrics are the
  daemon's. Only the engine differs: :class:`RemoteEncoder` sends the chunk
  half to the encoder deployment and runs the window half (``classify``, the
  small head) locally, since a second remote hop per window would cost more
  than the head (``bench/cluster.py`` measures both).
- :class:`Encoder`: the chunk half of the engine behind ``@serve.batch``, so
  the chunk batches of every ingress replica that calls it are encoded in one
  engine call (onnxruntime on CPU; TensorRT or onnxruntime-CUDA where the
  replica is given a GPU: ``ray_actor_options: {num_gpus: 1}``).

A WebSocket is one long request pinned to one ingress replica: it holds one
of the replica's ``max_ongoing_requests`` slots for its life, so that limit is
the replica's connection budget (``server.max_clients`` answers ``server_busy``
first). A replica that dies drops its connections; clients reconnect
(``ser-client --reconnect``, the dashboard). An encoder replica that dies
mid-call is retried once on another; a batch that still fails is dropped with
a counted reason (``engine_error``) and the stream goes on with the next.

Metrics: each replica process has its own prometheus_client registry, every
sample labelled with its deployment and replica. An ingress's ``/metrics``
carries its streams' numbers and what its encoder calls saw (the encoder
replica, how many callers shared the batch, the round trip against the
encoder's own time). The encoder keeps its own registry (``metrics_text``).
"""

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram
from ray import serve
from ray.serve.handle import DeploymentHandle
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest

from engine.interface import Engine, EngineError, NonFiniteOutput
from engine.registry import load_engine
from realtime.config import daemon_config_from_mapping
from realtime.daemon import Daemon
from realtime.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, DaemonMetrics
from realtime.server import BadRequest, HttpAnswer, RequestInfo, inspect_request

log = logging.getLogger("ser-listen")

ENCODER_TIMEOUT_S = 5.0  # an encoder call not answered in this long is a lost batch (its windows are dropped)
ENCODER_RETRIES = 1  # a call whose encoder replica died is sent again this many times (Serve routes it elsewhere)
ENCODER_READY_TIMEOUT_S = 120.0  # an ingress replica waits this long for the encoder at start-up
DEFAULT_ENCODER_BATCH = 8  # encoder calls (each an ingress batch of chunks) per engine call at most ...
DEFAULT_ENCODER_WAIT_S = 0.005  # ... after waiting this long for others to join the first


# ---------------------------------------------------------------- the application's arguments


@dataclass(frozen=True)
class ClusterArgs:
    """The ``args`` of ``conf/serve.yaml``'s application: what ``build_app`` accepts (anything else is an error).

    ``config`` is the daemon configuration of every ingress replica, in the
    sections ``ser-listen --show-config`` prints (``audio``, ``post``,
    ``scheduler``, ``server``, ...): the same keys, defaults and checks.
    """

    model: str | None = None  # a path or a shipped model's name; None: the shipped default
    backend: str = "auto"  # the encoder's backend (auto | tensorrt | onnxruntime)
    device: str = "auto"  # the encoder's device (auto | cpu | cuda)
    threads: int | None = None  # the encoder's onnxruntime intra-op threads (None: its CPUs)
    int8: bool | None = None  # onnxruntime on CPU: the model's int8 copy (None: where the CPU has VNNI/dotprod)
    encoder_timeout_s: float = ENCODER_TIMEOUT_S  # an encoder call unanswered this long loses its batch's windows
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, args: dict[str, Any] | None) -> "ClusterArgs":
        """From the Serve config's ``args``; an unknown key is a ValueError naming it and the known ones."""
        args = dict(args or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown application args {unknown}; known: {sorted(known)}")
        parsed = cls(**args)
        if not parsed.encoder_timeout_s > 0:
            raise ValueError(f"args.encoder_timeout_s must be > 0, not {parsed.encoder_timeout_s!r}")
        daemon_config_from_mapping(parsed.config, "args.config")  # fail at build time, not in every replica
        return parsed


def replica_identity() -> dict[str, str]:
    """This process's deployment and replica as Serve names them (empty outside a replica)."""
    try:
        ctx = serve.get_replica_context()
    except Exception:  # noqa: BLE001 - not inside a replica (tests, local use): no labels
        return {}
    return {"deployment": ctx.deployment, "replica": ctx.replica_tag}


# ---------------------------------------------------------------- encoder deployment


@dataclass
class EncodeReply:
    """One encoder call's result and what its batch was: for the caller's metrics."""

    embeddings: np.ndarray
    replica: str
    batch_calls: int  # calls encoded together in this engine call
    batch_callers: int  # distinct ingress replicas among them
    batch_chunks: int
    engine_s: float  # the engine call's own time (the rest of the caller's round trip is Ray's)


def _labelled(registry: CollectorRegistry, const_labels: dict[str, str]) -> Any:
    """Metric constructors for ``registry`` whose samples all carry ``const_labels`` (deployment, replica)."""
    names = tuple(const_labels)

    def histogram(name: str, help_text: str, buckets: tuple[float, ...]) -> Any:
        h = PromHistogram(name, help_text, names, registry=registry, buckets=buckets)
        return h.labels(**const_labels) if names else h

    def counter(name: str, help_text: str) -> Any:
        c = PromCounter(name, help_text, names, registry=registry)
        return c.labels(**const_labels) if names else c

    return histogram, counter


class EncoderMetrics:
    """The encoder replica's own registry (prometheus_client, labelled by deployment and replica)."""

    def __init__(self, const_labels: dict[str, str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        histogram, _ = _labelled(self.registry, const_labels)
        self.batch_calls = histogram("ser_encoder_batch_calls", "Encoder calls encoded in one engine call.", BATCH_BUCKETS)
        self.batch_callers = histogram(
            "ser_encoder_batch_callers", "Distinct ingress replicas whose chunks shared one engine call.", BATCH_BUCKETS
        )
        self.batch_chunks = histogram("ser_encoder_batch_chunks", "Chunks encoded in one engine call.", BATCH_BUCKETS)
        self.engine_seconds = histogram("ser_encoder_engine_seconds", "Engine time per encoder batch.", LATENCY_BUCKETS)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


@serve.deployment(name="Encoder", max_ongoing_requests=32)
class Encoder:
    """The chunk half of the engine; ``encode`` batches calls from every caller (``@serve.batch``).

    ``user_config`` (``max_batch_size``, ``batch_wait_timeout_s``) tunes the
    batching without restarting the replica.
    """

    def __init__(self, model: str | None = None, backend: str = "auto", device: str = "auto", threads: int | None = None,
                 int8: bool | None = None) -> None:
        options: dict[str, Any] = {"threads": int(threads)} if threads else {}
        if int8 is not None:
            options["int8"] = bool(int8)
        self.engine = load_engine(model, backend=backend, device=device, **options)
        self.engine.warmup()
        self.identity = replica_identity()
        self.metrics = EncoderMetrics(self.identity)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's ``user_config``: the batch limits (checked; the rest of the config is an error)."""
        cfg = dict(user_config or {})
        n = int(cfg.pop("max_batch_size", DEFAULT_ENCODER_BATCH))
        wait = float(cfg.pop("batch_wait_timeout_s", DEFAULT_ENCODER_WAIT_S))
        if cfg:
            raise ValueError(f"unknown Encoder user_config keys {sorted(cfg)}; known: max_batch_size, batch_wait_timeout_s")
        if n < 1 or wait < 0:
            raise ValueError("Encoder user_config: max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
        self.encode.set_max_batch_size(n)
        self.encode.set_batch_wait_timeout_s(wait)

    def describe(self) -> dict[str, Any]:
        """What an ingress needs to know about its encoder (model, backend, device, geometry)."""
        e = self.engine
        return {
            "model": e.info.name,
            "backend": e.name,
            "device": e.device,
            "chunk_samples": e.chunk_samples,
            "embedding_dim": e.embedding_dim,
            "metadata": e.info.metadata(),
            **self.identity,
        }

    def metrics_text(self) -> str:
        return self.metrics.render()

    @serve.batch(max_batch_size=DEFAULT_ENCODER_BATCH, batch_wait_timeout_s=DEFAULT_ENCODER_WAIT_S)
    async def encode(self, calls: list[tuple[str, np.ndarray]]) -> list[EncodeReply]:
        """``(caller, chunks [n, chunk_samples])`` per call; one engine call for all of them.

        Rows the engine returns non-finite are returned as they are: the
        caller's engine checks every row, so only their windows are lost.
        """
        x = np.concatenate([c for _, c in calls]) if len(calls) > 1 else calls[0][1]
        t0 = time.perf_counter()
        emb = await asyncio.to_thread(self._encode_rows, x)  # the replica's loop keeps taking calls meanwhile
        dt = time.perf_counter() - t0
        callers = len({caller for caller, _ in calls})
        m = self.metrics
        m.batch_calls.observe(len(calls))
        m.batch_callers.observe(callers)
        m.batch_chunks.observe(len(x))
        m.engine_seconds.observe(dt)
        replies, i = [], 0
        for _, c in calls:
            replies.append(EncodeReply(emb[i : i + len(c)], self.identity.get("replica", ""), len(calls), callers, len(x), dt))
            i += len(c)
        return replies

    def _encode_rows(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.engine.encode_chunks(x)
        except NonFiniteOutput as exc:
            return exc.output


# ---------------------------------------------------------------- ingress side


class EncoderCallMetrics:
    """What an ingress replica's encoder calls saw, in the replica's one registry (its ``/metrics``)."""

    def __init__(self, registry: CollectorRegistry, const_labels: dict[str, str]) -> None:
        histogram, counter = _labelled(registry, const_labels)
        self.batch_callers = histogram(
            "ser_encoder_batch_callers", "Distinct ingress replicas whose chunks shared the encoder batch of a call.", BATCH_BUCKETS
        )
        self.batch_chunks = histogram("ser_encoder_batch_chunks", "Chunks in the encoder batch of a call.", BATCH_BUCKETS)
        self.roundtrip_seconds = histogram("ser_encoder_roundtrip_seconds", "Encoder call round trip.", LATENCY_BUCKETS)
        self.overhead_seconds = histogram(
            "ser_encoder_overhead_seconds", "Encoder call round trip less the encoder's engine time (Ray's cost).", LATENCY_BUCKETS
        )
        self.retries = counter("ser_encoder_retries", "Encoder calls sent again after their replica died.")


class RemoteEncoder(Engine):
    """An :class:`Engine` whose chunk half runs on the encoder deployment and whose head runs here.

    The scheduler's worker thread calls it, so ``.result()`` blocks that thread
    only, never the replica's event loop. One call per scheduler batch: the
    encoder batches these across ingress replicas.
    """

    name = "ray-serve"

    def __init__(self, local: Engine, encoder: DeploymentHandle, described: dict[str, Any], caller: str,
                 calls: EncoderCallMetrics, timeout_s: float = ENCODER_TIMEOUT_S) -> None:
        super().__init__(local.path, local.info)
        theirs, ours = described.get("metadata", {}), local.info.metadata()
        if theirs != ours:
            differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise EngineError(f"the encoder deployment serves another model than this ingress (metadata differs: {differ})")
        self.local = local
        self.encoder = encoder
        self.device = str(described.get("device", "cpu"))
        self.encoder_backend = str(described.get("backend", "?"))
        self.caller = caller
        self.calls = calls
        self.timeout_s = timeout_s

    def describe(self) -> str:
        return f"ray-serve encoder ({self.encoder_backend} on {self.device}) + head on onnxruntime ({self.path.name})"

    def _run(self, waveforms: np.ndarray) -> np.ndarray:  # a whole-window model: its "chunk" is the window
        return self._remote(waveforms)

    def _encode(self, chunks: np.ndarray) -> np.ndarray:
        return self._remote(chunks)

    def _classify(self, window_embeddings: np.ndarray) -> np.ndarray:
        return self.local._classify(window_embeddings)

    def _remote(self, x: np.ndarray) -> np.ndarray:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        last: Exception | None = None
        for attempt in range(ENCODER_RETRIES + 1):
            if attempt:
                self.calls.retries.inc()
            t0 = time.perf_counter()
            try:
                reply: EncodeReply = self.encoder.encode.remote((self.caller, x)).result(timeout_s=self.timeout_s)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                last = exc
                log.warning("encoder replica lost during a call (%s); %s", type(exc).__name__,
                            "sending it again" if attempt < ENCODER_RETRIES else "the batch is dropped")
                continue
            except TimeoutError as exc:
                raise EngineError(f"the encoder did not answer within {self.timeout_s:g} s") from exc
            dt = time.perf_counter() - t0
            c = self.calls
            c.batch_callers.observe(reply.batch_callers)
            c.batch_chunks.observe(reply.batch_chunks)
            c.roundtrip_seconds.observe(dt)
            c.overhead_seconds.observe(max(0.0, dt - reply.engine_s))
            return reply.embeddings
        raise EngineError(f"encoder replica lost ({type(last).__name__}), {ENCODER_RETRIES + 1} tries")


class _State:
    def __init__(self) -> None:
        self.name = "OPEN"


class StarletteConnection:
    """A Starlette WebSocket with the surface :class:`realtime.server.Connection` asks for.

    Behind Ray Serve's proxy the socket is not ours, so ``transport`` is None
    (nothing to abort); a send after the peer left raises ConnectionClosed,
    as python-websockets does, and iteration ends when the peer disconnects.
    """

    transport = None

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.state = _State()

    async def send(self, message: str) -> None:
        if self.state.name != "OPEN":
            raise ConnectionClosed(None, None)
        try:
            await self.ws.send_text(message)
        except Exception as exc:  # WebSocketDisconnect, or RuntimeError once a close was sent
            self.state.name = "CLOSED"
            raise ConnectionClosed(None, None) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.state.name != "OPEN":
            return
        self.state.name = "CLOSING"
        with contextlib.suppress(Exception):  # the peer already went: closed either way
            await self.ws.close(code, reason)
        self.state.name = "CLOSED"

    def __aiter__(self) -> Any:
        return self._messages()

    async def _messages(self) -> Any:
        while True:
            try:
                msg = await self.ws.receive()
            except Exception:  # noqa: BLE001 - receive after a disconnect: the connection is over
                self.state.name = "CLOSED"
                return
            if msg["type"] == "websocket.disconnect":
                self.state.name = "CLOSED"
                return
            if msg.get("text") is not None:
                yield msg["text"]
            elif msg.get("bytes") is not None:
                yield msg["bytes"]


def request_info(scope: dict[str, Any]) -> RequestInfo:
    """The daemon's parse of a request (path, Host, Origin, token) from an ASGI scope; BadRequest as the daemon's."""
    query = scope.get("query_string", b"").decode("latin-1")
    path = scope.get("path", "/") + (f"?{query}" if query else "")
    headers = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])])
    return inspect_request(WsRequest(path, headers))


def _response(answer: HttpAnswer) -> Response:
    return Response(answer.body, status_code=int(answer.status), headers=dict(answer.headers()))


api = FastAPI(title="ser", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name="Ingress", max_ongoing_requests=72)
@serve.ingress(api)
class Ingress:
    """Protocol v1, the dashboard, ``/healthz`` and ``/metrics``: a ``ser-listen`` without a port or an engine of its own."""

    async def __init__(self, encoder: DeploymentHandle, model: str | None = None, config: dict[str, Any] | None = None,
                       encoder_timeout_s: float = ENCODER_TIMEOUT_S) -> None:
        cfg = daemon_config_from_mapping(config or {}, "args.config")
        identity = replica_identity()
        metrics = DaemonMetrics(const_labels=identity)  # this process's one registry: the daemon's and the calls'
        described = await asyncio.wait_for(encoder.describe.remote(), ENCODER_READY_TIMEOUT_S)  # async: Serve's loop runs __init__
        # The head is a few kFLOP per window: one intra-op thread, so the replica's CPU goes to its streams.
        # Only its classify half runs here, which is float32 in a model's int8 copy too.
        local = load_engine(model, backend="onnxruntime", device="cpu", threads=1, int8=False)
        caller = identity.get("replica", f"pid-{os.getpid()}")
        engine = RemoteEncoder(local, encoder, described, caller, EncoderCallMetrics(metrics.registry, identity),
                               timeout_s=encoder_timeout_s)
        self.encoder = encoder
        self.daemon = Daemon(cfg, engine, device="none", metrics=metrics)
        self.daemon.identity = identity

    async def _started(self) -> Daemon:
        await self.daemon.start_embedded()  # on the loop that runs the requests, at the first one
        return self.daemon

    @api.websocket("/ws")
    async def ws(self, websocket: WebSocket) -> None:
        daemon = await self._started()
        try:
            info = request_info(websocket.scope)
        except BadRequest:
            daemon.metrics.connections_refused.inc(1, "bad_request")
            await websocket.close(code=1008)  # before accept: the handshake is refused (HTTP 403)
            return
        if daemon.server.answer_http(info) is not None:  # the Host check refused it
            await websocket.close(code=1008)
            return
        await websocket.accept()
        await daemon.server.serve_connection(StarletteConnection(websocket), info)

    @api.get("/metrics/encoder")
    async def encoder_metrics(self, request: Request) -> Response:
        """One encoder replica's own registry (the one Serve routes this request to; its samples name it).

        Behind the same checks as ``/metrics`` (Host, token): an ingress is the
        only HTTP door of the application.
        """
        daemon = await self._started()
        try:
            info = request_info(request.scope)
        except BadRequest as exc:
            return _response(HttpAnswer.text(400, f"bad request: {exc}\n"))  # type: ignore[arg-type]
        refused = daemon.server.refusal(info, private=True)
        if refused is not None:
            return _response(refused)
        text = await asyncio.wait_for(self.encoder.metrics_text.remote(), ENCODER_TIMEOUT_S)
        return Response(text.encode(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/{path:path}")
    async def http(self, request: Request, path: str) -> Response:
        daemon = await self._started()
        try:
            info = request_info(request.scope)
        except BadRequest as exc:
            daemon.metrics.connections_refused.inc(1, "bad_request")
            return _response(HttpAnswer.text(400, f"bad request: {exc}\n"))  # type: ignore[arg-type]
        answer = daemon.server.answer_http(info)
        if answer is None:
            return _response(HttpAnswer.text(426, "/ws takes WebSocket connections only\n"))  # type: ignore[arg-type]
        return _response(answer)

    def check_health(self) -> None:
        """Serve's health check: a replica whose scheduler or intake thread died is replaced (``/healthz`` says
        ``failing`` for the same threads: ``Daemon.dead_threads``)."""
        dead = self.daemon.dead_threads()
        if dead:
            many = len(dead) > 1
            threads = " and ".join(dead) + (" threads" if many else " thread")
            raise RuntimeError(f"the {threads} of this ingress replica {'are' if many else 'is'} not running")

    async def __del__(self) -> None:
        """Graceful replica shutdown (scale-down, redeploy): clients get 1001 going away, as from ser-listen."""
        daemon = getattr(self, "daemon", None)  # None when __init__ failed
        if daemon is not None and daemon.loop is not None:
            await daemon.shutdown()


def build_app(args: dict[str, Any] | None = None) -> Any:
    """The application ``serve run`` / ``serve deploy`` build from ``conf/serve.yaml`` (``import_path``)."""
    a = ClusterArgs.parse(args)
    encoder = Encoder.bind(a.model, a.backend, a.device, a.threads, a.int8)
    return Ingress.bind(encoder, a.model, a.config, a.encoder_timeout_s)
