"""Every Markdown table of the benchmarks, rendered from the JSON they write to bench/results/.

    python -m bench.tables                    # print the tables of every bench/results/*.json
    python -m bench.tables daemon-whisper hostile   # only these result files (names without .json)
    python -m bench.tables --write            # also write each as bench/results/NAME.md
    python -m bench.tables --check            # exit 1 where a bench/results/NAME.md or a README table differs from its JSON
    python -m bench.tables --readme           # rewrite the README's tables from their JSON

The drivers print these same tables when they finish (each imports its renderer from here), so
a table in a README can be regenerated from the JSON of the run it reports, without rerunning
it; the README's own tables stand between ``<!-- bench.tables:NAME -->`` and
``<!-- /bench.tables:NAME -->`` markers (:data:`README_TABLES` says which JSON each comes from), and
``--readme`` rewrites them. Which renderer reads a file goes by its name: the longest matching prefix in
:data:`RENDERERS` (``daemon-compact.json`` is a ``daemon`` result, ``accuracy-base.json`` an
``accuracy`` one). Pure functions of the JSON; nothing here measures anything.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.lib import REPO, RESULTS, table
from contract.audio import LABELS

NAMES = {"clean": "clean", "snr20": "white noise 20 dB SNR", "snr10": "white noise 10 dB SNR",
         "reverb": "reverb RT60 0.4 s", "opus16": "Opus 16 kbps"}
YES_NO = {True: "yes", False: "**no**"}


def _f(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


# ---------------------------------------------------------------- accuracy (bench.accuracy, bench.ablation)


def accuracy_markdown(result: dict, heading: str = "###") -> str:
    """bench/results/accuracy[-TAG].json: per-encoder CV tables, side by side, LOCO, live-like streams."""
    out: list[str] = []
    encs = result["encoders"]
    for name, e in encs.items():
        s = e["summary"]
        if not s["per_fold"]:
            continue
        out += [f"{heading} {name}: RAVDESS cross-validation ({len(e['seeds'])} seed(s) per fold)", "",
                "| fold | test actors | clips | UA | seed sd | accuracy | macro F1 | " + " | ".join(LABELS) + " |",
                "|---" * (7 + len(LABELS)) + "|"]
        for f in s["per_fold"]:
            actors = ", ".join(x.split(":")[1] for x in f["test_speakers"])
            out.append(f"| {f['fold']} | {actors} | {f['n']} | {f['ua']:.3f} | {f['ua_seed_sd']:.3f} | {f['accuracy']:.3f} | "
                       f"{f['macro_f1']:.3f} | " + " | ".join(f"{f['recall'][lab]:.2f}" for lab in LABELS) + " |")
        out.append(f"| **mean** | | | **{s['ua']:.3f}** ± {s['ua_fold_sd']:.3f} | {s['ua_seed_sd']:.3f} | {s['accuracy']:.3f} | "
                   f"{s['macro_f1']:.3f} | " + " | ".join(f"{s['recall'][lab]:.2f}" for lab in LABELS) + " |")
        out += ["", "Confusion matrix summed over folds (rows: true, columns: predicted):", "",
                "| true \\ predicted | " + " | ".join(LABELS) + " |", "|---" * (1 + len(LABELS)) + "|"]
        out += [f"| {lab} | " + " | ".join(str(v) for v in s["confusion"][i]) + " |" for i, lab in enumerate(LABELS)]
        out.append("")
    with_cv = {n: e["summary"] for n, e in encs.items() if e["summary"]["per_fold"]}
    if with_cv:
        names = list(with_cv)
        out += ["Side by side (RAVDESS CV; robustness: same test clips degraded before padding):", "",
                "| | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
        out.append("| clean UA (± folds) | " + " | ".join(f"{s['ua']:.3f} ± {s['ua_fold_sd']:.3f}" for s in with_cv.values()) + " |")
        out.append("| lowest class recall | " + " | ".join(
            f"{min(s['recall'], key=s['recall'].get)} {min(s['recall'].values()):.2f}" for s in with_cv.values()) + " |")
        for c in next(iter(with_cv.values()))["robustness"]:
            if c != "clean":
                out.append(f"| {NAMES.get(c, c)} (drop) | " + " | ".join(
                    f"{s['robustness'][c]:.3f} ({s['robustness'][c] - s['robustness']['clean']:+.3f})" for s in with_cv.values()) + " |")
        out.append("| ECE before / after temperature (mean of folds) | " + " | ".join(
            f"{s['calibration']['ece_before']:.3f} / {s['calibration']['ece_after']:.3f} (T {s['calibration']['temperature']:.2f})"
            for s in with_cv.values()) + " |")
        if all(s["calibration"].get("ece_after_pooled") is not None for s in with_cv.values()):
            out.append("| ECE after, the folds' test clips pooled | " + " | ".join(
                f"{s['calibration']['ece_after_pooled']:.3f}" for s in with_cv.values()) + " |")
        out.append("")
    loco = {n: {r["corpus"]: r for r in e["summary"]["loco"]} for n, e in encs.items() if e["summary"]["loco"]}
    if loco:
        names = list(loco)
        out += ["Leave one corpus out (each recipe's own training corpora without the held-out one; all of its clips scored; UA):", "",
                "| held out | clips | " + " | ".join(names) + " | per-class recall (" + names[-1] + ") |", "|---" * (3 + len(names)) + "|"]
        for corpus in dict.fromkeys(c for n in names for c in loco[n]):  # in the order they were run
            rows = [loco[n].get(corpus) for n in names]
            if all(rows):
                out.append(f"| {corpus} | {rows[0]['n']} | " + " | ".join(f"{r['ua']:.3f}" for r in rows) + " | "
                           + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1]["recall"].items()) + " |")
        out.append("")
    return "\n".join(out + stream_lines(result)) + "\n"


def stream_markdown(result: dict) -> str:
    """bench/results/accuracy[-TAG].json: the live-like stream tables alone (per encoder that has them)."""
    return "\n".join(stream_lines(result)) + "\n"


def stream_lines(result: dict) -> list[str]:
    out: list[str] = []
    for name, e in result["encoders"].items():
        st = e.get("stream")
        if st:
            served = ", each head through its CPU int8 copy" if result.get("int8") else ""
            out += [f"Live-like streams ({name}{served}; {st['hours']:.2f} h of audio through ser-listen --fast --once --jsonl, "
                    "shipped smoothing and VAD):", "",
                    "| fold | clip UA (same head) | stream UA | window's own UA (no smoothing, no VAD) | windows | scored | mixed | pause | "
                    "pause reported as emotion | scored but gated silent |",
                    "|---|---|---|---|---|---|---|---|---|---|"]
            for f in st["per_fold"]:
                out.append(f"| {f['fold']} | {f['clip_ua']:.3f} | {f['ua']:.3f} | {f['raw_ua']:.3f} | {f['windows']} | {f['scored']} | {f['mixed']} | {f['pause']} | "
                           f"{f['pause_reported_share']:.3f} | {f['scored_silent_share']:.3f} |")
            out.append(f"| **mean** | **{st['clip_ua']:.3f}** | **{st['ua']:.3f}** ({st['ua'] - st['clip_ua']:+.3f}) | {st['raw_ua']:.3f} | {st['windows']} | "
                       f"{st['scored']} | {st['mixed']} | {st['pause']} | {st['pause_reported_share']:.3f} | {st['scored_silent_share']:.3f} |")
            out += ["", "Stream recall per class: " + ", ".join(f"{k} {v:.2f}" for k, v in st["recall"].items()), ""]
            ss = e.get("stream_seeds")
            if ss:  # a stochastic recipe: the table above is the first seed's heads
                out += [f"Over {len(ss['seeds'])} head seeds (the table: seed {ss['seeds'][0]}): stream UA {ss['ua_mean']:.3f} ± {ss['ua_sd']:.3f}, "
                        f"window's own UA {ss['raw_ua_mean']:.3f} ± {ss['raw_ua_sd']:.3f}; recall "
                        + ", ".join(f"{k} {v:.2f}" for k, v in ss["recall"].items()) + ".", ""]
            if "flips_per_min" in st:  # results before it was measured render as they did
                out += [f"The emotion on display changed {st['flips_per_min']:.1f} times a minute (post.smoothing_tau_s "
                        f"{st.get('post', {}).get('smoothing_tau_s', '?')}, post.vad_min_voiced_s {st.get('post', {}).get('vad_min_voiced_s', '?')}).", ""]
    return out


def ablation_markdown(doc: dict) -> str:
    """bench/results/ablation[-TAG].json: one row per recipe change."""
    rows = doc["rows"]
    out = ["| row | what changes | seeds | CV UA ± folds | seed sd | lowest class | 20 dB | 10 dB | reverb | Opus 16 | ECE after |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        rob = r["robustness"]
        low = min(r["recall"], key=r["recall"].get)
        out.append(f"| {name} | {r['what']} | {len(r['seeds'])} | {r['ua']:.3f} ± {r['ua_fold_sd']:.3f} | {r['ua_seed_sd']:.3f} | "
                   f"{low} {r['min_recall']:.2f} | " + " | ".join(f"{rob[c] - rob['clean']:+.3f}" for c in ("snr20", "snr10", "reverb", "opus16"))
                   + f" | {r['ece_after']:.3f} |")
    out.append("")
    out.append("Robustness columns: UA change from clean, same test clips degraded before padding.")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the compact model, the layer probe


def compact_markdown(doc: dict) -> str:
    """bench/results/accuracy_compact.json: per-fold table with mean ± sd, summed confusion matrix, robustness."""
    rows, recall_mean, rob = doc["folds"], doc["recall_mean"], doc["robustness_ua"]
    summary = {k: (doc["mean"][k], doc["sd"][k]) for k in ("accuracy", "ua", "macro_f1")}
    out = ["| fold | test actors | clips | accuracy | UA | macro F1 | " + " | ".join(LABELS) + " |",
           "|---" * (6 + len(LABELS)) + "|"]
    for r in rows:
        actors = ", ".join(s.split(":")[1] for s in r["test_speakers"])
        out.append(f"| {r['fold']} | {actors} | {r['n']} | {r['accuracy']:.3f} | {r['ua']:.3f} | {r['macro_f1']:.3f} | "
                   + " | ".join(f"{r['recall'][lab]:.2f}" for lab in LABELS) + " |")
    (acc, acc_sd), (ua, ua_sd), (f1, f1_sd) = (summary[k] for k in ("accuracy", "ua", "macro_f1"))
    out.append(f"| **mean** | | {sum(r['n'] for r in rows)} | **{acc:.3f}** ± {acc_sd:.3f} | **{ua:.3f}** ± {ua_sd:.3f} | "
               f"**{f1:.3f}** ± {f1_sd:.3f} | " + " | ".join(f"{recall_mean[lab]:.2f}" for lab in LABELS) + " |")
    total = [[sum(r["confusion"][i][j] for r in rows) for j in range(len(LABELS))] for i in range(len(LABELS))]
    out += ["", "Confusion matrix summed over the folds (rows: true, columns: predicted):", "",
            "| true \\ predicted | " + " | ".join(LABELS) + " |", "|---" * (1 + len(LABELS)) + "|"]
    out += [f"| {lab} | " + " | ".join(str(v) for v in total[i]) + " |" for i, lab in enumerate(LABELS)]
    out += ["", "Robustness: the same test clips, degraded, mean UA over the folds:", "",
            "| condition | UA | drop |", "|---|---|---|"]
    out += [f"| {NAMES.get(c, c)} | {rob[c]:.3f} | {rob[c] - rob['clean']:+.3f} |" for c in rob]
    return "\n".join(out) + "\n"


def probe_markdown(doc: dict) -> str:
    """bench/results/probe_layers.json: linear-probe UA per layer set (rows) and chunking (columns)."""
    runs = {k: v for k, v in doc.items() if k != "machine"}
    sets = list(dict.fromkeys(name for rows in runs.values() for name in rows))
    head = ["layers", *(k.replace("chunk", "").replace("_hop", " s every ") + " s" for k in runs)]
    body = [[name, *(f"{sum(r[name]) / len(r[name]):.3f}" if name in r else "" for r in runs.values())] for name in sets]
    return "Linear probe, RAVDESS 5 actor folds, mean UA over the folds:\n\n" + table(head, body) + "\n"


# ---------------------------------------------------------------- speed (bench.engine, bench.int8, bench.int8_encoder)


def engine_markdown(doc: dict) -> str:
    """bench/results/engine*.json: offline latency and throughput, per-hop cost, ratios to the reference."""
    rows = doc["rows"]
    batches = sorted({int(k[len("throughput_b"):]) for r in rows for k in r if k.startswith("throughput_b")})
    with_ref = doc.get("reference") is not None
    head = ["variant", "backend", "latency ms (b1)"] + [f"win/s b{b}" for b in batches] + [f"hop ms/stream b{b}" for b in batches]
    if with_ref:
        head += ["latency x"] + [f"b{b} x" for b in batches]
    body = []
    for r in rows:
        cells = [r["variant"], r["backend"], f"{r['latency_ms']:.1f}"] + [f"{r[f'throughput_b{b}']:.1f}" for b in batches]
        cells += [f"{r[f'hop_ms_b{b}']:.2f}" for b in batches]
        if with_ref:
            cells += [f"{r['speedup_latency_vs_seed_torch']:.1f}"] + [f"{r[f'speedup_b{b}_vs_seed_torch']:.1f}" for b in batches]
        body.append(cells)
    return table(head, body) + "\n"


def int8_markdown(doc: dict) -> str:
    """bench/results/int8*.json: top-1 agreement and probability departure of each int8 build from float32."""
    head = ["variant", "top-1 agreement with fp32", "max abs diff", "mean abs diff"]
    body = [[r["variant"], f"{r['top1_agreement']:.3f}", f"{r['max_abs_diff']:.3f}", f"{r['mean_abs_diff']:.4f}"]
            for r in doc["variants"]]
    return table(head, body) + "\n"


def int8_encoder_markdown(doc: dict) -> str:
    """bench/results/int8_encoder.json: dynamic int8 of the encoder's MatMuls against float32, same run."""
    batch = any("batch_dependence" in r for r in doc["rows"])
    head = ["model", "ms/chunk b1", "ms/chunk b8", "speed-up b8", "embedding change", "top-1 agreement", "max dprob", "MB",
            *(["batch dependence"] if batch else [])]
    body = [[r["model"], f"{r['ms_per_chunk_b1']:.2f}", f"{r['ms_per_chunk_b8']:.2f}", f"{r['speedup_b8']:.2f}x",
             f"{r['embedding_rel_change']:.3f}", f"{r['top1_agreement']:.3f}", f"{r['max_prob_diff']:.3f}", f"{r['size_mb']:.1f}",
             *([_f(r.get("batch_dependence"), ".4f")] if batch else [])]
            for r in doc["rows"]]
    cpu = f" ({doc['cpu']})" if doc.get("cpu") else ""
    return (f"{doc['chunks']} chunks and {doc['windows']} windows of the demo clip; onnxruntime CPU{cpu}:\n\n"
            + table(head, body) + "\n")


