"""Prometheus metrics of the daemon, kept in a ``prometheus_client`` registry that each :class:`DaemonMetrics` owns.

A process has one registry, the one its ``/metrics`` serves: a plain
``ser-listen`` and a Ray Serve ingress replica expose the same metric names,
and the replica adds metrics of its own (its encoder calls) to the same
registry. A replica passes ``const_labels`` (``deployment``, ``replica``) so
that every sample says where it came from once Prometheus scrapes many
replicas; the plain daemon passes none and its samples carry no such labels.
The registry is the instance's, never prometheus_client's global ``REGISTRY``,
so two daemons in one process (the tests) keep their numbers apart.

The thin :class:`Counter`, :class:`Gauge` and :class:`Histogram` wrappers keep
the call style the rest of the package uses (label values positional, after
the amount) and add the constant labels; prometheus_client's own metrics are
thread-safe, so the capture, scheduler and event-loop threads update them
without a lock of ours. Importing this module turns off the ``_created``
series of every metric in the process (one extra series and a timestamp per
series, of no use to the daemon's dashboards).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

# Read when samples are collected, not when metrics are made: this works whatever was imported first
# (the PROMETHEUS_DISABLE_CREATED_SERIES environment variable is read once, at prometheus_client's import).
prometheus_client.disable_created_metrics()


class _Metric:
    """A prometheus_client metric whose samples all carry ``const_labels``, with label values passed positionally."""

    def __init__(self, metric: type[MetricWrapperBase], registry: CollectorRegistry, const_labels: Mapping[str, str],
                 name: str, help_text: str, labelnames: tuple[str, ...] = (), **kwargs: object) -> None:
        clash = set(const_labels) & set(labelnames)
        if clash:
            raise ValueError(f"{name}: constant labels {sorted(clash)} are also the metric's own labels")
        self.name = name
        self.labelnames = labelnames
        self._const = tuple(const_labels.values())
        self._metric = metric(name, help_text, (*const_labels, *labelnames), registry=registry, **kwargs)
        # Without labels of its own the one series exists from the start (0 until updated), as Prometheus prefers.
        self._fixed = None if labelnames else (self._metric.labels(*self._const) if self._const else self._metric)

    def _child(self, labelvalues: tuple[str, ...]) -> MetricWrapperBase:
        if self._fixed is not None and not labelvalues:
            return self._fixed
        if len(labelvalues) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected label values for {self.labelnames}, got {labelvalues}")
        return self._metric.labels(*self._const, *labelvalues)

    def _sum(self, sample_name: str, labelvalues: tuple[str, ...]) -> float:
        """The sum of the samples named ``sample_name`` whose own labels start with ``labelvalues``.

        Reads the collected samples, so asking about label values never seen creates no series.
        """
        if len(labelvalues) > len(self.labelnames):
            raise ValueError(f"{self.name}: expected label values for {self.labelnames}, got {labelvalues}")
        want = dict(zip(self.labelnames, labelvalues, strict=False))  # a prefix of the label values
        return float(sum(s.value for m in self._metric.collect() for s in m.samples
                         if s.name == sample_name and all(s.labels.get(k) == v for k, v in want.items())))


class Counter(_Metric):
    """Monotonic count, optionally split by label values; its name ends in ``_total``, as its sample's does."""

    def __init__(self, registry: CollectorRegistry, const_labels: Mapping[str, str], name: str, help_text: str,
                 labelnames: tuple[str, ...] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: the name must end in _total (prometheus_client appends it otherwise)")
        super().__init__(prometheus_client.Counter, registry, const_labels, name, help_text, labelnames)

    def inc(self, amount: float = 1.0, *labelvalues: str) -> None:
        self._child(labelvalues).inc(amount)

    def value(self, *labelvalues: str) -> float:
        """The count for these label values; the sum over all of them when none are given."""
        return self._sum(self.name, labelvalues)


class Gauge(_Metric):
    """A value that goes up and down (clients, streams, queue depth)."""

    def __init__(self, registry: CollectorRegistry, const_labels: Mapping[str, str], name: str, help_text: str,
                 labelnames: tuple[str, ...] = ()) -> None:
        super().__init__(prometheus_client.Gauge, registry, const_labels, name, help_text, labelnames)

    def set(self, value: float, *labelvalues: str) -> None:
        self._child(labelvalues).set(value)

    def inc(self, amount: float = 1.0, *labelvalues: str) -> None:
        self._child(labelvalues).inc(amount)

    def value(self, *labelvalues: str) -> float:
        """The value for these label values; the sum over all of them when none are given."""
        return self._sum(self.name, labelvalues)


class Histogram(_Metric):
    """Cumulative buckets (``+Inf`` added), sum and count; no labels but the constant ones."""

    def __init__(self, registry: CollectorRegistry, const_labels: Mapping[str, str], name: str, help_text: str,
                 buckets: Iterable[float]) -> None:
        super().__init__(prometheus_client.Histogram, registry, const_labels, name, help_text,
                         buckets=tuple(sorted(buckets)))

    def observe(self, value: float) -> None:
        self._child(()).observe(value)

    @property
    def count(self) -> int:
        return int(self._sum(f"{self.name}_count", ()))

    @property
    def sum(self) -> float:
        return self._sum(f"{self.name}_sum", ())


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class DaemonMetrics:
    """The daemon's metrics by name, so every module updates the same objects; ``render()`` is ``/metrics``.

    ``registry`` is this instance's own; other code (the Ray Serve ingress) registers its metrics there
    too, with ``const_labels`` on them, so that one scrape of the process shows everything.
    """

    def __init__(self, const_labels: Mapping[str, str] | None = None) -> None:
        self.const_labels: dict[str, str] = dict(const_labels or {})
        self.registry = CollectorRegistry()
        r, c = self.registry, self.const_labels
        self.windows_scored = Counter(r, c, "ser_windows_scored_total", "Windows the engine scored.")
        self.windows_dropped = Counter(
            r, c, "ser_windows_dropped_total", "Due windows dropped under overload, by reason.", ("reason",)
        )
        self.batch_size = Histogram(r, c, "ser_batch_size", "Windows per engine call.", BATCH_BUCKETS)
        self.inference_seconds = Histogram(r, c, "ser_inference_seconds", "Engine time per batch.", LATENCY_BUCKETS)
        self.chunks_encoded = Histogram(
            r, c, "ser_chunks_encoded", "Chunks encoded per engine call (a window after dropped ones needs up to K).",
            BATCH_BUCKETS,
        )
        self.latency_seconds = Histogram(
            r,
            c,
            "ser_end_to_end_latency_seconds",
            "From a window's last sample arriving to its prediction being published.",
            LATENCY_BUCKETS,
        )
        self.xruns = Counter(
            r, c, "ser_xruns_total", "Capture overflows (xruns) reported by the audio device or the capture ring."
        )
        self.clients = Gauge(r, c, "ser_clients", "Connected WebSocket clients.")
        self.streams = Gauge(r, c, "ser_streams", "Active audio streams (local and remote).")
        self.queue_depth = Gauge(r, c, "ser_scheduler_queue_depth", "Due windows waiting for the engine.")
        self.client_dropped = Counter(
            r, c, "ser_client_messages_dropped_total", "Predictions dropped for clients that read too slowly."
        )
        self.errors_sent = Counter(
            r, c, "ser_protocol_errors_total", "Error messages sent to clients, by code.", ("code",)
        )
        self.connections_refused = Counter(
            r, c, "ser_connections_refused_total", "Requests and connections turned away, by reason.", ("reason",)
        )
        self.clients_closed = Counter(
            r, c, "ser_clients_closed_total", "Connections the daemon closed for breaking a rule, by reason.", ("reason",)
        )
        self.engine_failures = Counter(
            r, c, "ser_engine_failures_total", "Engine calls that raised (their windows are lost)."
        )
        self.uptime = Gauge(r, c, "ser_uptime_seconds", "Seconds since the daemon started.")

    def render(self) -> str:
        """The text exposition of everything in ``registry`` (the daemon's and any added there), for ``/metrics``."""
        return generate_latest(self.registry).decode()
