"""Training the chunk model's head on cached encoder features: data, loop, calibration, scoring.

The split follows Lightning's (data apart from the model) without its
machinery: a fold trains a few thousand steps of a head that sees
``[batch, K, layers, 768]`` feature tensors, which takes seconds to minutes
on a CPU, so the loop is plain torch and recipes can be compared over
several seeds per fold.

Sampling is corpus- and class-balanced: a corpus weighs ``clips**alpha``
(alpha 0.5: big corpora count more, but not in proportion), and within a
corpus every class weighs the same; the loss then gives each class equal
total weight, because some corpora lack some classes (nEMO has no disgust).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from training.audio import LABELS
from training.corpora import Record
from training.features import FeatureSet

log = logging.getLogger(__name__)

DEFAULT_TRAINER = {
    "steps": 1500,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "warmup_steps": 200,
    "label_smoothing": 0.05,
    "corpus_alpha": 0.5,
    "clean_p": 0.25,  # share of training windows drawn from the clean variant (the rest: augmented ones)
}


@dataclass
class Windows:
    """Windows of one feature set that belong to the chosen clips, with their labels."""

    fs: FeatureSet
    index: np.ndarray  # window indices into fs
    clip_of: np.ndarray  # per window: position of its clip in the records list
    silent_fill: str  # "zeros": digital silence (clean, evaluation); "bank": random noise chunks


def select_windows(fs: FeatureSet, records: Sequence[Record], silent_fill: str) -> Windows:
    """Windows of ``fs`` whose clip is one of ``records`` (clips the cache lacks are logged)."""
    pos = {str(r.path): i for i, r in enumerate(records)}
    clip_pos = np.array([pos.get(p, -1) for p in fs.paths])
    idx = np.nonzero(clip_pos[fs.clip] >= 0)[0]
    missing = len(records) - len(set(clip_pos[clip_pos >= 0].tolist()))
    if missing:
        log.info("%d of %d clips have no features in this variant (outside its fraction, or unreadable)", missing, len(records))
    return Windows(fs, idx, clip_pos[fs.clip[idx]], silent_fill)


def assemble(w: Windows, rows: np.ndarray, bank: np.ndarray, k: int, layers: Sequence[int], rng: np.random.Generator | None) -> torch.Tensor:
    """``[len(rows), K, len(layers), 768]`` float32: each window's stored chunks, then its silent ones."""
    fs = w.fs
    out = np.empty((len(rows), k, len(layers), fs.feats.shape[-1]), dtype=np.float32)
    for j, wi in enumerate(w.index[rows]):
        o, n = int(fs.offset[wi]), int(fs.count[wi])
        out[j, :n] = fs.feats[o : o + n][:, layers]
        if n < k:
            if w.silent_fill == "bank" and rng is not None:
                out[j, n:] = bank[rng.integers(0, len(bank), k - n)][:, layers]
            else:
                out[j, n:] = bank[0][layers]
    return torch.from_numpy(out)


