"""Benchmark of the daemon under load: N remote streams at real-time pace, on loopback.

Starts ``ser-listen`` on 127.0.0.1 (no local source) and, for each N, a load
generator in its own process (asyncio, N WebSocket clients; its CPU never
shares the daemon's or the measuring process's GIL). Each client streams 16 kHz
s16le speech in 100 ms frames at real-time pace; the N streams start spread
evenly over one hop (stream i at i x hop / N; the hop is read from the
daemon's ``hello``), so their windows fall due evenly, as independent users'
would. Per N (15 s each by default) it reports windows per second,
end-to-end latency p50/p99 (from sending the frame that holds a window's last
sample to receiving its prediction), dropped windows (the daemon's
``ser_windows_dropped_total`` plus sequence gaps seen by the clients), the
daemon's CPU % and RSS, and the generator's own lag (how late it sent frames)
and CPU, so a saturated generator is not mistaken for a slow daemon. A point
passes when p99 < 250 ms, no window was dropped and every stream got its
slot; it prints the largest N that passes. ``--modes batched,single`` also
runs the daemon with ``scheduler.max_batch=1`` (one window at a time) for
comparison. Prints a table and writes JSON (bench/results/daemon.json).

    python -m bench.daemon                                 # shipped default model, N = 32,64,96,128
    python -m bench.daemon --model engine/models/compact.onnx --keep-going
    python -m bench.daemon --streams 2,4 --seconds 5 --out /tmp/daemon.json   # a smoke run
    python -m bench.daemon --modes batched,single          # batched vs one window at a time

Every loop is bounded in count and time; everything stays on 127.0.0.1. This
is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import queue
import threading
import time

import numpy as np

from bench.lib import RESULTS, Daemon, cpu_seconds, demo_pcm, percentile, table, write_json
from bench.streams import realtime_stream, seq_gaps, window_latencies_ms
from bench.tables import daemon_markdown
from contract.audio import SAMPLE_RATE

BUDGET_MS = 250.0
CLIENT_LAG_LIMIT_MS = 100.0  # beyond this p99 send lag the generator, not the daemon, is what is measured
DEFAULT_HOP_S = 0.5  # only if the daemon's hello does not say
TAIL_S = 0.6  # after the last frame: the last windows' predictions
LEAD_S = 1.0  # from every stream open to the first frame: time for the measuring process to take its baselines


# ---------------------------------------------------------------- the load generator (its own process)


async def _generate(url: str, n: int, seconds: float, frame: int, hop_s: float, events: mp.Queue,
                    ready_timeout: float) -> list[dict]:
    pcm = demo_pcm()
    loop = asyncio.get_running_loop()
    go: asyncio.Future[float] = loop.create_future()
    settled = [0]  # streams open, refused or failed: when all are, the clock starts
    outs: list[dict] = [{} for _ in range(n)]

    def settle() -> None:
        settled[0] += 1
        if settled[0] == n and not go.done():
            go.set_result(time.monotonic() + LEAD_S)

    async def times(i: int) -> tuple[float, float]:
        t0 = await go
        return t0 + i * hop_s / n, t0 + seconds

    async def one(i: int, o: dict) -> None:
        told = [False]

        def ready() -> None:
            told[0] = True
            settle()

        when = times(i)
        try:
            await realtime_stream(url, pcm, when, o, frame_samples=frame, start_wait_s=ready_timeout / 2,
                                  tail_s=TAIL_S, on_ready=ready)
        except Exception as exc:  # noqa: BLE001 - one client's failure is a measurement, not the end of the run
            o.setdefault("errors", []).append({"code": "client_failed", "message": repr(exc)})
        finally:
            when.close()  # a no-op once awaited; otherwise it never will be
            if not told[0]:
                settle()

    async def barrier() -> None:  # every stream settled, or the timeout: then the clock starts for those open
        try:
            await asyncio.wait_for(asyncio.shield(go), ready_timeout)
        except asyncio.TimeoutError:
            if not go.done():
                go.set_result(time.monotonic() + LEAD_S)
        t0 = go.result()
        events.put(("ready", t0, t0 + seconds, sum("slot_wait_s" in o for o in outs)))

    await asyncio.gather(barrier(), *(one(i, o) for i, o in enumerate(outs)))
    return outs


def _summary(o: dict, frame: int) -> dict:
    """One stream, for the measuring process: latencies, lags, predictions, sequence gaps, errors."""
    lat, _ = window_latencies_ms(o, frame)
    return {"lat_ms": lat, "lag_ms": [x * 1000 for x in o.get("lags", [])], "preds": len(o.get("preds", [])),
            "gaps": seq_gaps([p[0] for p in o.get("preds", [])], first=0), "started": "slot_wait_s" in o,
            "errors": [e.get("code") for e in o.get("errors", [])]}


def generator_process(url: str, n: int, seconds: float, frame: int, hop_s: float, events: mp.Queue,
                      ready_timeout: float, nice: int) -> None:
    """Entry point of the generator's process: ("ready", t0, t_stop, streams open), then ("done", per-stream summaries)."""
    if nice:
        os.nice(nice)
    outs = asyncio.run(_generate(url, n, seconds, frame, hop_s, events, ready_timeout))
    events.put(("done", [_summary(o, frame) for o in outs]))


