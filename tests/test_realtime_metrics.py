"""The daemon's metrics (realtime/metrics.py) on prometheus_client: names, constant labels, one registry per
instance, values read back, no ``_created`` series, and bench.lib's parser reading the exposition back."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import Counter as PromCounter

from bench.lib import Metrics, parse_metrics
from realtime.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, DaemonMetrics

IDENTITY = {"deployment": "Ingress", "replica": "abc123"}

# Every sample name DaemonMetrics exposes (labelled counters only once they have a value).
NAMES = {
    "ser_windows_scored_total", "ser_windows_dropped_total", "ser_xruns_total", "ser_client_messages_dropped_total",
    "ser_protocol_errors_total", "ser_connections_refused_total", "ser_clients_closed_total",
    "ser_engine_failures_total", "ser_clients", "ser_streams", "ser_scheduler_queue_depth", "ser_uptime_seconds",
    *(f"{h}_{suffix}" for h in ("ser_batch_size", "ser_inference_seconds", "ser_chunks_encoded",
                                "ser_end_to_end_latency_seconds") for suffix in ("bucket", "sum", "count")),
}


def _record(m: DaemonMetrics) -> None:
    """One of every kind of update, labelled ones included."""
    m.windows_scored.inc(9)
    m.windows_dropped.inc(2, "stale")
    m.windows_dropped.inc(3, "queue_full")
    m.windows_dropped.inc(1, "stale")
    m.errors_sent.inc(1, "bad_message")
    m.connections_refused.inc(1, "unauthorized")
    m.clients_closed.inc(1, "not_reading")
    m.xruns.inc(4)
    m.client_dropped.inc(5)
    m.engine_failures.inc()
    m.clients.set(3)
    m.streams.set(2)
    m.queue_depth.set(7)
    m.uptime.set(12.5)
    m.batch_size.observe(3)
    m.inference_seconds.observe(0.02)
    m.chunks_encoded.observe(8)
    m.latency_seconds.observe(0.03)
    m.latency_seconds.observe(7.0)


def test_metrics_text_format():
    m = DaemonMetrics()
    m.windows_dropped.inc(2, "stale")
    m.latency_seconds.observe(0.03)
    m.latency_seconds.observe(7.0)
    text = m.render()
    assert 'ser_windows_dropped_total{reason="stale"} 2.0' in text
    assert 'ser_end_to_end_latency_seconds_bucket{le="0.05"} 1.0' in text
    assert 'ser_end_to_end_latency_seconds_bucket{le="+Inf"} 2.0' in text
    assert "ser_end_to_end_latency_seconds_count 2.0" in text
    assert "# TYPE ser_batch_size histogram" in text
    assert "# TYPE ser_windows_scored_total counter" in text  # prometheus_client's _total stripping is undone
    assert "# HELP ser_end_to_end_latency_seconds From a window's last sample arriving to its prediction" in text
    assert "# TYPE ser_clients gauge" in text


def test_sample_names_are_the_daemons():
    m = DaemonMetrics()
    _record(m)
    assert {s.name for s in parse_metrics(m.render())} == NAMES


@pytest.mark.parametrize("const_labels", [IDENTITY, None, {}])
def test_constant_labels_on_every_sample_or_none(const_labels):
    m = DaemonMetrics(const_labels)
    _record(m)
    assert m.const_labels == (const_labels or {})
    samples = parse_metrics(m.render())
    assert {s.name for s in samples} == NAMES
    for s in samples:
        if const_labels:
            assert {k: s.labels.get(k) for k in IDENTITY} == IDENTITY, s
        else:
            assert not set(s.labels) & set(IDENTITY), s
    # The metric's own labels are there too, next to the constant ones.
    stale = [s for s in samples if s.name == "ser_windows_dropped_total" and s.labels.get("reason") == "stale"]
    assert len(stale) == 1 and stale[0].value == 3


def test_constant_labels_may_not_clash_with_a_metrics_own():
    with pytest.raises(ValueError, match="reason"):
        DaemonMetrics({"reason": "x"})


def test_values_read_back():
    m = DaemonMetrics(IDENTITY)
    _record(m)
    assert m.windows_scored.value() == 9
    assert m.windows_dropped.value("stale") == 3 and m.windows_dropped.value("queue_full") == 3
    assert m.windows_dropped.value() == 6  # summed over reasons
    assert m.windows_dropped.value("never_seen") == 0
    assert "never_seen" not in m.render()  # reading creates no series
    assert m.errors_sent.value("bad_message") == 1 and m.errors_sent.value() == 1
    assert m.xruns.value() == 4 and m.client_dropped.value() == 5 and m.engine_failures.value() == 1
    assert m.clients.value() == 3 and m.streams.value() == 2 and m.queue_depth.value() == 7
    m.clients.set(1)
    assert m.clients.value() == 1
    assert m.latency_seconds.count == 2 and m.latency_seconds.sum == pytest.approx(7.03)
    assert m.batch_size.count == 1 and m.inference_seconds.count == 1 and m.chunks_encoded.count == 1
    assert m.registry.get_sample_value("ser_windows_dropped_total", {**IDENTITY, "reason": "stale"}) == 3


def test_wrong_label_values_are_refused():
    m = DaemonMetrics()
    with pytest.raises(ValueError):
        m.windows_dropped.inc(1)  # its reason is missing
    with pytest.raises(ValueError):
        m.windows_scored.inc(1, "stale")  # it has no labels
    with pytest.raises(ValueError):
        m.windows_dropped.value("stale", "extra")


def test_two_instances_share_nothing():
    a, b = DaemonMetrics(), DaemonMetrics()
    assert isinstance(a.registry, CollectorRegistry) and a.registry is not b.registry
    assert a.registry is not REGISTRY
    a.windows_scored.inc(5)
    a.windows_dropped.inc(1, "stale")
    a.latency_seconds.observe(0.1)
    b.windows_scored.inc(2)
    assert a.windows_scored.value() == 5 and b.windows_scored.value() == 2
    assert b.windows_dropped.value() == 0 and b.latency_seconds.count == 0
    assert REGISTRY.get_sample_value("ser_windows_scored_total") is None  # nothing leaked into the global one


def test_no_created_series():
    m = DaemonMetrics(IDENTITY)
    _record(m)
    text = m.render()
    assert "_created" not in text
    assert all(not s.name.endswith("_created") for metric in m.registry.collect() for s in metric.samples)


def test_other_metrics_join_the_same_registry():
    """What the Ray Serve ingress does: its own metrics, with the same labels, in the one ``/metrics``."""
    m = DaemonMetrics(IDENTITY)
    retries = PromCounter("ser_encoder_retries", "Encoder calls sent again.", tuple(IDENTITY), registry=m.registry)
    retries.labels(**IDENTITY).inc()
    got = Metrics.parse(m.render())
    assert got.sum("ser_encoder_retries_total", **IDENTITY) == 1
    assert "ser_windows_scored_total" in got.names() and "_created" not in m.render()


def test_buckets_are_the_exported_ones():
    m = DaemonMetrics()
    samples = parse_metrics(m.render())

    def bounds(name: str) -> list[float]:
        return [float(s.labels["le"]) for s in samples if s.name == f"{name}_bucket"]

    assert bounds("ser_end_to_end_latency_seconds") == [*LATENCY_BUCKETS, float("inf")]
    assert bounds("ser_inference_seconds") == [*LATENCY_BUCKETS, float("inf")]
    assert bounds("ser_batch_size") == bounds("ser_chunks_encoded") == [*BATCH_BUCKETS, float("inf")]


@pytest.mark.parametrize("const_labels", [IDENTITY, None])
def test_bench_parser_reads_the_recorded_numbers(const_labels):
    m = DaemonMetrics(const_labels)
    _record(m)
    got = Metrics.parse(m.render())
    assert got.sum("ser_windows_scored_total") == 9
    assert got.by_label("ser_windows_dropped_total") == {"stale": 3, "queue_full": 3}
    assert got.by_label("ser_protocol_errors_total") == {"bad_message": 1}
    assert got.by_label("ser_windows_scored_total") == {"total": 9}
    assert got.sum("ser_xruns_total") == 4 and got.sum("ser_client_messages_dropped_total") == 5
    assert got.sum("ser_clients") == 3 and got.sum("ser_scheduler_queue_depth") == 7 and got.sum("ser_uptime_seconds") == 12.5
    assert got.sum("ser_end_to_end_latency_seconds_count") == 2
    assert got.sum("ser_end_to_end_latency_seconds_sum") == pytest.approx(7.03)
    assert got.sum("ser_end_to_end_latency_seconds_bucket", le="0.05") == 1
    assert got.sum("ser_end_to_end_latency_seconds_bucket", le="+Inf") == 2
    assert got.sum("ser_batch_size_bucket", le="4.0") == 1 and got.sum("ser_batch_size_bucket", le="2.0") == 0
    if const_labels:
        assert got.sum("ser_windows_dropped_total", reason="stale", **IDENTITY) == 3


def test_bench_parser_still_reads_the_old_hand_written_format():
    old = ('# HELP ser_windows_dropped_total Due windows dropped.\n# TYPE ser_windows_dropped_total counter\n'
           'ser_windows_dropped_total{reason="stale"} 2\nser_batch_size_bucket{le="1"} 0\n'
           'ser_batch_size_bucket{le="+Inf"} 3\nser_batch_size_count 3\n')
    got = Metrics.parse(old)
    assert got.by_label("ser_windows_dropped_total") == {"stale": 2}
    assert got.sum("ser_batch_size_bucket", le="+Inf") == 3 and got.sum("ser_batch_size_count") == 3


def test_updates_from_many_threads_all_count():
    m = DaemonMetrics(IDENTITY)

    def work() -> None:
        for _ in range(2000):
            m.windows_scored.inc()
            m.windows_dropped.inc(1, "stale")
            m.latency_seconds.observe(0.01)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.windows_scored.value() == m.windows_dropped.value("stale") == m.latency_seconds.count == 8000
