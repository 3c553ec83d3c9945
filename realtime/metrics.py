"""Prometheus metrics of the daemon: counters, gauges and histograms, rendered as text format 0.0.4.

Owns the numbers ``/metrics`` serves. Small and dependency-free on purpose
(prometheus_client would be one more package for ~100 lines); updated from the
capture, scheduler and event-loop threads under one short lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + inner + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, registry: Registry, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._lock = registry.lock
        registry.metrics.append(self)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"


class Counter(_Metric):
    """Monotonic count, optionally split by label values."""

    kind = "counter"

    def __init__(self, registry: Registry, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> None:
        super().__init__(registry, name, help_text)
        self.labelnames = labelnames
        self._values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, *labelvalues: str) -> None:
        with self._lock:
            self._values[labelvalues] = self._values.get(labelvalues, 0.0) + amount

    def value(self, *labelvalues: str) -> float:
        with self._lock:
            if labelvalues or not self.labelnames:
                return self._values.get(labelvalues, 0.0)
            return sum(self._values.values())

    def render(self) -> Iterable[str]:
        yield from super().render()
        for key, v in sorted(self._values.items()):
            yield f"{self.name}{_labels(tuple(zip(self.labelnames, key, strict=True)))} {_fmt(v)}"


class Gauge(Counter):
    """A value that goes up and down (clients, streams, queue depth)."""

    kind = "gauge"

    def set(self, value: float, *labelvalues: str) -> None:
        with self._lock:
            self._values[labelvalues] = float(value)


class Histogram(_Metric):
    """Cumulative buckets, sum and count, as Prometheus expects."""

    kind = "histogram"

    def __init__(self, registry: Registry, name: str, help_text: str, buckets: Iterable[float]) -> None:
        super().__init__(registry, name, help_text)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._n = 0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, b in enumerate(self.buckets):
                if value <= b:
                    self._counts[i] += 1
                    break
            self._sum += value
            self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def render(self) -> Iterable[str]:
        yield from super().render()
        acc = 0
        for b, c in zip(self.buckets, self._counts, strict=True):
            acc += c
            yield f'{self.name}_bucket{{le="{_fmt(b)}"}} {acc}'
        yield f"{self.name}_sum {_fmt(self._sum)}"
        yield f"{self.name}_count {self._n}"


class Registry:
    """All metrics of one daemon; ``render()`` is the body of ``/metrics``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metrics: list[_Metric] = []

    def render(self) -> str:
        with self.lock:
            lines = [line for m in self.metrics for line in m.render()]
        return "\n".join(lines) + "\n"


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class DaemonMetrics:
    """The daemon's metrics by name, so every module updates the same objects."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.windows_scored = Counter(r, "ser_windows_scored_total", "Windows the engine scored.")
        self.windows_dropped = Counter(
            r, "ser_windows_dropped_total", "Due windows dropped under overload, by reason.", ("reason",)
        )
        self.batch_size = Histogram(r, "ser_batch_size", "Windows per engine call.", BATCH_BUCKETS)
        self.inference_seconds = Histogram(r, "ser_inference_seconds", "Engine time per batch.", LATENCY_BUCKETS)
        self.chunks_encoded = Histogram(
            r, "ser_chunks_encoded", "Chunks encoded per engine call (a window after dropped ones needs up to K).", BATCH_BUCKETS
        )
        self.latency_seconds = Histogram(
            r,
            "ser_end_to_end_latency_seconds",
            "From a window's last sample arriving to its prediction being published.",
            LATENCY_BUCKETS,
        )
        self.xruns = Counter(r, "ser_xruns_total", "Capture overflows (xruns) reported by the audio device or the capture ring.")
        self.clients = Gauge(r, "ser_clients", "Connected WebSocket clients.")
        self.streams = Gauge(r, "ser_streams", "Active audio streams (local and remote).")
        self.queue_depth = Gauge(r, "ser_scheduler_queue_depth", "Due windows waiting for the engine.")
        self.client_dropped = Counter(
            r, "ser_client_messages_dropped_total", "Predictions dropped for clients that read too slowly."
        )
        self.errors_sent = Counter(r, "ser_protocol_errors_total", "Error messages sent to clients, by code.", ("code",))
        self.connections_refused = Counter(
            r, "ser_connections_refused_total", "Requests and connections turned away, by reason.", ("reason",)
        )
        self.clients_closed = Counter(
            r, "ser_clients_closed_total", "Connections the daemon closed for breaking a rule, by reason.", ("reason",)
        )
        self.engine_failures = Counter(r, "ser_engine_failures_total", "Engine calls that raised (their windows are lost).")
        self.uptime = Gauge(r, "ser_uptime_seconds", "Seconds since the daemon started.")
