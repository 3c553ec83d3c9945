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
import math
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
from bench.lib import HOST, REPO, RESULTS, Daemon, Metrics, cpu_seconds, rss_mb, table, write_json
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


def markdown(doc: dict) -> str:
    head = ["N", "daemon p50 / p99 ms", "daemon drops", "daemon CPU %", "cluster p50 / p99 ms", "cluster drops",
            "cluster CPU %", "added p50 / p99 ms", "encoder call p50 / p99 ms (bucket)", "Ray per call p50 / p99 ms (bucket)",
            "head in the ingress ms per call", "CPU ms per window outside engine (daemon / cluster)", "daemon ok",
            "cluster ok"]
    rows = []
    for d, c in zip(doc["daemon"], doc["cluster"], strict=True):
        rows.append([
            d["streams"], f"{d['latency_p50_ms']:.0f} / {d['latency_p99_ms']:.0f}", d["dropped_windows"] + d["client_seq_gaps"],
            f"{d['cpu_percent']:.0f}", f"{c['latency_p50_ms']:.0f} / {c['latency_p99_ms']:.0f}",
            c["dropped_windows"] + c["client_seq_gaps"], f"{c['cpu_percent']:.0f}",
            f"{c['latency_p50_ms'] - d['latency_p50_ms']:+.0f} / {c['latency_p99_ms'] - d['latency_p99_ms']:+.0f}",
            f"{c.get('encoder_roundtrip_p50_ms', float('nan')):.0f} / {c.get('encoder_roundtrip_p99_ms', float('nan')):.0f}",
            f"{c.get('ray_overhead_p50_ms', float('nan')):.0f} / {c.get('ray_overhead_p99_ms', float('nan')):.0f}",
            f"{c.get('head_ms_per_call', float('nan')):.2f}",
            f"{d['cpu_outside_engine_ms_per_window']:.1f} / {c['cpu_outside_engine_ms_per_window']:.1f}",
            "yes" if d["ok"] else "no", "yes" if c["ok"] else "no",
        ])
    roles = sorted({k for c in doc["cluster"] for k in c.get("cpu_s_by_role", {})})
    share_rows = []
    for c in doc["cluster"]:
        spent = c.get("cpu_s_by_role", {})
        total = sum(spent.values()) or float("nan")
        share_rows.append([c["streams"], *(f"{100 * spent.get(k, 0.0) / total:.0f}" for k in roles)])
    best = doc["max_streams_within_budget"]
    shares = f"\nWhere the cluster's CPU goes (% of its CPU seconds per point, by process):\n\n{table(['N', *roles], share_rows)}\n"
    return (f"{doc['seconds_per_n']:g} s per point, {doc['ingress']} ingress + {doc['encoders']} encoder replica(s), "
            f"hop {doc['hop_s']:g} s, the load generator on the same cores:\n\n{table(head, rows)}\n\n"
            f"Largest N with p99 < {BUDGET_MS:.0f} ms and no dropped window: daemon {best['daemon'] or 'none'}, "
            f"cluster {best['cluster'] or 'none'} (of the N measured).\n" + (shares if roles else ""))


CAPACITY_STREAMS = (1_000, 10_000)
GPU_CHUNKS_PER_S = (2_000, 8_000)  # a GPU encoder's throughput: a parameter until one is measured
CORE_BUSY = 0.7  # plan a single-threaded Python process (proxy, ingress) at this share of one core
CONNECTIONS_PER_INGRESS = 64  # conf/serve.yaml: server.max_clients per ingress replica


def capacity(doc: dict) -> dict:
    """Replicas, cores and GPUs for ``CAPACITY_STREAMS`` live streams, from the marginal cost of a stream measured.

    Each part's CPU per stream and second of audio is the slope between the two largest points that held
    (``delta cpu_s_by_role[part] / delta (N x span)``), so what a part spends whatever the load (the
    controller's and the proxy's polling, the GCS, the raylet, the dashboard) does not count per stream;
    with one point it is that point's share (an overestimate). A stream needs ``1 / hop`` chunks a second.
    """
    ok = [r for r in doc["cluster"] if r["ok"]]  # a saturated point measures the queue, not the cost
    pts = sorted(ok or doc["cluster"][:1], key=lambda r: r["streams"])[-2:]
    hi = pts[-1]
    lo = pts[0] if len(pts) == 2 else {"streams": 0, "span_s": hi["span_s"], "cpu_s_by_role": {}}
    stream_s = hi["streams"] * hi["span_s"] - lo["streams"] * lo["span_s"]
    per_stream = {k: max(0.0, (v - lo["cpu_s_by_role"].get(k, 0.0)) / stream_s) for k, v in hi.get("cpu_s_by_role", {}).items()}
    n = f"{lo['streams']} -> {hi['streams']}" if lo["streams"] else str(hi["streams"])
    chunks_per_stream_s = 1.0 / doc["hop_s"]
    rows = []
    for streams in CAPACITY_STREAMS:
        ingress_cores = streams * per_stream.get("ingress", float("nan"))
        proxy_cores = streams * per_stream.get("proxy", float("nan"))
        encoder_cores = streams * per_stream.get("encoder", float("nan"))
        ingress_replicas = max(math.ceil(streams / CONNECTIONS_PER_INGRESS), math.ceil(ingress_cores / CORE_BUSY))
        rows.append({
            "streams": streams,
            "chunks_per_s": streams * chunks_per_stream_s,
            "ingress_cores": ingress_cores,
            "ingress_replicas": ingress_replicas,
            "proxy_cores": proxy_cores,
            "proxies": math.ceil(proxy_cores / CORE_BUSY),
            "encoder_cpu_cores": encoder_cores,
            "gpus": {str(g): math.ceil(streams * chunks_per_stream_s / g) for g in GPU_CHUNKS_PER_S},
        })
    return {"from_point": n, "per_stream_cores": per_stream, "rows": rows}


def capacity_markdown(cap: dict) -> str:
    head = ["streams", "chunks/s", "ingress cores (replicas)", "proxy cores (proxies)", "encoder: CPU cores",
            *(f"encoder: GPUs at {g:,} chunks/s" for g in GPU_CHUNKS_PER_S)]
    body = [[f"{r['streams']:,}", f"{r['chunks_per_s']:,.0f}", f"{r['ingress_cores']:.0f} ({r['ingress_replicas']})",
             f"{r['proxy_cores']:.0f} ({r['proxies']})", f"{r['encoder_cpu_cores']:.0f}",
             *(str(r["gpus"][str(g)]) for g in GPU_CHUNKS_PER_S)] for r in cap["rows"]]
    per = ", ".join(f"{k} {1000 * v:.1f}" for k, v in sorted(cap["per_stream_cores"].items()))
    return (f"Marginal cost of a stream between N = {cap['from_point']} (CPU ms per second of its audio: {per}); replicas at "
            f"{CORE_BUSY:.0%} of a core or {CONNECTIONS_PER_INGRESS} connections each:\n\n{table(head, body)}\n")


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
        print(markdown(doc))
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
    print(markdown(doc))
    print(capacity_markdown(doc["capacity"]))
    out = write_json(args.out, doc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
