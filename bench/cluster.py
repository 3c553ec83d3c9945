"""Benchmark of ser on Ray Serve against the bare daemon, same load, same run, on loopback.

For each N, the load of ``bench.daemon`` (N remote streams of 16 kHz speech in 100 ms
frames at real-time pace, starts spread over one hop, the generator in its own process)
goes first to a bare ``ser-listen`` and then to the Serve application of
``conf/serve.yaml`` (``serve run`` of a copy with this run's port and fixed replica
counts: ``--ingress`` and ``--encoders``, 1 and 1 by default, since these two cores hold
one of each). Per point: predictions per second, end-to-end latency p50/p99, dropped
windows, the CPU of every process (the daemon's; for the cluster the whole process
tree of ``serve run``: GCS, raylet, proxy, controller, replicas), and where the time goes:

- **Ray's added latency per window**: cluster p50/p99 minus the daemon's at the same N;
- **per encoder call**: the ingress's round trip to the encoder and that round trip less
  the encoder's own engine time (``ser_encoder_overhead_seconds``: Ray's cost, p50/p99
  from the histogram, so bucket-coarse);
- **CPU outside the engine**: all CPU seconds less the engine's busy seconds (the
  daemon's ``ser_inference_seconds``; the encoder's ``ser_encoder_engine_seconds`` plus
  the ingress's local classify), per window scored.

A point passes with p99 < 250 ms, no dropped window and every stream served.

    python -m bench.cluster                          # N = 8,16,32,48
    python -m bench.cluster --streams 4 --seconds 8  # a smoke run

Every loop is bounded in count and time; everything listens on 127.0.0.1. A benchmark,
not a test; it needs the ``cluster`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.daemon import BUDGET_MS, hop_from_hello, measure
from bench.lib import HOST, REPO, RESULTS, Daemon, Metrics, cpu_seconds, rss_mb, write_json
from bench.tables import capacity, capacity_markdown, cluster_markdown
from contract.audio import SAMPLE_RATE

START_TIMEOUT_S = 240.0  # serve run: a local Ray, the controller, the proxy, both deployments' replicas


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def process_tree(pid: int, limit: int = 500) -> list[int]:
    """``pid`` and its descendants (bounded), as /proc lists them now."""
    out, todo = [], [pid]
    while todo and len(out) < limit:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


ROLES = (  # /proc cmdline fragment -> the part of the cluster a process is (Ray sets its workers' titles)
    ("ServeReplica:", None),  # ServeReplica:<app>:<deployment> -> the deployment's name
    ("ProxyActor", "proxy"),
    ("ServeController", "controller"),
    ("gcs_server", "gcs"),
    ("raylet", "raylet"),
    ("dashboard", "dashboard"),
    ("log_monitor", "log monitor"),
    ("serve run", "serve run (driver)"),
)


def role_of(pid: int) -> str:
    """Which part of the cluster process ``pid`` is, from its command line."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    for fragment, role in ROLES:
        if fragment in cmd:
            if role is None:
                # "ServeReplica:ser:Ingress", or "...:Ingress.handle_request" while the replica serves one
                return cmd.split(fragment, 1)[1].split()[0].split(":")[-1].split(".")[0].lower()
            return role
    return "other"


def histogram_quantile(m: Metrics, name: str, q: float) -> float:
    """Quantile ``q`` (0-1) of a Prometheus histogram in seconds, from its cumulative buckets (upper bound of the bucket)."""
    buckets: dict[float, float] = {}
    for s in m.samples:
        if s.name == f"{name}_bucket":
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
    if not buckets:
        return float("nan")
    total = max(buckets.values())
    if total <= 0:
        return float("nan")
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le
    return float("inf")


