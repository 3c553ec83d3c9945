"""Scoring the product as a user meets it: one long stream of a speaker's clips, through the daemon's own path.

Clip-level scores place each clip alone in a window of silence; the daemon
scores 5 s windows of continuous audio with pauses, noise, level changes and
several utterances per window, smoothed and VAD-gated. :func:`build_stream`
lays clips end to end with random pauses (and a few long gaps, so silence is
tested too), adds coloured background noise at a fixed SNR and a random
overall level; :func:`score_stream` then takes the daemon's ``--jsonl``
predictions and scores every window that is mostly one clip against that
clip's label, and counts how often a window without speech is reported as an
emotion. :func:`repost` re-runs the daemon's post-processing (the voice gate
and the smoother) on the raw ``probs`` and ``voiced_fraction`` of kept
``--jsonl`` lines, so other gate thresholds and time constants can be scored
offline (:func:`rescore`) without playing the streams again. Imports numpy,
the training audio helpers and the daemon's torch-free smoother only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from contract.audio import LABELS, SAMPLE_RATE

DOMINANT_SHARE = 2 / 3  # a window is "one clip" when one clip holds this share of its speech ...
DOMINANT_MIN_S = 1.0  # ... and at least this much of it (or all of a shorter clip)
PAUSE_MAX_SPEECH_S = 0.1  # a window with at most this much clip audio is a pause


@dataclass(frozen=True)
class Segment:
    """Where one clip lies in the stream, in seconds, and its label."""

    start: float
    end: float
    label: str


TRIM_RANGE_DB = 40.0  # a clip's leading and trailing frames this far below its loudest are silence, not speech
TRIM_MARGIN_S = 0.05


def trim(audio: np.ndarray, range_db: float = TRIM_RANGE_DB, margin_s: float = TRIM_MARGIN_S) -> np.ndarray:
    """The clip without its leading and trailing silence (acted corpora hold up to a second of it at each end).

    Without this a window "mostly one clip" could be mostly that clip's
    silent lead-in, and the pauses between utterances would not be the ones drawn.
    """
    frame = SAMPLE_RATE // 50
    n = len(audio) // frame
    if n == 0:
        return audio
    db = 10 * np.log10(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(db >= db.max() - range_db)[0]
    margin = int(margin_s * SAMPLE_RATE)
    return audio[max(0, loud[0] * frame - margin) : min(len(audio), (loud[-1] + 1) * frame + margin)]


def build_stream(clips: Sequence[tuple[np.ndarray, str]], rng: np.random.Generator, pause_s: tuple[float, float] = (0.3, 1.5),
                 snr_db: float = 30.0, level_db: tuple[float, float] = (-12.0, 0.0), gap_every: int = 8,
                 gap_s: float = 6.0) -> tuple[np.ndarray, list[Segment]]:
    """Clips ``(audio, label)`` one after another, each :func:`trim`-med -> ``(stream, segments)``.

    Pauses are drawn uniformly from ``pause_s``; after every ``gap_every``
    clips a gap of ``gap_s`` holds no speech at all (longer than a window).
    Each clip keeps its own level relative to the others (speakers vary); the
    whole stream is then scaled so its peak lands at a random ``level_db``
    dBFS, and brown-to-white noise is added ``snr_db`` below the speech's
    active power, over pauses too, as a room or a line would.
    """
    from training.features import active_power, coloured_noise

    pieces: list[np.ndarray] = [np.zeros(int(rng.uniform(*pause_s) * SAMPLE_RATE), np.float32)]
    segments: list[Segment] = []
    t = len(pieces[0])
    for i, (clip, label) in enumerate(clips):
        audio = trim(clip)
        segments.append(Segment(t / SAMPLE_RATE, (t + len(audio)) / SAMPLE_RATE, label))
        pieces.append(audio.astype(np.float32))
        t += len(audio)
        pause = gap_s if gap_every and (i + 1) % gap_every == 0 else rng.uniform(*pause_s)
        pieces.append(np.zeros(int(pause * SAMPLE_RATE), np.float32))
        t += len(pieces[-1])
    stream = np.concatenate(pieces)
    speech = np.concatenate([p for p in pieces if p.any()]) if any(p.any() for p in pieces) else stream
    noise = coloured_noise(len(stream), rng, rng.uniform(0.0, 2.0)) * np.sqrt(active_power(speech) / 10 ** (snr_db / 10))
    stream = stream + noise.astype(np.float32)
    peak = float(np.max(np.abs(stream))) or 1.0
    stream *= 10 ** (rng.uniform(*level_db) / 20) / peak
    return stream.astype(np.float32), segments


def _overlaps(t0: float, t1: float, segments: Sequence[Segment]) -> list[tuple[float, Segment]]:
    return [(min(t1, s.end) - max(t0, s.start), s) for s in segments if s.end > t0 and s.start < t1]


def window_truth(t0: float, t1: float, segments: Sequence[Segment]) -> str | None:
    """The label a window ``[t0, t1)`` is scored against: its dominant clip's, ``"pause"``, or None (mixed)."""
    ov = _overlaps(t0, t1, segments)
    speech = sum(o for o, _ in ov)
    if speech <= PAUSE_MAX_SPEECH_S:
        return "pause"
    o, seg = max(ov, key=lambda x: x[0])
    if o >= DOMINANT_SHARE * speech and o >= min(DOMINANT_MIN_S, 0.9 * (seg.end - seg.start)):
        return seg.label
    return None


