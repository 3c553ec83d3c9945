"""The daemon's post-processing scored offline on kept live-like streams: voice gate x smoothing time constant.

    python -m bench.stream_post runs/stream/stream-baseline/tiny.en --tag baseline
    python -m bench.stream_post DIR --gates 0.25 0.5 0.75 1.0 --taus 0 0.5 1.0 1.5 3.0

``bench.accuracy --stream`` keeps each stream's ``--jsonl`` predictions (the
window's raw ``probs`` and the VAD's ``voiced_fraction``) and its segments;
:func:`training.stream_eval.rescore` re-runs the daemon's gate
(``post.vad_min_voiced_s``) and smoother (``post.smoothing_tau_s``) on them,
so every pair is scored on the same windows of the same heads without
playing the streams again. Per pair: stream UA (mean over folds, as the
bench pools them), per-class recall, how many scored windows are gated
silent, how often a pause is reported as an emotion, and how often the
emotion on display changes (flips a minute). Also the voiced seconds the VAD
finds in scored, mixed and pause windows, which is what a gate threshold has
to separate. And where the gap to the clip score lies: the window's own UA
of scored windows by how much of their speech is the scored clip's and how
much of that clip they hold (:func:`gap_breakdown`). Writes
bench/results/stream-post[-TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.lib import RESULTS, table, write_report


def voiced_seconds_by_kind(streams: list) -> dict[str, list[float]]:
    """Percentiles of the VAD's voiced seconds per window kind (scored, mixed, pause)."""
    from training.stream_eval import voiced_seconds, window_truth

    kinds: dict[str, list[float]] = {"scored": [], "mixed": [], "pause": []}
    for _, preds, segments in streams:
        for p in preds:
            if p.get("type", "prediction") != "prediction":
                continue
            truth = window_truth(float(p["t_start"]), float(p["t_end"]), segments)
            kinds["mixed" if truth is None else "pause" if truth == "pause" else "scored"].append(voiced_seconds(p))
    qs = (1, 5, 10, 25, 50, 90, 99, 100)
    return {k: {f"p{q}": float(np.percentile(v, q)) for q in qs} | {"n": len(v)} for k, v in kinds.items() if v}


SHARES = ((1.0, 1.01, "only that clip's"), (0.85, 1.0, "85-99 %"), (2 / 3, 0.85, "67-85 % (the rest another clip's)"))
COVERS = ((1.0, 1.01, "all of it"), (0.7, 1.0, "70-99 %"), (0.0, 0.7, "under 70 %"))


def gap_breakdown(streams: list) -> list[dict]:
    """The window's own UA (raw ``probs``, no gate, no smoother) of scored windows, by the share of the window's
    speech that is the scored clip's and by the share of that clip the window holds: which windows the stream
    score loses against the clip score (a clip alone and whole in its window)."""
    from contract.audio import LABELS
    from training.stream_eval import _overlaps, window_truth

    found = []  # (label, share, cover, right)
    for _, preds, segments in streams:
        for p in preds:
            if p.get("type", "prediction") != "prediction":
                continue
            t0, t1 = float(p["t_start"]), float(p["t_end"])
            truth = window_truth(t0, t1, segments)
            if truth in (None, "pause"):
                continue
            ov = _overlaps(t0, t1, segments)
            o, seg = max(ov, key=lambda x: x[0])
            probs = p["probs"]
            found.append((truth, o / sum(x for x, _ in ov), o / (seg.end - seg.start), max(probs, key=probs.get) == truth))

    def row(what: str, keep: list) -> dict:
        recall = {lab: float(np.mean([r for t, *_, r in keep if t == lab])) for lab in LABELS if any(t == lab for t, *_ in keep)}
        return {"windows": what, "n": len(keep), "share": len(keep) / max(1, len(found)),
                "ua": float(np.mean(list(recall.values()))) if recall else float("nan")}

    out = [row("all scored", found)]
    out += [row(f"speech {name}", [f for f in found if lo <= f[1] < hi]) for lo, hi, name in SHARES]
    out += [row(f"clip heard: {name}", [f for f in found if lo <= f[2] < hi]) for lo, hi, name in COVERS]
    out.append(row("only that clip's speech, all of it", [f for f in found if f[1] >= 1.0 and f[2] >= 1.0]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="an encoder's kept streams (runs/stream/TAG/ENCODER, fold folders inside)")
    ap.add_argument("--gates", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="post.vad_min_voiced_s values")
    ap.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 3.0], help="post.smoothing_tau_s values")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    from training.stream_eval import load_streams, rescore

    streams = load_streams(args.dir)
    if not streams:
        raise SystemExit(f"no kept streams under {args.dir}")
    minutes = sum(max(float(p["t_end"]) for p in preds) for _, preds, _ in streams) / 60
    rows = []
    for gate in args.gates:
        for tau in args.taus:
            r = rescore(streams, gate, tau, group=1)
            rows.append({"vad_min_voiced_s": gate, "smoothing_tau_s": tau, "ua": r["ua"], "raw_ua": r["raw_ua"],
                         "recall": r["recall"], "scored_silent_share": r["scored_silent_share"],
                         "pause_reported_share": r["pause_reported_share"], "pause_reported": r["pause_reported"],
                         "pause": r["pause"], "flips_per_min": r["flips"] / minutes, "folds": r["groups"]})
    doc = {"dir": str(args.dir), "streams": len(streams), "minutes": minutes, "rows": rows,
           "voiced_seconds": voiced_seconds_by_kind(streams), "gap": gap_breakdown(streams)}
    write_report(RESULTS / f"stream-post{'-' + args.tag if args.tag else ''}.json", doc, markdown(doc), indent=1)
    return 0


def markdown(doc: dict) -> str:
    rows = doc["rows"]
    labels = list(rows[0]["recall"])
    head = ["post.vad_min_voiced_s", "post.smoothing_tau_s", "stream UA", "scored but gated silent",
            "pause reported as emotion", "display changes / min", *labels]
    body = [[f"{r['vad_min_voiced_s']:g}", f"{r['smoothing_tau_s']:g}", f"{r['ua']:.3f}", f"{r['scored_silent_share']:.3f}",
             f"{r['pause_reported_share']:.3f} ({r['pause_reported']}/{r['pause']})", f"{r['flips_per_min']:.1f}",
             *(f"{r['recall'][lab]:.2f}" for lab in labels)] for r in rows]
    vs = doc["voiced_seconds"]
    qs = [k for k in next(iter(vs.values())) if k != "n"]
    vhead = ["windows", "n", *qs]
    vbody = [[k, str(v["n"]), *(f"{v[q]:.2f}" for q in qs)] for k, v in vs.items()]
    return (f"{doc['streams']} kept streams, {doc['minutes']:.0f} min (`{doc['dir']}`); window's own UA "
            f"(no smoothing, no gate) {rows[0]['raw_ua']:.3f}\n\n" + table(head, body) + "\n\n"
            "Voiced seconds the VAD finds per 5 s window (percentiles):\n\n" + table(vhead, vbody) + "\n"
            + ("\n\nWindow's own UA of the scored windows, by what they hold:\n\n" + table(
                ["scored windows", "n", "share", "window's own UA"],
                [[g["windows"], str(g["n"]), f"{g['share']:.2f}", f"{g['ua']:.3f}"] for g in doc["gap"]]) + "\n"
               if doc.get("gap") else ""))


if __name__ == "__main__":
    sys.exit(main())
