"""Benchmark of the daemon under hostile clients: do well-behaved streams keep their predictions?

Starts ``ser-listen`` on loopback (no local source), opens a few well-behaved
WebSocket clients that stream 16 kHz speech at real-time pace, then, from a
second process, well over a hundred hostile clients of the six kinds :mod:`bench.crowd` describes
(garbage, fast_audio, cycler, non_reader, vanisher, burst), all at once.

Each hostile client reconnects when the daemon closes it, until the end.
Halfway through, ``--late`` more well-behaved clients connect and start
streaming: for them it reports how long their first prediction took and
their steady state from 3 s on (no target; a daemon that protects its live
streams must not do it by shutting new ones out). For
the well-behaved streams it measures predictions per second, the worst gap
between consecutive predictions, and end-to-end latency (frame holding a
window's last sample sent -> its prediction received); for the daemon its RSS,
CPU, the connections it refused and the clients it closed (by reason); then
it sends SIGTERM while the load is still on and times the exit. Prints a
table and writes JSON (bench/results/hostile.json). Loopback only, bounded in
time (``--seconds`` of load, about 20 s more for start and stop).

    python -m bench.hostile                      # shipped default model, 20 s of load
    python -m bench.hostile --seconds 8 --good 1 # quicker
    python -m bench.hostile --seconds 6 --scale 0.2 --late 1 --out /tmp/hostile.json  # a smoke run
    python -m bench.hostile --crowd-nice 0       # the crowd competes with the daemon for the cores
    python -m bench.hostile --kind burst=0       # one kind left out (or any count: NAME=N)

Targets (issue 11): a well-behaved stream at hop 0.5 s never waits more than
1 s for a prediction, its p99 latency stays under 250 ms, RSS under 1 GB, no
crash; the exit code is 0 only when all are met. The load generator shares
the machine with the daemon: the crowd runs at nice 10 by default (on a real
network it runs elsewhere), its messages and bytes sent are reported so a
starved crowd is not mistaken for a strong daemon, and the good clients' send
lag is reported so a saturated generator is not mistaken for a slow daemon.
Each good stream's latency is also split into the daemon's own part (window
due -> prediction published) and the rest (sockets and event loops). This is
a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import sys
import threading
import time

import numpy as np

from bench.crowd import KINDS, hostile_process
from bench.lib import RESULTS, Daemon, demo_pcm, percentile, write_json
from bench.streams import FRAME_S, realtime_stream, seq_gaps, window_latencies_ms
from bench.tables import hostile_markdown
from contract.audio import SAMPLE_RATE

TARGET_GAP_S = 1.0
TARGET_P99_MS = 250.0
TARGET_RSS_MB = 1024.0
TARGET_SIGTERM_S = 2.0
LATE_SETTLE_S = 3.0  # a late joiner's steady state is measured from this long after its first frame
DAEMON_OVERRIDES = ["server.max_clients=200"]  # room for the hostile crowd; every other limit as shipped
SCRAPED = ("ser_connections_refused_total", "ser_clients_closed_total", "ser_protocol_errors_total",
           "ser_windows_dropped_total", "ser_client_messages_dropped_total", "ser_windows_scored_total",
           "ser_inference_seconds_sum", "ser_inference_seconds_count", "ser_batch_size_sum",
           "ser_chunks_encoded_sum", "ser_chunks_encoded_count")  # read once, at SIGTERM


# ---------------------------------------------------------------- well-behaved streams (this process)


async def good_stream(url: str, pcm: np.ndarray, t_begin: float, t_stop: float, out: dict) -> None:
    """A well-behaved stream from ``t_begin``; the SIGTERM ends it (its close is waited for up to 3 s)."""
    await realtime_stream(url, pcm, (t_begin, t_stop), out, tail_s=3.0)


async def late_stream(url: str, pcm: np.ndarray, t_begin: float, t_stop: float, out: dict) -> None:
    """A well-behaved stream that connects in the middle of the attack (its connection too)."""
    await asyncio.sleep(max(0.0, t_begin - 0.5 - time.monotonic()))
    await good_stream(url, pcm, t_begin, t_stop, out)


def late_summary(o: dict, t_end: float) -> dict:
    """A late joiner: seconds from its first audio frame to its first prediction, then its steady state."""
    if not o.get("sends"):
        return {"first_prediction_s": float("nan"), "errors": [e.get("code") for e in o.get("errors", [])]}
    t0 = o["sends"][0]
    first = next((p[2] for p in o["preds"]), None)
    steady = good_summary(o, t0 + LATE_SETTLE_S, t_end) if t_end - t0 > LATE_SETTLE_S + 1 else {}
    return {"slot_wait_s": o.get("slot_wait_s"), "busy": o.get("busy"),
            "first_prediction_s": (first - t0) if first is not None else float("inf"), "steady": steady,
            "errors": [e.get("code") for e in o["errors"]]}


def good_summary(o: dict, t_from: float, t_to: float) -> dict:
    """Predictions received in [t_from, t_to]: rate, worst gap, latency; seq gaps are dropped windows."""
    frame = int(FRAME_S * SAMPLE_RATE)
    preds = [p for p in o["preds"] if t_from <= p[2] <= t_to]
    times = [p[2] for p in preds]
    edges = [t_from, *times, t_to]  # a stream silent over the whole span has one gap: the span
    # client-measured, and that minus daemon-measured: in sockets and event loops, not the scheduler
    lat, outside = window_latencies_ms(o, frame, t_from, t_to)
    seqs = [p[0] for p in preds]
    return {
        "predictions": len(preds),
        "predictions_per_s": len(preds) / (t_to - t_from),
        "worst_gap_s": float(np.max(np.diff(edges))),
        "latency_p50_ms": percentile(lat, 50),
        "latency_p99_ms": percentile(lat, 99),
        "latency_max_ms": float(np.max(lat)) if lat else float("nan"),
        "daemon_latency_p50_ms": percentile([p[3] for p in preds], 50),
        "daemon_latency_p99_ms": percentile([p[3] for p in preds], 99),
        "outside_daemon_p50_ms": percentile(outside, 50),
        "outside_daemon_p99_ms": percentile(outside, 99),
        "seq_gaps": seq_gaps(seqs, first=None),
        "errors": [e.get("code") for e in o["errors"]],
        "send_lag_p99_ms": percentile(o["lags"], 99) * 1000,
        "close_code": o.get("close"),
    }


def run(args: argparse.Namespace) -> dict:
    kinds = {k: int(round(n * args.scale)) for k, n in KINDS.items()}
    for spec in args.kind:
        name, _, n = spec.partition("=")
        if name not in KINDS or not n.isdigit():
            raise SystemExit(f"--kind {spec!r}: expected NAME=N with NAME one of {', '.join(KINDS)}")
        kinds[name] = int(n)
    d = Daemon(args.model, args.backend, [*DAEMON_OVERRIDES, *args.set])
    url = d.ws_url
    health = d.healthz()
    pcm = demo_pcm()

    now = time.monotonic()
    t_good = now + 1.0  # good streams first: they hold their slots before the crowd arrives
    t_hostile = t_good + args.warmup
    t_end = t_hostile + args.seconds
    ctx = mp.get_context("spawn")
    results_q: mp.Queue = ctx.Queue()
    crowd = ctx.Process(target=hostile_process, args=(url, t_hostile, t_end + 1.0, kinds, results_q, args.crowd_nice), daemon=True)
    crowd.start()

    samples: list[tuple[float, float, float]] = []  # (time, rss MB, cpu s)
    stop_sampling = threading.Event()

    def sample() -> None:
        for _ in range(int((t_end - time.monotonic() + 60) / 0.25)):  # bounded: the run ends long before
            if stop_sampling.is_set() or d.p.poll() is not None:
                break
            try:
                samples.append((time.monotonic(), d.rss_mb(), d.cpu_seconds()))
            except (OSError, ValueError, IndexError):
                break
            stop_sampling.wait(0.25)

    threading.Thread(target=sample, daemon=True).start()
    term: dict = {}

    def sigterm_at_end() -> None:
        time.sleep(max(0.0, t_end - time.monotonic()))
        try:
            m = d.metrics()
        except OSError:  # gone: term["crashed"] says so
            m = None
        if m is not None:
            term["metrics"] = {name: m.by_label(name) for name in SCRAPED}
        term["crashed"] = d.p.poll() is not None
        t0 = time.monotonic()
        d.p.send_signal(signal.SIGTERM)  # the crowd is still at it
        try:
            term["code"] = d.p.wait(10)
            term["exit_s"] = time.monotonic() - t0
        except Exception:  # noqa: BLE001 - still running after 10 s
            term["code"], term["exit_s"] = None, float("inf")
            d.p.kill()

    killer = threading.Thread(target=sigterm_at_end, daemon=True)
    killer.start()

    t_late = t_hostile + args.seconds / 2  # late joiners: well-behaved streams that start in the thick of it

    async def good_all() -> tuple[list[dict], list[dict]]:
        outs = [dict() for _ in range(args.good)]
        lates = [dict() for _ in range(args.late)]
        await asyncio.gather(*(good_stream(url, pcm, t_good + i * 0.13, t_end + 5.0, o) for i, o in enumerate(outs)),
                             *(late_stream(url, pcm, t_late + i * 0.29, t_end + 5.0, o) for i, o in enumerate(lates)),
                             return_exceptions=True)
        return outs, lates

    outs, lates = asyncio.run(good_all())
    killer.join(15)
    stop_sampling.set()
    crowd.join(30)
    hostile = results_q.get(timeout=5) if not results_q.empty() else {}
    if crowd.is_alive():
        crowd.kill()

    span = [s for s in samples if t_hostile <= s[0] <= t_end]
    cpu = 100 * (span[-1][2] - span[0][2]) / (span[-1][0] - span[0][0]) if len(span) > 1 else float("nan")
    goods = [good_summary(o, t_hostile + 1.0, t_end) for o in outs]
    late = [late_summary(o, t_end) for o in lates]
    m = term.get("metrics", {})
    row = {
        "good_streams": goods,
        "late_streams": late,
        "predictions_per_s_min": min(g["predictions_per_s"] for g in goods),
        "worst_gap_s": max(g["worst_gap_s"] for g in goods),
        "latency_p99_ms": max(g["latency_p99_ms"] for g in goods),
        "latency_p50_ms": max(g["latency_p50_ms"] for g in goods),
        "rss_mb_max": max((s[1] for s in samples), default=float("nan")),
        "cpu_percent": cpu,
        "connections_refused": m.get("ser_connections_refused_total", {}),
        "clients_closed": m.get("ser_clients_closed_total", {}),
        "protocol_errors": m.get("ser_protocol_errors_total", {}),
        "windows_dropped": m.get("ser_windows_dropped_total", {}),
        "windows_scored": m.get("ser_windows_scored_total", {}).get("total", float("nan")),
        "client_messages_dropped": m.get("ser_client_messages_dropped_total", {}).get("total", 0.0),
        "engine_batches": m.get("ser_inference_seconds_count", {}).get("total", 0.0),
        "engine_busy_s": m.get("ser_inference_seconds_sum", {}).get("total", 0.0),
        "chunks_encoded": m.get("ser_chunks_encoded_sum", {}).get("total", 0.0),
        "chunk_batches": m.get("ser_chunks_encoded_count", {}).get("total", 0.0),
        "crashed": term.get("crashed", True),
        "sigterm_exit_s": term.get("exit_s", float("inf")),
        "sigterm_exit_code": term.get("code"),
        "good_closed_with": [o.get("close") for o in outs],
        "hostile": hostile,
        "hostile_clients_at_once": sum(h.get("max_open", 0) for h in hostile.values()),
    }
    row["targets"] = {
        "worst_gap_s <= 1.0": row["worst_gap_s"] <= TARGET_GAP_S,
        "latency_p99_ms < 250": row["latency_p99_ms"] < TARGET_P99_MS,
        "rss_mb < 1024": row["rss_mb_max"] < TARGET_RSS_MB,
        "no crash": not row["crashed"],
        "sigterm exit <= 2 s": row["sigterm_exit_s"] <= TARGET_SIGTERM_S and row["sigterm_exit_code"] == 0,
    }
    row["kinds"] = kinds
    row["backend"] = f"{health['backend']} on {health['device']}"
    row["model_name"] = health["model"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="ONNX model (default: the shipped default model)")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of hostile load")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds the good streams run alone first")
    ap.add_argument("--good", type=int, default=2, help="well-behaved streams")
    ap.add_argument("--late", type=int, default=2, help="well-behaved streams that join halfway through the attack")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the number of hostile clients of each kind")
    ap.add_argument("--kind", action="append", default=[], metavar="NAME=N", help="hostile clients of one kind (repeatable)")
    ap.add_argument("--crowd-nice", type=int, default=10, help="nice level of the hostile crowd's process")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="daemon config override (repeatable)")
    ap.add_argument("--out", default=str(RESULTS / "hostile.json"))
    args = ap.parse_args()
    if args.good < 1:
        raise SystemExit("--good must be at least 1: the targets are about well-behaved streams")
    load0 = os.getloadavg()
    row = run(args)
    results = {
        "machine": {"cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
        "seconds": args.seconds,
        "daemon_overrides": [*DAEMON_OVERRIDES, *args.set],
        "crowd_nice": args.crowd_nice,
        "late_settle_s": LATE_SETTLE_S,
        **row,
    }
    print()
    print(hostile_markdown(results))
    out = write_json(args.out, results, default=str)
    print(f"\nwrote {out}")
    sys.exit(0 if all(row["targets"].values()) else 1)


if __name__ == "__main__":
    main()