def score_stream(predictions: Iterable[dict], segments: Sequence[Segment]) -> dict:
    """Score ``--jsonl`` prediction messages of one stream against its segments.

    A window that is mostly one clip counts for that clip's label: right
    when the daemon's smoothed leader (``top``) is the label, wrong when it
    names another emotion or reports silence (``top`` null: the user sees
    nothing). Windows without speech count as false alarms when ``top``
    names an emotion; ``flips`` counts how often the emotion on display
    changes to another (silence in between does not reset it). ``raw_hits`` scores the same windows by the window's
    own probabilities (no smoothing, no VAD), to tell the head from the
    post-processing. Returns counts and, per label, hits and totals, so
    several streams can be pooled with :func:`pool_scores`.
    """
    hits = {lab: 0 for lab in LABELS}
    raw_hits = {lab: 0 for lab in LABELS}
    totals = {lab: 0 for lab in LABELS}
    out = {"windows": 0, "scored": 0, "mixed": 0, "pause": 0, "pause_reported": 0, "scored_silent": 0, "flips": 0}
    shown = None  # the emotion on display: a flip is a change from one shown emotion to another
    for p in predictions:
        if p.get("type", "prediction") != "prediction":
            continue
        out["windows"] += 1
        if p.get("top") is not None:
            out["flips"] += shown is not None and p["top"] != shown
            shown = p["top"]
        truth = window_truth(float(p["t_start"]), float(p["t_end"]), segments)
        if truth is None:
            out["mixed"] += 1
        elif truth == "pause":
            out["pause"] += 1
            out["pause_reported"] += p.get("top") is not None
        else:
            out["scored"] += 1
            totals[truth] += 1
            hits[truth] += p.get("top") == truth
            probs = p.get("probs") or {}
            raw_hits[truth] += bool(probs) and max(probs, key=probs.get) == truth
            out["scored_silent"] += p.get("top") is None
    return {**out, "hits": hits, "raw_hits": raw_hits, "totals": totals}


def pool_scores(scores: Sequence[dict]) -> dict:
    """Sum :func:`score_stream` results and derive UA, per-class recall and the false-alarm rate."""
    keys = ("windows", "scored", "mixed", "pause", "pause_reported", "scored_silent", "flips")
    out: dict = {k: sum(s.get(k, 0) for s in scores) for k in keys}
    hits = {lab: sum(s["hits"][lab] for s in scores) for lab in LABELS}
    totals = {lab: sum(s["totals"][lab] for s in scores) for lab in LABELS}
    recall = {lab: hits[lab] / totals[lab] for lab in LABELS if totals[lab]}
    raw = {lab: sum(s["raw_hits"][lab] for s in scores) / totals[lab] for lab in LABELS if totals[lab]}
    out.update(hits=hits, totals=totals, recall=recall, raw_recall=raw,
               ua=float(np.mean(list(recall.values()))) if recall else float("nan"),
               raw_ua=float(np.mean(list(raw.values()))) if raw else float("nan"),
               pause_reported_share=out["pause_reported"] / out["pause"] if out["pause"] else float("nan"),
               scored_silent_share=out["scored_silent"] / out["scored"] if out["scored"] else float("nan"))
    return out


