"""Classification metrics for emotion recognition, and the confusion-matrix figure.

Unweighted accuracy (UA, the mean of per-class recall) is the headline
figure: corpora are imbalanced (RAVDESS has half as many neutral clips), and
plain accuracy rewards a model for favouring the big classes. Numpy only;
matplotlib is imported when a figure is drawn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from contract.audio import LABELS


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int = len(LABELS)) -> np.ndarray:
    """``[true, predicted]`` counts."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str] = LABELS) -> dict:
    """Accuracy, UA, macro F1 and per-class recall/precision/F1 over the classes present in ``y_true``."""
    cm = confusion(y_true, y_pred, len(labels))
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm).astype(np.float64)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = int(cm.sum())
    return {
        "n": total,
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "ua": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            lab: {"recall": float(recall[i]), "precision": float(precision[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, lab in enumerate(labels)
        },
        "labels": list(labels),
        "confusion": cm.tolist(),
    }


def plot_confusion(cm: np.ndarray | list, path: Path, labels: Sequence[str] = LABELS, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.4), dpi=110)
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion (rows: true class recall)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(metrics: dict, out_dir: Path, stem: str, title: str = "") -> tuple[Path, Path]:
    """``<stem>.json`` and ``<stem>_confusion.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(metrics, indent=2))
    png = plot_confusion(metrics["confusion"], out_dir / f"{stem}_confusion.png", metrics.get("labels", LABELS), title)
    return json_path, png


def summary_line(m: dict) -> str:
    worst = min(m["per_class"].items(), key=lambda kv: kv[1]["recall"] if kv[1]["support"] else 9)
    return f"n={m['n']} acc={m['accuracy']:.3f} UA={m['ua']:.3f} macroF1={m['macro_f1']:.3f} lowest recall {worst[0]}={worst[1]['recall']:.2f}"