# ---------------------------------------------------------------- one point (the measuring process)


def measure(d: Daemon, n: int, seconds: float, frame: int, hop_s: float, gen_nice: int = 0) -> dict:
    ready_timeout = 30.0 + 0.2 * n
    ctx = mp.get_context("spawn")
    events: mp.Queue = ctx.Queue()
    gen = ctx.Process(target=generator_process, daemon=True,
                      args=(d.ws_url, n, seconds, frame, hop_s, events, ready_timeout, gen_nice))
    gen.start()
    rss: list[float] = []
    stop_rss = threading.Event()
    try:
        try:
            _, t0, t_stop, opened = events.get(timeout=ready_timeout + 60)  # spawn + imports + every stream open
        except queue.Empty:
            raise RuntimeError(f"N={n}: the load generator never reported its streams open") from None
        time.sleep(max(0.0, t0 - 0.05 - time.monotonic()))
        m0 = d.metrics()
        c0, g0, w0 = d.cpu_seconds(), cpu_seconds(gen.pid), time.monotonic()

        def sample_rss() -> None:
            for _ in range(int((t_stop - w0 + TAIL_S + 5) / 0.5) + 1):
                rss.append(d.rss_mb())
                if stop_rss.wait(0.5):
                    break

        threading.Thread(target=sample_rss, daemon=True).start()
        time.sleep(max(0.0, t_stop - time.monotonic()))
        c1, g1, w1 = d.cpu_seconds(), cpu_seconds(gen.pid), time.monotonic()
        try:
            _, streams = events.get(timeout=TAIL_S + 30)
        except queue.Empty:
            raise RuntimeError(f"N={n}: the load generator did not finish") from None
        m1 = d.metrics()
    finally:
        stop_rss.set()
        gen.join(10)
        if gen.is_alive():
            gen.kill()
            gen.join(5)

    def delta(name: str) -> float:
        return m1.sum(name) - m0.sum(name)

    lat = np.array([x for s in streams for x in s["lat_ms"]])
    lags = np.array([x for s in streams for x in s["lag_ms"]])
    preds = sum(s["preds"] for s in streams)
    row = {
        "streams": n,
        "streams_started": int(sum(s["started"] for s in streams)),
        "predictions": preds,
        "predictions_per_s": preds / seconds,
        "expected_per_s": n / hop_s,
        "windows_scored_per_s": delta("ser_windows_scored_total") / seconds,
        "latency_p50_ms": percentile(lat, 50),
        "latency_p99_ms": percentile(lat, 99),
        "cpu_percent": 100 * (c1 - c0) / (w1 - w0),
        "rss_mb": max(rss, default=float("nan")),
        "dropped_windows": int(delta("ser_windows_dropped_total")),
        "dropped_by_reason": {k: int(v - m0.by_label("ser_windows_dropped_total").get(k, 0.0))
                              for k, v in m1.by_label("ser_windows_dropped_total").items()
                              if v > m0.by_label("ser_windows_dropped_total").get(k, 0.0)},
        "client_seq_gaps": int(sum(s["gaps"] for s in streams)),
        "slow_client_drops": int(delta("ser_client_messages_dropped_total")),
        "client_send_lag_p50_ms": percentile(lags, 50),
        "client_send_lag_p99_ms": percentile(lags, 99),
        "client_send_lag_max_ms": float(lags.max()) if lags.size else float("nan"),
        "generator_cpu_percent": 100 * (g1 - g0) / (w1 - w0),
        "errors": sum(len(s["errors"]) for s in streams),
        "error_codes": sorted({c for s in streams for c in s["errors"]}),
        "span_s": w1 - w0,
        "streams_open_at_start": opened,
    }
    # The engine's own cost, under this load: what the cores left it per chunk encoded (with its classify).
    chunks = delta("ser_chunks_encoded_sum")
    row["engine_busy_s"] = delta("ser_inference_seconds_sum")
    row["chunks_encoded"] = int(chunks)
    row["chunks_per_batch"] = chunks / max(1.0, delta("ser_chunks_encoded_count"))
    row["engine_ms_per_chunk"] = 1000 * row["engine_busy_s"] / chunks if chunks else float("nan")
    row["ok"] = bool(row["latency_p99_ms"] < BUDGET_MS and row["dropped_windows"] == 0 and row["client_seq_gaps"] == 0
                     and row["streams_started"] == n)
    # A load generator that cannot keep real-time pace measures itself, not the daemon.
    row["client_bound"] = bool(row["client_send_lag_p99_ms"] > CLIENT_LAG_LIMIT_MS)
    return row