# ---------------------------------------------------------------- the daemon (bench.daemon, bench.hostile)


def model_label(doc: dict) -> str:
    model = doc.get("model") or "default"
    return model if model == "default" else Path(model).stem


def daemon_markdown(doc: dict) -> str:
    """bench/results/daemon*.json: one row per mode and N; the engine columns where the rows have them."""
    modes = doc["modes"]
    rows = [(mode, r) for mode, rs in modes.items() for r in rs]
    engine = any("engine_ms_per_chunk" in r for _, r in rows)
    head = ["model", *(["mode"] if len(modes) > 1 else []), "N", "pred/s", "p50 ms", "p99 ms", "CPU %", "RSS MB",
            "dropped", "gen. lag p99 ms", *(["engine ms per chunk", "chunks per batch"] if engine else []), "ok"]
    body = []
    for mode, r in rows:
        cells = [model_label(doc), *([mode] if len(modes) > 1 else []), r["streams"], f"{r['predictions_per_s']:.1f}",
                 f"{r['latency_p50_ms']:.1f}", f"{r['latency_p99_ms']:.1f}", f"{r['cpu_percent']:.0f}", f"{r['rss_mb']:.0f}",
                 r["dropped_windows"] + r["client_seq_gaps"], f"{r['client_send_lag_p99_ms']:.1f}"]
        if engine:
            cells += [_f(r.get("engine_ms_per_chunk"), ".1f"), _f(r.get("chunks_per_batch"), ".1f")]
        cells.append("yes" if r["ok"] else "no")
        body.append(cells)
    budget = doc.get("budget_ms", 250.0)
    best = "; ".join(f"{mode}: {n}" for mode, n in doc.get("max_streams_within_budget", {}).items())
    hop = doc.get("hop_s", 0.5)
    served = f", {doc['precision']}" if doc.get("precision") else ""
    lines = [f"{doc.get('model_name', model_label(doc))} ({doc.get('backend', '?')}{served}), {doc.get('seconds_per_n', float('nan')):g} s "
             f"per point, {doc.get('frame_ms', 100)} ms frames, hop {hop:g} s:", "", table(head, body), "",
             f"Largest N with p99 < {budget:.0f} ms and no dropped window: {best or 'none measured'}."]
    if any(r.get("client_bound") for _, r in rows):
        lines.append("Some points had a saturated load generator (send lag p99 over 100 ms): they measure the generator.")
    return "\n".join(lines) + "\n"