def sample_weights(records: Sequence[Record], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip sampling probabilities and per-class loss weights (see the module docstring)."""
    per_corpus = Counter(r.corpus for r in records)
    per_cc = Counter((r.corpus, r.label) for r in records)
    classes_in = {c: len({lab for (cc, lab) in per_cc if cc == c}) for c in per_corpus}
    corpus_w = {c: n**alpha for c, n in per_corpus.items()}
    total = sum(corpus_w.values())
    p = np.array([corpus_w[r.corpus] / total / classes_in[r.corpus] / per_cc[(r.corpus, r.label)] for r in records])
    p /= p.sum()
    mass = np.zeros(len(LABELS))
    for r, pi in zip(records, p, strict=True):
        mass[r.label_index] += pi
    present = mass > 0
    class_w = np.zeros(len(LABELS))
    class_w[present] = 1.0 / mass[present]
    class_w *= present.sum() / class_w.sum()
    return p, class_w


def fit_head(model: Any, train: Sequence[Windows], records: Sequence[Record], bank: np.ndarray, cfg: dict, seed: int) -> dict:
    """Train ``model.mix`` and ``model.head`` on windows of the training clips; returns training stats.

    ``train[0]`` must be the clean variant: it sets the standardisation
    statistics and is drawn with probability ``clean_p``; the other
    variants share the rest.
    """
    c = {**DEFAULT_TRAINER, **(cfg or {})}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    layers = model.layers
    k = model.per_window
    _set_standardisation(model, train[0], layers)

    labels = torch.tensor([r.label_index for r in records])
    p_clip, class_w = sample_weights(records, float(c["corpus_alpha"]))
    by_clip = [_windows_by_clip(w, len(records)) for w in train]
    n_var = len(train)
    p_var = np.array([c["clean_p"]] + [(1 - c["clean_p"]) / (n_var - 1)] * (n_var - 1)) if n_var > 1 else np.ones(1)

    params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW(params, lr=float(c["lr"]), weight_decay=float(c["weight_decay"]))
    steps, warm = int(c["steps"]), int(c["warmup_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warm)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))
    )
    weight = torch.tensor(class_w, dtype=torch.float32)
    model.train()
    running = 0.0
    for step in range(steps):
        clips = rng.choice(len(records), size=int(c["batch_size"]), p=p_clip)
        variants = rng.choice(n_var, size=len(clips), p=p_var)
        rows: list[list[int]] = [[] for _ in range(n_var)]
        order: list[list[int]] = [[] for _ in range(n_var)]
        for j, (v, clip) in enumerate(zip(variants, clips, strict=True)):
            options = by_clip[v][clip]
            if not len(options):  # the clip failed to decode in this variant: fall back to the clean one
                v, options = 0, by_clip[0][clip]
            rows[v].append(int(rng.choice(options)))
            order[v].append(j)
        parts = [(assemble(train[v], np.array(rows[v]), bank, k, layers, rng), order[v]) for v in range(n_var) if rows[v]]
        x = torch.cat([p for p, _ in parts])
        y = labels[clips[np.concatenate([o for _, o in parts])]]
        logits = model.head(model.mix(x))
        loss = F.cross_entropy(logits, y, weight=weight, label_smoothing=float(c["label_smoothing"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % 500 == 0:
            log.info("step %d/%d loss %.3f", step + 1, steps, running)
    model.eval()
    return {"final_loss": running, "layer_weights": model.mix.layer_weights()}


def _windows_by_clip(w: Windows, n_clips: int) -> list[np.ndarray]:
    order = np.argsort(w.clip_of, kind="stable")
    bounds = np.searchsorted(w.clip_of[order], np.arange(n_clips + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(n_clips)]


def _set_standardisation(model: Any, clean: Windows, layers: Sequence[int], max_chunks: int = 20_000) -> None:
    """Mean and deviation of each used layer's statistics over (a fixed sample of) the training chunks."""
    fs = clean.fs
    rows = np.concatenate([np.arange(fs.offset[i], fs.offset[i] + fs.count[i]) for i in clean.index])
    if len(rows) > max_chunks:
        rows = np.sort(np.random.default_rng(0).choice(rows, max_chunks, replace=False))
    x = fs.feats[rows][:, layers].astype(np.float32)
    model.mix.mean.copy_(torch.from_numpy(x.mean(0)))
    model.mix.std.copy_(torch.from_numpy(x.std(0) + 1e-3))


@torch.inference_mode()
def window_logits(model: Any, w: Windows, bank: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits of every window of ``w`` (the temperature in the head applies)."""
    model.eval()
    out = []
    for i in range(0, len(w.index), batch):
        rows = np.arange(i, min(i + batch, len(w.index)))
        out.append(model.head(model.mix(assemble(w, rows, bank, model.per_window, model.layers, None))).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(LABELS)), np.float32)


def clip_probs(model: Any, w: Windows, bank: np.ndarray, n_clips: int) -> np.ndarray:
    """Per clip, the mean of its windows' probabilities (as ser-predict averages a long clip)."""
    probs = torch.softmax(torch.from_numpy(window_logits(model, w, bank)), -1).numpy()
    out = np.zeros((n_clips, probs.shape[1]))
    np.add.at(out, w.clip_of, probs)
    counts = np.bincount(w.clip_of, minlength=n_clips)
    return out / np.maximum(counts, 1)[:, None]


def fit_temperature(model: Any, val: Windows, bank: np.ndarray, records: Sequence[Record]) -> tuple[float, float, float]:
    """Temperature scaling on validation clips: the T minimising NLL; sets it in the head. Returns (T, nll before, after)."""
    model.head.temperature.fill_(1.0)
    logits = torch.from_numpy(window_logits(model, val, bank)).double()
    y = torch.tensor([records[i].label_index for i in val.clip_of])
    grid = torch.exp(torch.linspace(math.log(0.2), math.log(10.0), 300, dtype=torch.float64))
    nll = torch.stack([F.cross_entropy(logits / t, y) for t in grid])
    best = int(nll.argmin())
    t = float(grid[best])
    model.head.temperature.fill_(t)
    return t, float(nll[int(torch.argmin(torch.abs(grid - 1.0)))]), float(nll[best])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the top class: |accuracy - confidence| averaged over equal-width confidence bins, weighted by count."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def score_clips(model: Any, w: Windows, bank: np.ndarray, records: Sequence[Record]) -> dict:
    """Clip-level metrics (UA, accuracy, macro F1, per-class recall, confusion) and ECE of ``records``."""
    from training.metrics import classification_metrics

    probs = clip_probs(model, w, bank, len(records))
    seen = np.bincount(w.clip_of, minlength=len(records)) > 0
    y = np.array([r.label_index for r in records])[seen]
    m = classification_metrics(y.tolist(), probs[seen].argmax(1).tolist())
    m["ece"] = expected_calibration_error(probs[seen], y)
    return m


@dataclass
class SplitResult:
    model: Any
    temperature: float
    val_nll: tuple[float, float]
    test: dict[str, dict]  # condition -> metrics (with ECE after calibration)
    test_ece_uncalibrated: float | None
    train_stats: dict


def train_split(model_cfg: Any, trainer_cfg: dict, train: Sequence[Record], val: Sequence[Record],
                test: dict[str, tuple[Sequence[Record], dict]], cache: Any, seed: int) -> SplitResult:
    """Train one head on ``train`` (all training variants), calibrate on ``val``, score ``test`` sets.

    ``test`` maps a name to (records, variant): each is scored with the
    served geometry (clip centred, silent chunks digital zeros).
    """
    from training.chunk_model import WhisperChunkModel

    bank = cache.bank()
    model = WhisperChunkModel(model_cfg)
    variants = [dict(v) for v in model_cfg["features"]["train_variants"]]
    train_w = [select_windows(cache.get(train, v), train, "zeros" if v.get("place") != "random" else "bank") for v in variants]
    stats = fit_head(model, train_w, train, bank, trainer_cfg, seed)
    clean = {"name": "clean"}
    val_w = select_windows(cache.get(val, clean), val, "zeros")
    test_w = {name: select_windows(cache.get(recs, v), recs, "zeros") for name, (recs, v) in test.items()}
    first = next(iter(test), None)
    ece_before = score_clips(model, test_w[first], bank, test[first][0])["ece"] if first is not None else None
    t, nll_before, nll_after = fit_temperature(model, val_w, bank, val)
    results = {name: score_clips(model, test_w[name], bank, recs) for name, (recs, _) in test.items()}
    return SplitResult(model, t, (nll_before, nll_after), results, ece_before, stats)


def train_run(cfg: dict, run_dir: Any) -> Any:
    """``ser-train model=whisper``: split, cache features, train the head, calibrate, score, save ``last.ckpt``.

    The checkpoint holds the whole model (the Whisper weights included), so
    export and the torch backend need neither the weights package nor the cache.
    """
    import json
    from pathlib import Path

    from training.corpora import scan_corpora
    from training.features import Chunking, FeatureCache
    from training.metrics import summary_line, write_report
    from training.splits import split_records
    from training.whisper_weights import SOURCE

    run_dir = Path(run_dir)
    mc = cfg["model"]
    records, train_only = scan_corpora(cfg["data"]["corpora"])
    splits = split_records(records, train_only, cfg["split"], seed=int(cfg["seed"]))
    (run_dir / "splits.json").write_text(json.dumps(splits.speakers(), indent=2))
    if not splits.val:
        raise ValueError("the validation split is empty (needed for calibration): set split.val_fraction > 0 or split.val_speakers")
    enc = mc["encoder"]
    ch = Chunking(int(round(float(enc["chunk_s"]) * 16000)), int(round(float(enc["hop_s"]) * 16000)))
    cache = FeatureCache(cfg["dataset"]["cache_dir"], ch, int(enc.get("blocks", 4)))
    test = {"test": (splits.test, {"name": "clean"})} if splits.test else {}
    r = train_split(mc, dict(mc.get("head_trainer") or {}), splits.train, splits.val, test, cache, int(cfg["seed"]))
    bank = cache.bank()
    val_m = score_clips(r.model, select_windows(cache.get(splits.val, {"name": "clean"}), splits.val, "zeros"), bank, splits.val)
    model = r.model
    model.load_pretrained_encoder()
    calibration = {"temperature": r.temperature, "val_nll_before": r.val_nll[0], "val_nll_after": r.val_nll[1]}
    if r.test_ece_uncalibrated is not None:
        calibration.update(test_ece_before=r.test_ece_uncalibrated, test_ece_after=r.test["test"]["ece"])
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    data_name = "+".join(c["name"] for c in cfg["data"]["corpora"])
    torch.save({
        "hyper_parameters": {"cfg": cfg},
        "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
        "ser": {"val_metrics": {"val/ua": val_m["ua"], "val/acc": val_m["accuracy"]}, "data": data_name,
                "variant": mc.get("variant", "whisper"), "calibration": calibration, "encoder_weights": SOURCE,
                "layer_weights": r.train_stats.get("layer_weights")},
    }, ckpt_dir / "last.ckpt")
    for stage, m in (("val", val_m), *((("test", r.test["test"]),) if "test" in r.test else ())):
        m = {**m, "split": stage, "checkpoint": str(ckpt_dir / "last.ckpt"), "speakers": splits.speakers()[stage], "calibration": calibration}
        json_path, _ = write_report(m, ckpt_dir, f"last_{stage}", title=f"last on {stage} ({m['n']} clips)")
        log.info("%s: %s -> %s", stage, summary_line(m), json_path)
    return run_dir
