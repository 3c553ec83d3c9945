"""The running daemon: wires the engine, scheduler, streams, local source and server, and owns shutdown.

Owns the lifecycle of ``ser-listen``. Results come back from the scheduler's
thread and are handed to the event loop, where post-processing runs in window
order per stream (voice gate, smoothing), each prediction is serialised once
and published to WebSocket subscribers and, with ``--jsonl``, to a
:class:`~realtime.jsonl.JsonlWriter` (which never blocks the loop). A stream
leaves the list when :class:`~realtime.stream.Stream` says it is retired
(ended, every window delivered); a remote stream holds its place under
``server.max_remote_streams`` until then. ``health()`` reports the worker
threads', the engine's and the local source's real state. SIGINT/SIGTERM stop
capture, let in-flight windows finish (bounded), close every client with 1001
and return 0. With ``--once`` the daemon stops by itself when its file source
has retired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from contract.audio import AUDIO_SUFFIXES
from engine.interface import Engine
from realtime import protocol
from realtime.admission import Admission
from realtime.config import DaemonConfig, is_loopback_host, typed, validate
from realtime.intake import Intake
from realtime.jsonl import JsonlWriter
from realtime.metrics import DaemonMetrics
from realtime.prediction import PostProcessor
from realtime.scheduler import Result, Scheduler, describe_state
from realtime.server import Server, ServerSettings
from realtime.sources import DeviceSource, FileSource, Source, SourceError, demo_clip_path
from realtime.stream import Stream, StreamSettings

log = logging.getLogger("ser-listen")


def describe_device_spec(spec: str) -> str:
    """What kind of source a ``--device`` value names: none, demo, file or device."""
    if spec in ("none", ""):
        return "none"
    if spec == "demo":
        return "demo"
    p = Path(spec).expanduser()
    if p.is_file() or p.suffix.lower() in AUDIO_SUFFIXES or "/" in spec:
        return "file"
    return "device"


class Daemon:
    """Everything ``ser-listen`` runs, in one object; ``run()`` serves until stopped and returns the exit code."""

    def __init__(
        self,
        cfg: Any,
        engine: Engine,
        device: str = "none",
        fast: bool = False,
        once: bool = False,
        reconnect: bool = False,
        jsonl: JsonlWriter | None = None,
        announce: Callable[[str], None] | None = None,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        if OmegaConf.get_type(cfg) is DaemonConfig:
            validate(cfg)  # a schema-typed config built in Python is checked too (a public host needs a token)
            self.cfg = cfg
        else:
            self.cfg = typed(cfg)
        cfg = self.cfg
        self.engine = engine
        self.device_spec = device
        self.fast = fast
        self.once = once
        self.reconnect = reconnect
        self.jsonl = jsonl
        self.announce = announce or (lambda line: print(line, file=sys.stderr, flush=True))
        self.metrics = metrics if metrics is not None else DaemonMetrics()
        self.labels = tuple(engine.labels)
        # ValueError when the hop is not a whole number of the model's chunk hops (cli.py reports it).
        self.settings = StreamSettings.from_config(cfg, engine.geometry)
        self.fast_settings = StreamSettings.from_config(cfg, engine.geometry, extra_buffer_windows=self.effective_max_batch())
        self.streams: dict[str, Stream] = {}
        self._post: dict[Stream, PostProcessor] = {}  # each stream's post-processing (event loop only)
        self.admission = Admission.from_config(cfg.server)  # client slots (server) and remote-stream slots (here)
        self._remote_serial = 0
        self._lock = threading.Lock()
        self._in_transit = 0  # results handed to the event loop and not yet published (--fast --jsonl accounting)
        self.started_at = time.monotonic()
        self.source: Source | None = None
        self.exit_code = 0
        self.identity: dict[str, str] = {}  # who serves, where several do (a Ray Serve replica's deployment and tag)
        self.finished_input = False  # --once: the file was read to its end (no signal): every line is owed
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.scheduler = Scheduler(
            engine,
            self._on_results_threadsafe,
            self.metrics,
            max_batch=self.effective_max_batch(),
            max_wait_s=cfg.scheduler.max_wait_ms / 1000.0,
            stale_after_s=cfg.scheduler.stale_after_s,
            max_queue=cfg.scheduler.max_queue,
            active_streams=lambda: len(self.streams),
        )
        self.intake = Intake()  # remote streams' DSP, off the event loop (its worker starts with the first frame)
        self.server = Server(ServerSettings.from_config(cfg.server), self, self.metrics, admission=self.admission)

    def effective_max_batch(self) -> int:
        """``scheduler.max_batch``, capped by ``scheduler.max_batch_cpu`` when the engine runs on a CPU."""
        n = self.cfg.scheduler.max_batch
        cap = self.cfg.scheduler.max_batch_cpu
        if self.engine.device == "cpu" and cap is not None:
            n = min(n, cap)
        return max(1, n)

    # ------------------------------------------------------------ streams

    def _new_stream(
        self, stream_id: str, kind: str, rate: int, channels: int, droppable: bool, info: dict[str, Any], group: str | None = None
    ) -> Stream:
        settings = self.settings if droppable else self.fast_settings
        stream = Stream(
            stream_id, kind, settings, rate, channels, self.scheduler.submit, self.labels, droppable, info,
            on_retired=self._retired_threadsafe, group=group,
        )
        self._post[stream] = PostProcessor(stream, self.labels)
        with self._lock:
            self.streams[stream_id] = stream
            self.metrics.streams.set(len(self.streams))
        self._streams_changed()
        return stream

    def _retired_threadsafe(self, stream: Stream) -> None:
        """Stream callback (any thread): every window of an ended stream is out; forget it on the loop."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(self._retire, stream)

    def _retire(self, stream: Stream) -> None:
        """A retired stream leaves the list, frees its remote slot, and ends --once."""
        self._post.pop(stream, None)  # its last result was delivered before this call (the loop runs them in order)
        with self._lock:
            if self.streams.get(stream.id) is not stream:
                return
            del self.streams[stream.id]
            self.metrics.streams.set(len(self.streams))
        if stream.kind == "remote":
            self.admission.stream_retired()
        self._streams_changed()
        if self.once and stream.kind in ("file", "demo") and self.stop_event is not None:
            self.finished_input = True
            self.stop_event.set()

    def _streams_changed(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(lambda: self.server.broadcast(protocol.streams_changed(self.stream_list())))

    def _output_ready(self) -> bool:
        """--fast reads no further while --jsonl could not take every window already cut: offline output loses no line.

        A window in flight (cut, not yet delivered: queued, being scored, or
        scored with its line on the way to the event loop) becomes at most one
        line, and reading one more file chunk cuts at most one more window, so
        feeding only while ``unwritten lines + windows in flight + 1`` fits the
        queue means the writer's queue can never overflow, however late the
        writer thread or the event loop get the CPU.
        """
        if self.jsonl is None:
            return True
        try:  # upstream first: a window moving on between two reads is counted twice, never missed
            in_flight = sum(s.outstanding for s in list(self.streams.values()) if not s.droppable)
        except RuntimeError:  # the stream table changed under us: ask again on the next poll
            return False
        in_flight += self._in_transit
        return self.jsonl.pending() + in_flight + 1 <= self.cfg.output.jsonl_queue_lines

    def _make_local_source(self) -> Source | None:
        """The source ``--device`` names; raises SourceError with a clear message if it cannot be opened."""
        spec = self.device_spec
        kind = describe_device_spec(spec)
        if kind == "none":
            return None
        a = self.cfg.audio
        if kind in ("demo", "file"):
            path = demo_clip_path() if kind == "demo" else Path(spec).expanduser()
            if not path.is_file():
                raise SourceError(f"audio file not found: {path}" if kind == "file" else f"the demo clip is missing from the package: {path}")
            sid = "demo" if kind == "demo" else "file"
            info = {"source": path.name} if kind == "demo" else {"source": str(path)}

            def make(rate: int, channels: int) -> Stream:
                return self._new_stream(sid, kind, rate, channels, not self.fast, info)

            return FileSource(
                path,
                make,
                realtime=not self.fast,
                loop=not self.once,
                chunk_s=a.file_chunk_s,
                fast_ahead_windows=self.effective_max_batch(),
                output_ready=self._output_ready,
                on_finished=self._source_finished_threadsafe,
            )

        def make_dev(rate: int, channels: int) -> Stream:
            return self._new_stream("mic", "device", rate, channels, True, {"source": spec})

        return DeviceSource(
            spec,
            make_dev,
            on_xruns=lambda n: self.metrics.xruns.inc(n),
            max_channels=a.max_channels,
            block_s=a.block_s,
            capture_buffer_s=a.capture_buffer_s,
            reconnect=self.reconnect,
            reconnect_min_s=self.cfg.source.reconnect_min_s,
            reconnect_max_s=self.cfg.source.reconnect_max_s,
            stall_timeout_s=self.cfg.source.stall_timeout_s,
            xrun_log_interval_s=self.cfg.source.xrun_log_interval_s,
            on_finished=self._source_finished_threadsafe,
        )

    # ------------------------------------------------------------ DaemonAPI (server side, event loop)

    def model_info(self) -> dict[str, Any]:
        info = self.engine.info
        return {
            "name": info.name,
            "variant": info.variant,
            "labels": list(self.labels),
            "sample_rate": self.engine.sample_rate,
            "window_s": self.engine.window_samples / self.engine.sample_rate,
            "hop_s": self.settings.hop_samples / self.settings.sample_rate,
            "backend": self.engine.name,
            "device": self.engine.device,
        }

    def stream_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.describe() for s in self.streams.values()]

    def dead_threads(self) -> list[str]:
        """The worker threads of a running daemon that no longer run: ``scheduler`` (nothing is scored) and
        ``intake`` (remote streams get no audio). Neither comes back by itself, so both health checks fail on
        them: ``health()`` (``/healthz``) and the Ray Serve ingress's ``check_health`` (the replica is replaced).
        Empty before the daemon runs (nothing is started yet)."""
        if self.loop is None:
            return []
        workers = (("scheduler", self.scheduler), ("intake", self.intake))
        return [name for name, worker in workers if not worker.is_alive()]

    def health(self) -> dict[str, Any]:
        """The daemon's real state: ``status`` is ``ok`` only while its threads and engine work and the local source runs.

        ``failing``: a worker thread died (``dead_threads`` names it) or the
        engine's last batch raised (it is backing off); ``degraded``: the local
        source failed or is reconnecting. The server answers /healthz with 503
        unless ``ok`` and strips names and paths.
        """
        engine = describe_state(self.scheduler.engine_state())
        source = None if self.source is None else self.source.health()
        dead = self.dead_threads()
        status = "ok"
        if dead or engine["status"] != "ok":
            status = "failing"
        elif source is not None and source["state"] in ("failed", "reconnecting"):
            status = "degraded"
        return {
            "status": status,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "model": self.engine.info.name,
            "precision": self.engine.precision,  # int8 where onnxruntime serves the model's int8 copy
            "backend": self.engine.name,
            "device": self.engine.device,
            "max_batch": self.scheduler.max_batch,
            "engine": engine,
            "dead_threads": dead,
            "source": source,
            "streams": self.stream_list(),
            "clients": len(self.server.clients),
            **self.identity,
        }

    def open_remote_stream(self, sample_rate: int, channels: int, encoding: str, owner: str | None = None) -> Stream:
        """A client's new stream; ``owner`` (the client) is who the scheduler shares the engine fairly among.

        A stopped stream keeps its slot until its last window is delivered, so
        cycling start/stop cannot hold more than ``server.max_remote_streams``.
        """
        self.admission.take_stream()  # ProtocolError server_busy when every slot is taken
        with self._lock:
            self._remote_serial += 1
            serial = self._remote_serial
        replica = self.identity.get("replica")  # one of several replicas: ids unique across them
        return self._new_stream(
            f"remote-{replica}-{serial}" if replica else f"remote-{serial}",
            "remote",
            sample_rate,
            channels,
            True,
            {"encoding": encoding},
            group=owner,
        )

    async def feed_remote_stream(self, stream: Stream, frames: Any) -> None:
        """A client's decoded frame, to its stream through the intake worker (waits while the intake is full)."""
        await self.intake.push(stream, frames)

    def close_remote_stream(self, stream: Stream) -> None:
        """Stop: score what is left (a final flush window, after the frames already queued); the stream retires
        once its results are out."""
        self.intake.finish(stream)

    # ------------------------------------------------------------ results (scheduler thread -> loop)

    def _on_results_threadsafe(self, results: list[Result]) -> None:
        """Scheduler thread: hand a batch's results to the loop (before the scheduler counts their windows done)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with self._lock:
                self._in_transit += len(results)
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(self._deliver, results)

    def _deliver(self, results: list[Result]) -> None:
        """Event loop: each scored window through its stream's post-processor, to JSON once, to every reader."""
        now = time.monotonic()
        for r in results:
            w = r.window
            if r.probs is not None:
                post = self._post.get(w.stream)
                if post is None:  # a stream the daemon did not open (tests feed the scheduler directly)
                    post = self._post[w.stream] = PostProcessor(w.stream, self.labels)
                prediction = post(w, r.probs, now)
                self.metrics.latency_seconds.observe(prediction.latency_s)
                text = prediction.to_json()
                self.server.publish(w.stream.id, text)
                if self.jsonl is not None:
                    self.jsonl.write(text)
        with self._lock:
            self._in_transit -= len(results)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Serve until SIGINT/SIGTERM (or, with --once, the end of the file); returns the exit code."""
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self.loop.add_signal_handler(sig, self.stop_event.set)
        self.scheduler.start()
        try:
            self.source = self._make_local_source()
        except SourceError:
            self.scheduler.stop()
            raise
        try:
            port = await self.server.start()
        except OSError as exc:
            self.scheduler.stop()
            raise SourceError(f"cannot listen on {self.cfg.server.host}:{self.cfg.server.port}: {exc.strerror or exc}") from exc
        self.announce_url(port)
        if self.source is not None:
            self.source.start()
        await self.stop_event.wait()
        await self.shutdown()
        return self.exit_code

    async def start_embedded(self) -> None:
        """Serve through another I/O shell (the Ray Serve ingress, ``realtime.cluster``): no port, no local source.

        The shell hands each WebSocket to ``self.server.serve_connection`` and
        HTTP requests to ``self.server.answer_http``; streams, the scheduler,
        post-processing and publishing are this daemon's, unchanged. Call from
        the event loop that will run those connections; ``shutdown()`` ends it.
        """
        if self.loop is not None:
            return
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.scheduler.start()

    def announce_url(self, port: int) -> None:
        host = self.cfg.server.host
        shown = host if is_loopback_host(host) and host != "::1" else ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host)
        if ":" in shown:
            shown = f"[{shown}]"
        token = self.cfg.server.token
        query = "?token=…" if token else ""
        self.announce(f"ser-listen: dashboard at http://{shown}:{port}/{query}")
        self.announce(
            f"ser-listen: model {self.engine.info.name}: {self.engine.describe()}; "
            f"WebSocket ws://{shown}:{port}/ws; source: {self.device_spec}"
        )

    def _source_finished_threadsafe(self, src: Source) -> None:
        """Source thread: the local source ended (file done, device failed); the loop decides what it means."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(self._source_finished, src)

    def _source_finished(self, src: Source) -> None:
        if src.failed is not None and not src.stop_event.is_set():
            self.announce(f"ser-listen: error: {src.failed}")
            self.exit_code = 1
            if self.stop_event is not None:
                self.stop_event.set()

    async def shutdown(self) -> None:
        """Stop capture, flush in-flight windows, close clients with 1001, stop the worker: all within
        ``server.shutdown_timeout_s``.

        The flush gets what the budget leaves after the server's own bounded
        close (its drain and handshakes); windows still queued after that are
        not scored (logged), so a slow engine under load cannot hold the exit.
        """
        t0 = time.monotonic()
        srv = self.cfg.server
        deadline = t0 + srv.shutdown_timeout_s
        server_close_s = self.server.shutdown_budget_s()
        if self.source is not None:
            await asyncio.to_thread(self.source.stop, 0.5)
        flush_s = max(0.05, min(srv.flush_timeout_s, deadline - time.monotonic() - server_close_s))
        flush_end = time.monotonic() + flush_s
        if not await asyncio.to_thread(self.intake.wait_idle, flush_s):  # audio received: into the rings, windows cut
            log.warning("shutdown: %d frame(s) of remote audio not fed after %.2f s", self.intake.pending(), flush_s)
        left = max(0.02, flush_end - time.monotonic())
        if not await asyncio.to_thread(self.scheduler.wait_idle, left):
            log.warning("shutdown: %d window(s) still unscored after %.2f s; not waiting for them", self.scheduler.pending(), flush_s)
        await asyncio.sleep(0)  # let the last _deliver callbacks run
        await self.server.shutdown()
        await asyncio.to_thread(self.intake.stop, 0.1)
        await asyncio.to_thread(self.scheduler.stop, 0.2)
        if self.jsonl is not None:
            if self.finished_input:  # --once at its natural end: a slow reader gets every line, a stalled one cannot hold us
                await asyncio.to_thread(self.jsonl.drain, self.cfg.output.jsonl_flush_timeout_s)
            left = max(0.05, min(self.cfg.output.jsonl_flush_timeout_s, deadline - time.monotonic()))
            await asyncio.to_thread(self.jsonl.close, left)
        log.info("stopped in %.2f s", time.monotonic() - t0)