def _labels(d: dict) -> str:
    return ", ".join(f"{k} {int(v)}" for k, v in sorted(d.items())) or "none"


def hostile_targets_markdown(doc: dict) -> str:
    """bench/results/hostile.json: the targets table alone (the README's)."""
    row, seconds = doc, doc["seconds"]
    t = row["targets"]
    ok = YES_NO
    labels = _labels
    lines = [
        f"| measure ({row['hostile_clients_at_once']} hostile clients at once, {seconds:g} s) | target | measured | met |",
        "|---|---|---|---|",
        f"| good streams: predictions per second (each) | 2.0 | {row['predictions_per_s_min']:.2f} | |",
        f"| good streams: worst gap between predictions | <= 1 s | {row['worst_gap_s']:.2f} s | {ok[t['worst_gap_s <= 1.0']]} |",
        f"| good streams: latency p50 / p99 | p99 < 250 ms | {row['latency_p50_ms']:.0f} / {row['latency_p99_ms']:.0f} ms"
        f" | {ok[t['latency_p99_ms < 250']]} |",
        f"| daemon: RSS (max) | < 1 GB | {row['rss_mb_max']:.0f} MB | {ok[t['rss_mb < 1024']]} |",
        f"| daemon: CPU | | {row['cpu_percent']:.0f} % | |",
        f"| daemon: crashed | no | {'yes' if row['crashed'] else 'no'} | {ok[t['no crash']]} |",
        f"| daemon: SIGTERM under load -> exit | <= 2 s, code 0 | {float(row['sigterm_exit_s']):.2f} s, code {row['sigterm_exit_code']}"
        f" | {ok[t['sigterm exit <= 2 s']]} |",
        f"| connections refused | | {labels(row['connections_refused'])} | |",
        f"| clients closed by the daemon | | {labels(row['clients_closed'])} | |",
        f"| windows scored / dropped | | {_int(row['windows_scored'])} / {labels(row['windows_dropped'])} | |",
        f"| predictions dropped for slow readers | | {int(row['client_messages_dropped'])} | |",
        f"| engine: batches, busy time | | {int(row['engine_batches'])}, {row['engine_busy_s']:.1f} s | |",
        f"| engine: chunks encoded, per batch, ms per chunk | | {int(row['chunks_encoded'])}, "
        f"{row['chunks_encoded'] / max(1.0, row['chunk_batches']):.1f}, "
        f"{1000 * row['engine_busy_s'] / max(1.0, row['chunks_encoded']):.1f} ms | |",
    ]
    return "\n".join(lines) + "\n"