# ----------------------------------------------------------------------------- post-processing offline


def voiced_seconds(p: dict) -> float:
    """How much of a prediction's window the daemon's VAD called voice, in seconds (its fraction of the window)."""
    return float(p["voiced_fraction"]) * max(0.0, float(p["t_end"]) - float(p["t_start"]))


def repost(predictions: Iterable[dict], min_voiced_s: float, tau_s: float, labels: Sequence[str] = LABELS) -> list[dict]:
    """The prediction messages of one stream with ``voiced``, ``smoothed`` and ``top`` recomputed.

    The daemon's own rule on the window's raw ``probs``: voiced when the VAD
    flagged at least ``min_voiced_s`` seconds of it, smoothed by
    :class:`realtime.postprocess.Smoother` with time constant ``tau_s`` over
    the windows' end times, ``top`` the smoothed leader when voiced and None
    when not. Messages are taken in ``seq`` order; other message types are dropped.
    """
    from realtime.postprocess import Smoother

    preds = sorted((p for p in predictions if p.get("type", "prediction") == "prediction"), key=lambda p: p.get("seq", 0))
    smoother = Smoother(len(labels), tau_s)
    out = []
    for p in preds:
        voiced = voiced_seconds(p) >= min_voiced_s
        probs = np.array([float(p["probs"][lab]) for lab in labels])
        smoothed = smoother.update(probs, float(p["t_end"]), voiced)
        out.append({**p, "voiced": voiced, "smoothed": dict(zip(labels, smoothed.tolist(), strict=True)),
                    "top": labels[int(np.argmax(smoothed))] if voiced else None})
    return out


def save_stream(directory: Path, name: str, predictions: Sequence[dict], segments: Sequence[Segment]) -> None:
    """Keep one stream's ``--jsonl`` predictions (``NAME.jsonl``) and its segments (``NAME.segments.json``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    (directory / f"{name}.segments.json").write_text(json.dumps([asdict(s) for s in segments]))


def load_streams(directory: Path) -> list[tuple[str, list[dict], list[Segment]]]:
    """Every stream :func:`save_stream` kept under ``directory`` (recursively): ``(name, predictions, segments)``."""
    out = []
    for seg_path in sorted(Path(directory).rglob("*.segments.json")):
        name = seg_path.name[: -len(".segments.json")]
        lines = seg_path.with_name(f"{name}.jsonl").read_text().splitlines()
        segments = [Segment(**s) for s in json.loads(seg_path.read_text())]
        out.append((str(seg_path.parent.relative_to(directory) / name), [json.loads(x) for x in lines if x.strip()], segments))
    return out


def rescore(streams: Sequence[tuple[str, list[dict], list[Segment]]], min_voiced_s: float, tau_s: float,
            group: int = 0) -> dict:
    """Score kept streams under another gate and time constant: :func:`pool_scores` of each group, then their mean.

    ``group`` > 0 groups streams by the first ``group`` parts of their names
    (e.g. 1: by fold folder, as bench/accuracy.py pools them) and averages
    UA, window's own UA and per-class recall over the groups; shares and
    counts pool over every stream. 0: one pool of all streams.
    """
    groups: dict[str, list[dict]] = {}
    for name, preds, segments in streams:
        key = "/".join(Path(name).parts[:group]) if group else ""
        groups.setdefault(key, []).append(score_stream(repost(preds, min_voiced_s, tau_s), segments))
    pooled = {k: pool_scores(v) for k, v in groups.items()}
    total = pool_scores([s for v in groups.values() for s in v])
    return {**total, "ua": float(np.mean([p["ua"] for p in pooled.values()])),
            "raw_ua": float(np.mean([p["raw_ua"] for p in pooled.values()])),
            "recall": {lab: float(np.mean([p["recall"][lab] for p in pooled.values() if lab in p["recall"]]))
                       for lab in LABELS if any(lab in p["recall"] for p in pooled.values())},
            "groups": {k: {"ua": p["ua"], "raw_ua": p["raw_ua"]} for k, p in pooled.items()}}