class ServeApp:
    """``serve run`` of conf/serve.yaml with this run's port and replica counts, in its own session.

    Duck-types :class:`bench.lib.Daemon` for :func:`bench.daemon.measure` (``ws_url``,
    ``metrics``, ``cpu_seconds``, ``rss_mb``, ``hello``): its metrics are the one ingress
    replica's ``/metrics``, its CPU and RSS those of the whole process tree.
    """

    def __init__(self, ingress: int, encoders: int, max_streams: int, threads: int | None) -> None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        cfg = yaml.safe_load((REPO / "conf" / "serve.yaml").read_text())
        cfg["http_options"]["port"] = self.port
        cfg["proxy_location"] = "HeadOnly"
        app = cfg["applications"][0]
        app["args"]["threads"] = threads
        server = app["args"]["config"].setdefault("server", {})
        server["max_clients"] = server["max_remote_streams"] = max_streams
        for d in app["deployments"]:
            d.pop("autoscaling_config", None)
            d["num_replicas"] = ingress if d["name"] == "Ingress" else encoders
            if d["name"] == "Ingress":
                d["max_ongoing_requests"] = max_streams + 16
        self.config = cfg
        fd, name = tempfile.mkstemp(suffix=".yaml", prefix="ser-serve-")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(cfg, f)
        self.config_path = Path(name)
        env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1"}
        env.pop("RAY_ADDRESS", None)
        serve = Path(sys.executable).with_name("serve")
        self.log = self.config_path.with_suffix(".log")
        with self.log.open("w") as log:  # the child keeps its own descriptor
            self.p = subprocess.Popen([str(serve), "run", str(self.config_path)], cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.ws_url = f"ws://{HOST}:{self.port}/ws"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                health = self.healthz()
                if health.get("status") == "ok":
                    break
            except OSError:
                pass
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"serve run did not start; its log: {self.log}")
            time.sleep(1.0)

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}", timeout=10) as r:
            return r.read()

    def healthz(self) -> dict:
        return json.loads(self._get("/healthz"))

    def metrics(self) -> Metrics:
        return Metrics.parse(self._get("/metrics").decode())

    def encoder_metrics(self) -> Metrics:
        return Metrics.parse(self._get("/metrics/encoder").decode())

    def hello(self, timeout: float = 10.0) -> dict:
        return Daemon.hello(self, timeout)  # type: ignore[arg-type]

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in process_tree(self.p.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += cpu_seconds(pid)
        return total

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds of the process tree by part (ingress, encoder, proxy, controller, gcs, raylet, ...)."""
        out: dict[str, float] = {}
        for pid in process_tree(self.p.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                role = role_of(pid)
                out[role] = out.get(role, 0.0) + cpu_seconds(pid)
        return out

    def rss_mb(self) -> float:
        total = 0.0
        for pid in process_tree(self.p.pid):
            with contextlib.suppress(OSError, ValueError):
                total += rss_mb(pid)
        return total

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT (serve run shuts Serve and its local Ray down), then SIGKILL to the whole session."""
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(5)
        self.config_path.unlink(missing_ok=True)


def point(target: Any, n: int, seconds: float, frame: int, hop_s: float, engine_s: Any) -> dict:
    """``bench.daemon.measure`` plus the engine's busy seconds over the same span (``engine_s()`` before and after)."""
    by_role = getattr(target, "cpu_by_role", None)
    r0 = by_role() if by_role else {}
    e0 = engine_s()
    row = measure(target, n, seconds, frame, hop_s)
    e1 = engine_s()
    if by_role:  # the span of measure() plus its tail: close enough for shares, which is what the table shows
        r1 = by_role()
        row["cpu_s_by_role"] = {k: round(r1[k] - r0.get(k, 0.0), 3) for k in sorted(r1)}
    busy = e1[0] - e0[0]
    row["engine_only_s"] = busy
    cpu_s = row["cpu_percent"] / 100 * row["span_s"]
    row["cpu_s"] = cpu_s
    scored = max(1.0, row["windows_scored_per_s"] * seconds)
    row["cpu_outside_engine_ms_per_window"] = 1000 * max(0.0, cpu_s - busy) / scored
    row["cpu_ms_per_window"] = 1000 * cpu_s / scored
    if len(e1) > 1:
        m, m0 = e1[1], e0[1]
        calls = m.sum("ser_encoder_roundtrip_seconds_count") - m0.sum("ser_encoder_roundtrip_seconds_count")
        local = (m.sum("ser_inference_seconds_sum") - m0.sum("ser_inference_seconds_sum")
                 - m.sum("ser_encoder_roundtrip_seconds_sum") + m0.sum("ser_encoder_roundtrip_seconds_sum"))
        row["encoder_calls"] = int(calls)
        row["head_ms_per_call"] = 1000 * local / calls if calls else float("nan")  # classify, in the ingress
        row["encoder_roundtrip_p50_ms"] = 1000 * histogram_quantile(m, "ser_encoder_roundtrip_seconds", 0.5)
        row["encoder_roundtrip_p99_ms"] = 1000 * histogram_quantile(m, "ser_encoder_roundtrip_seconds", 0.99)
        row["ray_overhead_p50_ms"] = 1000 * histogram_quantile(m, "ser_encoder_overhead_seconds", 0.5)
        row["ray_overhead_p99_ms"] = 1000 * histogram_quantile(m, "ser_encoder_overhead_seconds", 0.99)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="8,16,32,48", help="comma-separated N values, increasing")
    ap.add_argument("--seconds", type=float, default=15.0, help="streaming time per N")
    ap.add_argument("--ingress", type=int, default=1, help="ingress replicas")
    ap.add_argument("--encoders", type=int, default=1, help="encoder replicas")
    ap.add_argument("--threads", type=int, default=None, help="the encoder's onnxruntime threads (default: its CPUs)")
    ap.add_argument("--out", default=str(RESULTS / "cluster.json"))
    ap.add_argument("--tables", metavar="JSON", help="print the tables of an earlier run's JSON and exit")
    args = ap.parse_args()
    if args.tables:
        doc = json.loads(Path(args.tables).read_text())
        print(cluster_markdown(doc))
        print(capacity_markdown(capacity(doc)))
        return
    ns = [int(x) for x in args.streams.split(",")]
    if not ns or min(ns) < 1 or args.seconds <= 0 or args.ingress < 1 or args.encoders < 1:
        raise SystemExit("--streams: positive integers; --seconds > 0; --ingress, --encoders >= 1")
    frame = SAMPLE_RATE // 10
    doc: dict = {"seconds_per_n": args.seconds, "ingress": args.ingress, "encoders": args.encoders,
                 "threads": args.threads, "budget_ms": BUDGET_MS, "daemon": [], "cluster": []}

    d = Daemon(None, None, [f"server.max_clients={max(ns) + 8}", f"server.max_remote_streams={max(ns) + 8}"])
    try:
        hop_s = doc["hop_s"] = hop_from_hello(d)

        def daemon_engine() -> tuple[float]:
            return (d.metrics().sum("ser_inference_seconds_sum"),)

        for n in ns:
            row = point(d, n, args.seconds, frame, hop_s, daemon_engine)
            doc["daemon"].append(row)
            print(f"daemon  N={n:<4} p50={row['latency_p50_ms']:.0f} p99={row['latency_p99_ms']:.0f} ms "
                  f"drops={row['dropped_windows']}+{row['client_seq_gaps']} cpu={row['cpu_percent']:.0f}%", flush=True)
            time.sleep(1.0)
    finally:
        d.stop()

    c = ServeApp(args.ingress, args.encoders, max(ns) + 8, args.threads)
    try:
        doc["cluster_health"] = c.healthz()

        def cluster_engine() -> tuple[float, Metrics]:
            m = c.metrics()
            enc = c.encoder_metrics()
            classify_s = m.sum("ser_inference_seconds_sum") - m.sum("ser_encoder_roundtrip_seconds_sum")
            return (enc.sum("ser_encoder_engine_seconds_sum") + max(0.0, classify_s), m)

        for n in ns:
            row = point(c, n, args.seconds, frame, hop_s, cluster_engine)
            doc["cluster"].append(row)
            print(f"cluster N={n:<4} p50={row['latency_p50_ms']:.0f} p99={row['latency_p99_ms']:.0f} ms "
                  f"drops={row['dropped_windows']}+{row['client_seq_gaps']} cpu={row['cpu_percent']:.0f}% "
                  f"ray/call p50={row.get('ray_overhead_p50_ms', float('nan')):.0f} ms", flush=True)
            time.sleep(1.0)
    finally:
        c.stop()

    doc["max_streams_within_budget"] = {
        k: max([r["streams"] for r in doc[k] if r["ok"]], default=0) for k in ("daemon", "cluster")}
    doc["capacity"] = capacity(doc)
    print()
    print(cluster_markdown(doc))
    print(capacity_markdown(doc["capacity"]))
    out = write_json(args.out, doc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
