"""The batching scheduler: one inference thread that scores the due windows of all streams together.

Owns the engine's time. Streams submit windows as they fall due (from any
thread) into one :class:`~realtime.queues.BoundedQueue` served fairly: round
robin across groups (a client, or a local source), then across a group's
streams, so one stream, or one client's many, cannot starve the rest. Two
classes: established live streams (running ``ESTABLISHED_S`` at real-time
pace) come first; new, short-lived and bursting streams (start/stop cycling,
audio sent faster than spoken) get the rest, in small batches while live
streams are being served, with rests between them (at most ``BACKGROUND_SHARE``
of the engine's time), so churn cannot take a live stream's turn, nor the cores
the event loop needs to carry its result. A stream's own windows keep their
order across the classes (``keep_key_order``): once a new stream's window is
live, the windows it queued as background go with it, ahead of it (else, with
live windows always queued, they waited until they went stale). The worker waits for the first
window, gives others up to ``max_wait_s`` to join, takes at most ``max_batch``
of them needing at most ``max_batch`` chunks encoded (a window after dropped
ones needs up to K; the first window goes whatever it needs), so one batch
costs about what ``max_batch`` one-hop windows cost, and scores them with two
engine calls for the whole batch, whatever the streams:

1. every chunk the batch's windows need that no stream has encoded yet is read
   into one array and encoded in ONE ``encode_chunks`` call (a chunked model
   encodes each chunk of a stream once; a whole-window model's chunk is the
   window itself, K = 1), and the embeddings are kept by their stream;
2. the K embeddings of each window go to ONE ``classify`` call.

Every result (and every drop) goes to ``on_results``. It never queues without
bound: a window older than ``stale_after_s`` when its turn comes is dropped
(counted), the queue is capped at ``max_queue`` by evicting the oldest window
of the stream holding the most, and a window whose audio the ring has already
overwritten is dropped too. Windows of streams fed as fast as the engine goes
(``--fast``) are not droppable: those streams wait for the engine instead.

Engine faults stay contained. Rows the engine returns non-finite cost only
their own windows (the batch's other streams keep their results); an engine
call that raises loses its batch, logs one traceback, and makes the worker
back off (doubling, bounded) so a broken engine is neither hammered nor
hidden: :meth:`Scheduler.engine_state` says whether it is failing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.interface import Engine, NonFiniteOutput
from realtime.chunkstore import ChunkStore
from realtime.metrics import DaemonMetrics
from realtime.queues import BoundedQueue, Decision
from realtime.stream import Stream, Window

log = logging.getLogger("ser-listen")

BACKOFF_MIN_S = 0.1  # first pause after a failed engine call, doubled per consecutive failure ...
BACKOFF_MAX_S = 5.0  # ... up to this
ESTABLISHED_S = 2.0  # a live stream is served first once it has run this long ...
AHEAD_OF_REAL_TIME_S = 0.5  # ... and while its audio runs no further ahead of the wall clock than this
BACKGROUND_BATCH_DIVISOR = 4  # ... the others' windows go in batches of at most max_batch / this ...
BACKGROUND_SHARE = 0.25  # ... and take at most this share of the engine's time ...
LIVE_RECENT_S = 1.0  # ... while an established stream had a window due this recently


@dataclass
class Result:
    """The fate of one window: ``probs`` when scored, ``dropped`` (a reason) when not."""

    window: Window
    probs: np.ndarray | None
    dropped: str | None = None
    batch_size: int = 0
    inference_s: float = 0.0
    done_at: float = 0.0


@dataclass
class EncodePlan:
    """What a batch needs encoded: row ``i`` of the chunk array is chunk ``owners[i]`` (stream, end sample)."""

    owners: list[tuple[Stream, int]] = field(default_factory=list)
    rows: dict[tuple[int, int], int] = field(default_factory=dict)  # (id(stream), key) -> row
    unreadable: set[tuple[int, int]] = field(default_factory=set)  # chunks the ring no longer holds


@dataclass
class Classified:
    """A batch after ``classify``: the windows scored (``probs`` row by row) and those lost on the way."""

    kept: list[Window] = field(default_factory=list)
    probs: np.ndarray | None = None
    overwritten: list[Window] = field(default_factory=list)
    non_finite: list[Window] = field(default_factory=list)


@dataclass
class EngineState:
    """What the worker knows about its engine: /healthz reports it."""

    failing: bool = False
    consecutive_failures: int = 0
    last_error: str | None = None
    backoff_s: float = 0.0
    batches_ok: int = 0


class Scheduler:
    """One worker thread, one engine, cross-stream batches bounded in size and wait, fair across streams."""

    def __init__(
        self,
        engine: Engine,
        on_results: Callable[[list[Result]], None],
        metrics: DaemonMetrics,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        stale_after_s: float = 1.0,
        max_queue: int = 256,
        active_streams: Callable[[], int] | None = None,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.engine = engine
        self.on_results = on_results
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stale_after_s = stale_after_s
        self.max_queue = max(max_queue, max_batch)
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        # How many streams could still add a window to this batch; when every one of them already
        # has a window queued, waiting max_wait_s for more would only add latency.
        self.active_streams = active_streams
        self._queue: BoundedQueue[Window] = BoundedQueue(self.max_queue, order="fair", priorities=2, keep_key_order=True)
        self._live_at = float("-inf")  # when an established live stream last had a window due
        self._background_after = float("-inf")  # no background batch before this while live streams are served
        self._lock = threading.Lock()
        self._stopping = False
        self._busy = False
        self._state = EngineState()
        k, d = engine.chunks_per_window, engine.embedding_dim
        self._chunks = np.zeros((max_batch * k, engine.chunk_samples), dtype=np.float32)
        self.chunks = ChunkStore()  # every stream's chunk embeddings, pruned per batch; the shared silence chunk
        self._embeddings = np.zeros((max_batch, k, d), dtype=np.float32)
        self._thread = threading.Thread(target=self._run, name="ser-inference", daemon=True)

    # ------------------------------------------------------------ any thread

    def start(self) -> None:
        self._thread.start()

    def submit(self, window: Window) -> None:
        """Queue a due window; never blocks. A full queue evicts the oldest window of its busiest stream."""
        stream = window.stream
        priority = self._priority(window)
        if priority == 0 and window.droppable:
            self._live_at = time.monotonic()
        res = self._queue.put(window, stream, group=stream.group, droppable=window.droppable, priority=priority)
        self.metrics.queue_depth.set(len(self._queue))
        lost = [w for w, _reason in res.dropped]
        if lost:
            self._report_drops(lost, "queue_full")

    @staticmethod
    def _priority(window: Window) -> int:
        """0 for established live streams that keep real-time pace; 1 for new, short-lived or bursting ones.

        Fairness shares the engine among streams; this keeps churn (start/stop cycling, clients
        that connect, stream a moment and vanish) and audio sent faster than it is spoken (up to
        the protocol's burst) from taking turns from the streams that are live. Streams that wait
        for the engine (``--fast`` files, not droppable) are never deprioritised.
        """
        stream = window.stream
        if not window.droppable:
            return 0
        age = time.monotonic() - stream.created
        ahead = window.end / stream.settings.sample_rate - age
        return 0 if age >= ESTABLISHED_S and ahead <= AHEAD_OF_REAL_TIME_S else 1

    def pending(self) -> int:
        """Windows queued or being scored right now."""
        with self._lock:
            return len(self._queue) + (1 if self._busy else 0)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted window has been scored or dropped (used when flushing)."""
        return self._queue.wait_for(lambda: not self._queue and not self._busy, timeout=timeout)

    def is_alive(self) -> bool:
        """Whether the worker thread runs (a health check's question: a dead worker scores nothing)."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping = True
        self._queue.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def engine_state(self) -> EngineState:
        """A copy of the engine's state as the worker last saw it."""
        with self._lock:
            s = self._state
            return EngineState(s.failing, s.consecutive_failures, s.last_error, s.backoff_s, s.batches_ok)

    # ------------------------------------------------------------ worker

    def _live_recent(self, now: float) -> bool:
        return now - self._live_at < LIVE_RECENT_S

    def _take(self) -> tuple[list[Window], list[Window], bool]:
        """Wait for due windows and take a fair batch; also return the stale ones skipped, and whether
        the batch is background work done while live streams are served (it then rests the engine after)."""
        q = self._queue
        while not q.wait_for(lambda: bool(q) or self._stopping, timeout=0.25):
            pass
        # Background work rests between its batches while live streams are served: a live window then
        # mostly finds the engine idle, and the cores are left to the event loop that carries its result.
        while not self._stopping:
            now = time.monotonic()
            if q.head_priority() != 1 or now >= self._background_after or not self._live_recent(now):
                break
            q.wait_for(lambda: q.head_priority() == 0 or self._stopping, timeout=self._background_after - now)
        if self._stopping:
            return [], [], False
        deadline = time.monotonic() + self.max_wait_s
        while len(q) < self.max_batch and not self._stopping and not self._everyone_queued():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            n = len(q)
            q.wait_for(lambda n=n: len(q) != n or self._stopping, timeout=left)
        with self._lock:  # busy before the windows leave the queue, so wait_idle never sees neither
            self._busy = True
        now = time.monotonic()
        # One class per batch: live streams never wait inside a batch of background windows; and while
        # live streams are being served, background batches are small, so a live window that falls due
        # meanwhile waits little for the engine.
        # The limit counts windows and also the chunks they need encoded (a stream's window after dropped ones
        # needs up to K): a batch costs about what max_batch one-hop windows cost, so a live window that falls
        # due meanwhile waits one bounded batch. The first window goes whatever it needs.
        cls = q.head_priority()
        background = cls == 1 and self._live_recent(now)
        limit = max(1, self.max_batch // BACKGROUND_BATCH_DIVISOR) if background else self.max_batch
        chunks: set[tuple[int, int]] = set()
        taken = 0

        def decide(w: Window) -> Decision:  # under the queue's lock: the window decided on is the window taken
            nonlocal taken
            if taken >= limit:
                return Decision.STOP
            if w.droppable and now - w.due > self.stale_after_s:
                return Decision.SKIP
            need = self._chunks_to_encode(w) - chunks
            if taken and len(chunks) + len(need) > limit:
                return Decision.STOP
            chunks.update(need)
            taken += 1
            return Decision.TAKE

        batch, stale = q.take_while(decide, priority=cls)
        self.metrics.queue_depth.set(len(q))
        return batch, stale, background

    def _chunks_to_encode(self, w: Window) -> set[tuple[int, int]]:
        """The chunks of ``w`` its stream has not encoded yet (the shared silence chunk excepted)."""
        s = w.stream
        return {(id(s), k) for k in self.chunks.missing(s, s.chunk_keys(w))}

    def _everyone_queued(self) -> bool:
        if self.active_streams is None:
            return False
        return self._queue.key_count() >= self.active_streams()

    def _run(self) -> None:
        while True:
            batch, stale, background = self._take()
            try:
                if stale:
                    self._report_drops(stale, "stale")
                if not batch:
                    if self._stopping:
                        return
                    continue
                try:
                    t0 = time.monotonic()
                    self._score(batch)
                    self._engine_ok()
                    if background:
                        t1 = time.monotonic()
                        self._background_after = t1 + (t1 - t0) * (1 - BACKGROUND_SHARE) / BACKGROUND_SHARE
                except Exception as exc:  # a daemon must outlive one bad batch; the windows are reported lost
                    self._engine_failed(exc, len(batch))
                    self._report_drops(batch, "engine_error")
                    self._backoff()
            finally:
                with self._lock:
                    self._busy = False
                self._queue.notify()

    def _engine_ok(self) -> None:
        with self._lock:
            if self._state.failing:
                log.warning("engine recovered after %d failed batch(es)", self._state.consecutive_failures)
            self._state.failing = False
            self._state.consecutive_failures = 0
            self._state.backoff_s = 0.0
            self._state.batches_ok += 1

    def _engine_failed(self, exc: Exception, n: int) -> None:
        self.metrics.engine_failures.inc()
        with self._lock:
            s = self._state
            s.failing = True
            s.consecutive_failures += 1
            s.last_error = f"{type(exc).__name__}: {exc}"
            s.backoff_s = min(self.backoff_max_s, self.backoff_min_s * 2 ** (s.consecutive_failures - 1))
            first = s.consecutive_failures == 1
            count, pause = s.consecutive_failures, s.backoff_s
        if first:  # one traceback per failure streak, then one line per batch
            log.exception("inference failed for a batch of %d windows; backing off %.1f s", n, pause)
        else:
            log.error("inference failed again (%d in a row): %s; backing off %.1f s", count, exc, pause)

    def _backoff(self) -> None:
        pause = self.engine_state().backoff_s
        deadline = time.monotonic() + pause
        while not self._stopping and time.monotonic() < deadline:
            self._queue.wait_for(lambda: self._stopping, timeout=min(0.05, max(0.0, deadline - time.monotonic())))

    def _score(self, batch: list[Window]) -> None:
        """Plan the batch's new chunks, encode them in one call, classify its windows in one call, deliver."""
        t0 = time.perf_counter()
        plan = self._plan(batch)
        bad_chunks = self._encode(plan)
        out = self._classify(batch, plan.unreadable, bad_chunks)
        dt = time.perf_counter() - t0
        self.chunks.prune(batch)
        if out.overwritten:
            self._report_drops(out.overwritten, "overwritten")
        if out.non_finite:
            self._report_drops(out.non_finite, "non_finite")
        kept, probs = out.kept, out.probs
        if not kept or probs is None:
            return
        n = len(kept)
        self.metrics.batch_size.observe(n)
        self.metrics.inference_seconds.observe(dt)
        self.metrics.windows_scored.inc(n)
        now = time.monotonic()
        self._deliver([Result(w, np.array(probs[i]), None, n, dt, now) for i, w in enumerate(kept)])

    def _plan(self, batch: list[Window]) -> EncodePlan:
        """Read every chunk the batch's windows need that the store lacks into ``self._chunks``, once each."""
        plan = EncodePlan()
        for w in batch:
            s = w.stream
            for key in self.chunks.missing(s, s.chunk_keys(w)):
                ck = (id(s), key)
                if ck in plan.rows or ck in plan.unreadable:
                    continue
                if s.read_chunk(key, self._chunks[len(plan.owners)]):
                    plan.rows[ck] = len(plan.owners)
                    plan.owners.append((s, key))
                else:
                    plan.unreadable.add(ck)
        return plan

    def _encode(self, plan: EncodePlan) -> set[tuple[int, int]]:
        """ONE ``encode_chunks`` call for the planned chunks; the store keeps the finite ones. Returns the others."""
        owners = plan.owners
        bad_chunks: set[tuple[int, int]] = set()
        if owners:
            self.metrics.chunks_encoded.observe(len(owners))
        try:
            emb = self.engine.encode_chunks(self._chunks[: len(owners)])
        except NonFiniteOutput as exc:
            emb = exc.output
            bad_rows = set(exc.rows)
            bad_chunks = {(id(s), key) for i, (s, key) in enumerate(owners) if i in bad_rows}
            log.warning("%s; their windows are dropped", exc)
        for i, (s, key) in enumerate(owners):
            if (id(s), key) not in bad_chunks:
                self.chunks.put(s, key, emb[i].copy())
        return bad_chunks

    def _classify(self, batch: list[Window], unreadable: set[tuple[int, int]], bad_chunks: set[tuple[int, int]]) -> Classified:
        """ONE ``classify`` call for the windows whose K embeddings are all there and finite; the others are sorted out."""
        out = Classified()
        kept = out.kept
        for w in batch:
            s = w.stream
            keys = s.chunk_keys(w)
            if any((id(s), k) in unreadable for k in keys):
                out.overwritten.append(w)
            elif any((id(s), k) in bad_chunks for k in keys):
                out.non_finite.append(w)
            else:
                for i, k in enumerate(keys):
                    self._embeddings[len(kept), i] = self.chunks.get(s, k)
                kept.append(w)
        if not kept:
            return out
        try:
            out.probs = self.engine.classify(self._embeddings[: len(kept)])
        except NonFiniteOutput as exc:
            log.warning("%s; those windows are dropped", exc)
            bad = set(exc.rows)
            out.non_finite += [w for i, w in enumerate(kept) if i in bad]
            keep_rows = [i for i in range(len(kept)) if i not in bad]
            out.kept = [kept[i] for i in keep_rows]
            out.probs = exc.output[keep_rows]
        return out

    def _report_drops(self, windows: list[Window], reason: str) -> None:
        self.metrics.windows_dropped.inc(len(windows), reason)
        now = time.monotonic()
        self._deliver([Result(w, None, reason, 0, 0.0, now) for w in windows])

    def _deliver(self, results: list[Result]) -> None:
        try:
            self.on_results(results)
        finally:
            for r in results:
                r.window.stream.window_done()


def describe_state(state: EngineState) -> dict[str, Any]:
    """The engine state as JSON for /healthz."""
    return {
        "status": "failing" if state.failing else "ok",
        "consecutive_failures": state.consecutive_failures,
        # The kind of error only: its message may name the model's file (the log has it in full).
        "last_error": state.last_error.split(":", 1)[0] if state.last_error else None,
        "backoff_s": round(state.backoff_s, 3),
    }
