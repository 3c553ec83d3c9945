"""Benchmark of the daemon under load: N remote streams at real-time pace, batched vs one window at a time.

Starts ``ser-listen`` on loopback (no local source), opens N WebSocket
clients that each stream 16 kHz s16le speech in real time, and measures for
N = 1, 4, 16, 64, ...: predictions per second, end-to-end latency p50/p99
(from sending the frame that holds a window's last sample to receiving its
prediction), the daemon's CPU use and RSS, and dropped windows (daemon
metrics plus sequence gaps seen by clients). It finds the largest N whose
p99 stays under the latency budget with no drops, for the default batched
scheduler and for ``scheduler.max_batch=1``, in the same run. Prints a table
and writes JSON (bench/results/daemon.json).

    python bench/daemon.py --model model.onnx            # or the shipped default model
    python bench/daemon.py --streams 1,4,16 --seconds 8  # quicker

The load generator shares the machine with the daemon; its own lag (how
late it sends frames) is reported so a saturated client is not mistaken for
a slow daemon. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from realtime.sources import demo_clip_path  # noqa: E402
from realtime.testing import ListenProcess, script  # noqa: E402
from training.audio import SAMPLE_RATE, load_audio  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- daemon process


class DaemonProc:
    def __init__(self, model: str | None, backend: str | None, overrides: list[str]) -> None:
        cmd = [*script("ser-listen"), "--device", "none", "--port", "0", *overrides]
        if model:
            cmd += ["--model", model]
        if backend:
            cmd += ["--backend", backend]
        self.proc = ListenProcess(cmd, cwd=REPO)
        self.p = self.proc.p
        try:
            self.port: int = self.proc.wait_url(120)
        except RuntimeError as exc:
            raise SystemExit(f"ser-listen did not start: {exc}") from None

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()
        return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(name) and not x.startswith("#"))

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()


# ---------------------------------------------------------------- load


async def one_stream(url: str, audio: np.ndarray, frame: int, t_begin: float, t_stop: float, out: dict) -> None:
    from websockets.asyncio.client import connect

    sends: list[float] = []
    lags: list[float] = []
    preds: list[tuple[int, float, float]] = []  # (seq, t_end, received)
    async with connect(url, max_size=2**22, compression=None, open_timeout=30) as ws:
        json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le", "channels": 1}))

        async def receive() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "prediction":
                    preds.append((msg["seq"], msg["t_end"], time.monotonic()))
                elif msg["type"] == "error":
                    out.setdefault("errors", []).append(msg)

        rx = asyncio.create_task(receive())
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
        k = 0
        await asyncio.sleep(max(0.0, t_begin - time.monotonic()))
        t0 = time.monotonic()
        while True:
            due = t0 + k * frame / SAMPLE_RATE
            now = time.monotonic()
            if due > t_stop:
                break
            if due > now:
                await asyncio.sleep(due - now)
            lags.append(time.monotonic() - due)
            i = (k * frame) % (len(pcm) - frame)
            await ws.send(pcm[i : i + frame].tobytes())
            sends.append(time.monotonic())
            k += 1
        await asyncio.sleep(0.6)  # the last windows' predictions
        rx.cancel()
    lat = []
    for _seq, t_end, received in preds:
        e = int(round(t_end * SAMPLE_RATE))
        idx = -(-e // frame) - 1  # the frame that carried the window's last sample
        if 0 <= idx < len(sends):
            lat.append(received - sends[idx])
    seqs = [s for s, _, _ in preds]
    expected = (max(seqs) + 1) if seqs else 0
    out["lat"] = lat
    out["lags"] = lags
    out["preds"] = len(preds)
    out["gaps"] = expected - len(set(seqs))


async def load(url: str, n: int, seconds: float, frame: int, hop_s: float, audio: np.ndarray) -> list[dict]:
    start = time.monotonic() + 1.0
    stop = start + seconds
    rng = np.random.default_rng(n)
    outs = [dict() for _ in range(n)]
    # Streams start at random phases within a hop, as independent users would.
    await asyncio.gather(*(one_stream(url, audio, frame, start + float(rng.uniform(0, hop_s)), stop, o) for o in outs))
    return outs


def measure(d: DaemonProc, n: int, seconds: float, frame: int, hop_s: float, audio: np.ndarray) -> dict:
    url = f"ws://127.0.0.1:{d.port}/ws"
    dropped0 = d.metric("ser_windows_dropped_total")
    cdrop0 = d.metric("ser_client_messages_dropped_total")
    busy0, chunks0 = d.metric("ser_inference_seconds_sum"), d.metric("ser_chunks_encoded_sum")
    batches0 = d.metric("ser_chunks_encoded_count")
    rss = [d.rss_mb()]
    stop_rss = threading.Event()

    def sample_rss() -> None:
        while not stop_rss.wait(0.5):
            rss.append(d.rss_mb())

    threading.Thread(target=sample_rss, daemon=True).start()
    c0, w0 = d.cpu_seconds(), time.monotonic()
    outs = asyncio.run(load(url, n, seconds, frame, hop_s, audio))
    c1, w1 = d.cpu_seconds(), time.monotonic()
    stop_rss.set()
    time.sleep(0.5)
    lat = np.array([x for o in outs for x in o["lat"]]) * 1000
    lags = np.array([x for o in outs for x in o["lags"]]) * 1000
    preds = sum(o["preds"] for o in outs)
    row = {
        "streams": n,
        "predictions": preds,
        "predictions_per_s": preds / seconds,
        "expected_per_s": n / hop_s,
        "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "cpu_percent": 100 * (c1 - c0) / (w1 - w0),
        "rss_mb": max(rss),
        "dropped_windows": int(d.metric("ser_windows_dropped_total") - dropped0),
        "client_seq_gaps": int(sum(o["gaps"] for o in outs)),
        "slow_client_drops": int(d.metric("ser_client_messages_dropped_total") - cdrop0),
        "client_send_lag_p99_ms": float(np.percentile(lags, 99)) if lags.size else float("nan"),
        "errors": sum(len(o.get("errors", [])) for o in outs),
    }
    # The engine's own cost, under this load: what the cores left it per chunk encoded (with its classify).
    chunks = d.metric("ser_chunks_encoded_sum") - chunks0
    row["engine_busy_s"] = d.metric("ser_inference_seconds_sum") - busy0
    row["chunks_encoded"] = int(chunks)
    row["chunks_per_batch"] = chunks / max(1.0, d.metric("ser_chunks_encoded_count") - batches0)
    row["engine_ms_per_chunk"] = 1000 * row["engine_busy_s"] / chunks if chunks else float("nan")
    row["ok"] = bool(row["latency_p99_ms"] < BUDGET_MS and row["dropped_windows"] == 0 and row["client_seq_gaps"] == 0)
    # A load generator that cannot keep real-time pace measures itself, not the daemon.
    row["client_bound"] = bool(row["client_send_lag_p99_ms"] > CLIENT_LAG_LIMIT_MS)
    return row


BUDGET_MS = 250.0
CLIENT_LAG_LIMIT_MS = 100.0


def fmt_table(results: dict) -> str:
    head = (f"{'mode':<10} {'N':>5} {'pred/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU %':>7} {'RSS MB':>7} {'drops':>6} "
            f"{'lag p99':>8} {'ms/chunk':>8} {'chunks/b':>8}  ok")
    lines = [head, "-" * len(head)]
    for mode, rows in results["modes"].items():
        for r in rows:
            lines.append(
                f"{mode:<10} {r['streams']:>5} {r['predictions_per_s']:>8.1f} {r['latency_p50_ms']:>8.1f} "
                f"{r['latency_p99_ms']:>8.1f} {r['cpu_percent']:>7.0f} {r['rss_mb']:>7.0f} "
                f"{r['dropped_windows'] + r['client_seq_gaps']:>6} {r['client_send_lag_p99_ms']:>8.1f} "
                f"{r['engine_ms_per_chunk']:>8.1f} {r['chunks_per_batch']:>8.1f}  {'yes' if r['ok'] else 'no'}"
                + ("  (load generator saturated)" if r["client_bound"] else "")
            )
    lines.append("")
    for mode, best in results["max_streams_within_budget"].items():
        lines.append(f"{mode}: largest N with p99 < {BUDGET_MS:.0f} ms and no drops = {best}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="ONNX model (default: the shipped default model)")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--streams", default="1,4,16,64,128,256", help="comma-separated N values, increasing")
    ap.add_argument("--seconds", type=float, default=12.0, help="streaming time per N")
    ap.add_argument("--frame-ms", type=int, default=100, help="audio per WebSocket frame")
    ap.add_argument("--modes", default="batched,single", help="batched (config max_batch) and/or single (max_batch=1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="daemon config override (repeatable)")
    ap.add_argument("--keep-going", action="store_true", help="run every N even after one misses the budget")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "daemon.json"))
    args = ap.parse_args()

    ns = [int(x) for x in args.streams.split(",")]
    frame = SAMPLE_RATE * args.frame_ms // 1000
    audio = load_audio(demo_clip_path())
    results: dict = {
        "model": args.model or "default",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "seconds_per_n": args.seconds,
        "frame_ms": args.frame_ms,
        "budget_ms": BUDGET_MS,
        "daemon_overrides": args.set,
        "modes": {},
        "max_streams_within_budget": {},
    }
    for mode in args.modes.split(","):
        overrides = [f"server.max_clients={max(ns) + 8}", f"server.max_remote_streams={max(ns) + 8}", *args.set]
        if mode == "single":
            overrides.append("scheduler.max_batch=1")
        d = DaemonProc(args.model, args.backend, overrides)
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{d.port}/healthz", timeout=10).read())
        results["backend"] = f"{health['backend']} on {health['device']}"
        results["model_name"] = health["model"]
        hop_s = 0.5
        rows = []
        try:
            for n in ns:
                row = measure(d, n, args.seconds, frame, hop_s, audio)
                rows.append(row)
                print(f"{mode:<8} N={n:<4} pred/s={row['predictions_per_s']:.1f} p50={row['latency_p50_ms']:.1f} ms "
                      f"p99={row['latency_p99_ms']:.1f} ms cpu={row['cpu_percent']:.0f}% rss={row['rss_mb']:.0f} MB "
                      f"drops={row['dropped_windows']}+{row['client_seq_gaps']} lag99={row['client_send_lag_p99_ms']:.1f} ms",
                      flush=True)
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
    print(fmt_table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