def text_table(results: dict) -> str:
    head = ["mode", "N", "win/s", "p50 ms", "p99 ms", "CPU %", "RSS MB", "drops", "lag p99", "gen CPU %",
            "ms/chunk", "chunks/b", "ok"]
    rows = []
    for mode, rs in results["modes"].items():
        for r in rs:
            rows.append([mode, r["streams"], f"{r['predictions_per_s']:.1f}", f"{r['latency_p50_ms']:.1f}",
                         f"{r['latency_p99_ms']:.1f}", f"{r['cpu_percent']:.0f}", f"{r['rss_mb']:.0f}",
                         f"{r['dropped_windows']}+{r['client_seq_gaps']}", f"{r['client_send_lag_p99_ms']:.1f}",
                         f"{r['generator_cpu_percent']:.0f}", f"{r['engine_ms_per_chunk']:.1f}", f"{r['chunks_per_batch']:.1f}",
                         ("yes" if r["ok"] else "no") + ("  (load generator saturated)" if r["client_bound"] else "")])
    lines = [table(head, rows, style="text"), ""]
    for mode, best in results["max_streams_within_budget"].items():
        lines.append(f"{mode}: largest N with p99 < {BUDGET_MS:.0f} ms and no dropped window = {best or 'none'}")
    return "\n".join(lines)


def hop_from_hello(d: Daemon) -> float:
    try:
        return float(d.hello()["model"]["hop_s"])
    except (KeyError, TypeError, ValueError, OSError) as exc:
        print(f"hello without model.hop_s ({exc!r}); assuming {DEFAULT_HOP_S} s", flush=True)
        return DEFAULT_HOP_S


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="ONNX model (default: the shipped default model)")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--streams", default="32,64,96,128", help="comma-separated N values, increasing")
    ap.add_argument("--seconds", type=float, default=15.0, help="streaming time per N")
    ap.add_argument("--frame-ms", type=int, default=100, help="audio per WebSocket frame")
    ap.add_argument("--modes", default="batched", help="batched (config max_batch) and/or single (max_batch=1), comma-separated")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="daemon config override (repeatable)")
    ap.add_argument("--generator-nice", type=int, default=0, help="nice level of the load generator's process")
    ap.add_argument("--keep-going", action="store_true", help="run every N even after one misses the budget")
    ap.add_argument("--out", default=str(RESULTS / "daemon.json"))
    args = ap.parse_args()

    ns = [int(x) for x in args.streams.split(",")]
    modes = args.modes.split(",")
    if not ns or min(ns) < 1 or any(m not in ("batched", "single") for m in modes) or args.seconds <= 0:
        raise SystemExit("--streams: positive integers; --modes: batched and/or single; --seconds > 0")
    frame = SAMPLE_RATE * args.frame_ms // 1000
    results: dict = {
        "model": args.model or "default",
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "seconds_per_n": args.seconds,
        "frame_ms": args.frame_ms,
        "budget_ms": BUDGET_MS,
        "start_phases": "stream i of N starts i * hop / N after the first",
        "daemon_overrides": args.set,
        "modes": {},
        "max_streams_within_budget": {},
    }
    for mode in modes:
        overrides = [f"server.max_clients={max(ns) + 8}", f"server.max_remote_streams={max(ns) + 8}", *args.set]
        if mode == "single":
            overrides.append("scheduler.max_batch=1")
        d = Daemon(args.model, args.backend, overrides)
        rows = []
        try:
            health = d.healthz()
            results["backend"] = f"{health['backend']} on {health['device']}"
            results["model_name"] = health["model"]
            results["precision"] = health.get("precision")
            hop_s = results["hop_s"] = hop_from_hello(d)
            for n in ns:
                try:
                    row = measure(d, n, args.seconds, frame, hop_s, args.generator_nice)
                except RuntimeError as exc:
                    print(f"{mode:<8} N={n:<4} not measured: {exc}", flush=True)
                    results.setdefault("not_measured", []).append({"mode": mode, "streams": n, "why": str(exc)})
                    break
                rows.append(row)
                print(f"{mode:<8} N={n:<4} win/s={row['predictions_per_s']:.1f} p50={row['latency_p50_ms']:.1f} ms "
                      f"p99={row['latency_p99_ms']:.1f} ms cpu={row['cpu_percent']:.0f}% rss={row['rss_mb']:.0f} MB "
                      f"drops={row['dropped_windows']}+{row['client_seq_gaps']} started={row['streams_started']}/{n} "
                      f"lag99={row['client_send_lag_p99_ms']:.1f} ms gen={row['generator_cpu_percent']:.0f}%"
                      + (f" errors={row['error_codes']}" if row["errors"] else ""), flush=True)
                if not row["ok"] and not args.keep_going:
                    break
                time.sleep(1.0)
        finally:
            d.stop()
        results["modes"][mode] = rows
        ok = [r["streams"] for r in rows if r["ok"]]
        results["max_streams_within_budget"][mode] = max(ok) if ok else 0
    results["machine"]["loadavg_end"] = os.getloadavg()
    print()
    print(text_table(results))
    print()
    print(daemon_markdown(results))
    out = write_json(args.out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