def hostile_markdown(doc: dict) -> str:
    """bench/results/hostile.json: the targets table, the crowd by kind, then each good and late stream."""
    row, labels = doc, _labels
    lines = [
        hostile_targets_markdown(doc),
        "| hostile kind | clients | sessions | refused | messages sent | MB sent | closes by code |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, h in row["hostile"].items():
        lines.append(f"| {kind} | {row['kinds'][kind]} | {h['sessions']} | {h['refused']} | {h['sent']} | "
                     f"{h['sent_bytes'] / 1e6:.1f} | {labels(h['closes'])} |")
    lines.append("")
    for i, g in enumerate(row["good_streams"]):
        lines.append(
            f"good stream {i}: {g['predictions']} predictions, {g['predictions_per_s']:.2f}/s, worst gap {g['worst_gap_s']:.2f} s, "
            f"p50 {g['latency_p50_ms']:.0f} ms, p99 {g['latency_p99_ms']:.0f} ms, max {g['latency_max_ms']:.0f} ms "
            f"(daemon's own p50/p99 {g['daemon_latency_p50_ms']:.0f}/{g['daemon_latency_p99_ms']:.0f} ms, "
            f"sockets and loops p50/p99 {g['outside_daemon_p50_ms']:.0f}/{g['outside_daemon_p99_ms']:.0f} ms), "
            f"seq gaps {g['seq_gaps']}, errors {g['errors']}, send lag p99 {g['send_lag_p99_ms']:.0f} ms, closed {g['close_code']}"
        )
    settle = doc.get("late_settle_s", 3.0)
    for i, g in enumerate(row["late_streams"]):
        st = g.get("steady") or {}
        steady = (f"then {st['predictions_per_s']:.2f}/s, worst gap {st['worst_gap_s']:.2f} s, p99 {st['latency_p99_ms']:.0f} ms"
                  if st else "no steady state measured")
        wait = g.get("slot_wait_s")
        waited = f"got a stream after {wait:.2f} s" + (" (server_busy meanwhile)" if g.get("busy") else "") if wait is not None else "got no stream"
        lines.append(f"late stream {i} (joined mid-attack): {waited}; first prediction {float(g['first_prediction_s']):.2f} s after its "
                     f"first frame; from {settle:g} s on {steady}; errors {g['errors']}")
    return "\n".join(lines)


def _int(x: float) -> str:
    return str(int(x)) if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


# ---------------------------------------------------------------- the command


def cluster_markdown(doc: dict) -> str:
    """bench/results/cluster*.json: the daemon and the cluster per N, same run, and where the cluster's CPU goes."""
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
            _f(c.get("head_ms_per_call"), ".2f"),
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
            f"Largest N with p99 < {doc.get('budget_ms', 250.0):.0f} ms and no dropped window: daemon {best['daemon'] or 'none'}, "
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


def profile_markdown(doc: dict) -> str:
    """bench/results/profile*.json: the daemon's sampled time by stage under load."""
    rows = [[k, f"{100 * v['share']:.1f}", f"{v['ms_per_window']:.2f}", f"{100 * v['on_loop_share']:.0f}"]
            for k, v in doc["profile"]["stages"].items()]
    r = doc["load"]
    head = (f"N = {r['streams']} streams, {doc['seconds']:g} s: p50 {r['latency_p50_ms']:.0f} ms, p99 "
            f"{r['latency_p99_ms']:.0f} ms, {r['windows_scored_per_s']:.1f} windows/s, daemon CPU {r['cpu_percent']:.0f} %, "
            f"{doc['profile']['samples']} samples of its Python threads at {doc['rate_hz']} Hz:")
    threads = ", ".join(f"{k} {v:.1f} s" for k, v in doc["profile"]["threads"].items())
    return (f"{head}\n\n{table(['stage', 'share of samples %', 'ms per window', 'on the event loop %'], rows)}\n\n"
            f"Sampled busy time by thread: {threads}\n")



def _late(module: str, **kw: Any) -> Callable[[dict], str]:
    """``module.markdown(doc, **kw)``, imported when called: those driver modules import this one."""
    return lambda doc: importlib.import_module(module).markdown(doc, **kw)


RENDERERS: dict[str, Callable[[dict], str]] = {
    "cluster": lambda doc: cluster_markdown(doc) + "\n" + capacity_markdown(capacity(doc)),
    "profile": profile_markdown,
    "accuracy_compact": compact_markdown,
    "accuracy": accuracy_markdown,
    "ablation": ablation_markdown,
    "engine": engine_markdown,
    "daemon": daemon_markdown,
    "hostile": hostile_markdown,
    "int8_encoder": int8_encoder_markdown,
    "int8": int8_markdown,
    "int8-accuracy": _late("bench.int8_accuracy"),
    "probe_layers": probe_markdown,
    "stream-post": _late("bench.stream_post"),  # late: they import this module
    "stream-heads": _late("bench.stream_heads"),
    "languages": _late("bench.languages"),
}


def renderer_for(path: Path) -> Callable[[dict], str] | None:
    """The renderer of a result file: the longest prefix of its stem in :data:`RENDERERS`."""
    matches = [p for p in RENDERERS if path.stem == p or path.stem.startswith(p + "-") or path.stem.startswith(p + "_")]
    return RENDERERS[max(matches, key=len)] if matches else None


def render(path: Path) -> str | None:
    fn = renderer_for(path)
    return fn(json.loads(path.read_text())) if fn is not None else None


# ---------------------------------------------------------------- the README's tables


README = REPO / "README.md"

# Each block of the README between <!-- bench.tables:NAME --> and <!-- /bench.tables:NAME -->: the result
# file it is rendered from (bench/results/STEM.json) and how.
README_TABLES: dict[str, tuple[str, Callable[[dict], str]]] = {
    "accuracy": ("accuracy", functools.partial(accuracy_markdown, heading="#####")),
    "accuracy-streams": ("accuracy-stream-final", stream_markdown),
    "accuracy-shipped": ("accuracy-shipped-gate0.25", functools.partial(accuracy_markdown, heading="#####")),
    "accuracy-shipped-turns": ("accuracy-shipped-turns", functools.partial(accuracy_markdown, heading="#####")),
    "ablation": ("ablation", ablation_markdown),
    "engine": ("engine", engine_markdown),
    "daemon-whisper": ("daemon-whisper", daemon_markdown),
    "daemon-compact": ("daemon-compact", daemon_markdown),
    "daemon-s16-default": ("daemon-s16-default", daemon_markdown),
    "daemon-hop1": ("daemon-hop1", daemon_markdown),
    "daemon-s22-fp32": ("daemon-s22-fp32", daemon_markdown),
    "daemon-s22-int8": ("daemon-s22-int8", daemon_markdown),
    "int8-encoder": ("int8_encoder-s22", int8_encoder_markdown),
    "int8-accuracy": ("int8-accuracy", _late("bench.int8_accuracy")),
    "int8-encoder-s25": ("int8_encoder-s25", int8_encoder_markdown),
    "int8-accuracy-s25": ("int8-accuracy-s25-kept", _late("bench.int8_accuracy")),
    "hostile": ("hostile", hostile_targets_markdown),
    "cluster": ("cluster", cluster_markdown),
    "cluster-capacity": ("cluster", lambda doc: capacity_markdown(capacity(doc))),
    "profile-48": ("profile-48", profile_markdown),
    "profile-96-int8": ("profile-96-int8", profile_markdown),
    "languages-s20-a": ("languages-s20-a", _late("bench.languages", heading="#####")),
}
_OPEN = re.compile(r"<!-- bench\.tables:([\w.-]+) -->")
_BLOCK = re.compile(r"<!-- bench\.tables:([\w.-]+) -->\n.*?<!-- /bench\.tables:\1 -->", re.S)


def readme_block(name: str, results: Path = RESULTS) -> str:
    """What stands between the markers of README block ``name``: its table, a blank line either side."""
    stem, fn = README_TABLES[name]
    return "\n" + fn(json.loads((results / f"{stem}.json").read_text())).strip("\n") + "\n\n"


def splice_readme(text: str, results: Path = RESULTS) -> str:
    """``text`` (the README) with every marked block rendered again from its JSON.

    ValueError if a marker is unknown, unclosed or repeated, or a table of :data:`README_TABLES` has none.
    """
    opened = _OPEN.findall(text)
    unknown = sorted(set(opened) - set(README_TABLES))
    if unknown:
        raise ValueError(f"README: unknown bench.tables block(s) {', '.join(unknown)} (known: {', '.join(README_TABLES)})")
    repeated = sorted({n for n in opened if opened.count(n) > 1})
    missing = [n for n in README_TABLES if n not in opened]
    if repeated or missing:
        raise ValueError(f"README: bench.tables blocks repeated: {repeated or 'none'}; missing: {missing or 'none'}")
    closed: list[str] = []

    def render_block(m: re.Match) -> str:
        closed.append(m.group(1))
        return f"<!-- bench.tables:{m.group(1)} -->\n{readme_block(m.group(1), results)}<!-- /bench.tables:{m.group(1)} -->"

    out = _BLOCK.sub(render_block, text)
    unclosed = sorted(set(opened) - set(closed))
    if unclosed:
        raise ValueError(f"README: no <!-- /bench.tables:NAME --> closes {', '.join(unclosed)}")
    return out


def readme_is_stale(readme: Path = README, results: Path = RESULTS) -> bool:
    """Whether ``readme``'s marked tables differ from what their JSON renders."""
    text = readme.read_text()
    return splice_readme(text, results) != text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="result files to render (stems of bench/results/*.json; default: all)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the folder of result JSON files")
    ap.add_argument("--write", action="store_true", help="write each table as NAME.md beside its JSON")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if an existing NAME.md, or a table of README.md, differs from what its JSON renders")
    ap.add_argument("--readme", action="store_true",
                    help="rewrite README.md's tables between <!-- bench.tables:NAME --> markers from their JSON, then exit")
    args = ap.parse_args(argv)
    if args.readme:
        text = README.read_text()
        new = splice_readme(text, args.results)
        if new != text:
            README.write_text(new)
        print(f"{README.name}: {', '.join(README_TABLES)} {'rewritten' if new != text else 'already up to date'}")
        return 0
    paths = [args.results / f"{n}.json" for n in args.names] if args.names else sorted(args.results.glob("*.json"))
    stale = []
    for path in paths:
        if not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            return 2
        md = render(path)
        if md is None:
            print(f"<!-- {path.name}: no renderer (known: {', '.join(RENDERERS)}) -->\n")
            continue
        md = md if md.endswith("\n") else md + "\n"
        print(f"<!-- python -m bench.tables {path.stem} -->")
        print(md)
        target = path.with_suffix(".md")
        if args.check and target.is_file() and target.read_text() != md:
            stale.append(target)
        if args.write:
            target.write_text(md)
    for t in stale:
        print(f"stale: {t} differs from what {t.with_suffix('.json').name} renders", file=sys.stderr)
    if args.check and not args.names and readme_is_stale(README, args.results):
        stale.append(README)
        print(f"stale: {README} differs from what bench/results renders (python -m bench.tables --readme)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
