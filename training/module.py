"""Lightning module (model, loss, optimiser, metrics) and data module (splits, cache, loaders).

The split follows Lightning's own: the module knows how to learn from a batch,
the data module where batches come from. Validation and test score whole
clips (window probabilities averaged), with UA as the monitored figure.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from contract.audio import LABELS, NUM_CLASSES, SAMPLE_RATE
from training.augment import build_augment
from training.dataset import AudioCache, EvalWindows, MixedEpochSampler, TrainWindows
from training.loss import focal_loss
from training.metrics import classification_metrics
from training.model import SpecAugment, build_model
from training.schema import model_config
from training.splits import Splits

log = logging.getLogger(__name__)


class EmotionDataModule(L.LightningDataModule):
    def __init__(self, cfg: dict, splits: Splits, train_only: set[str]) -> None:
        super().__init__()
        self.cfg, self.splits, self.train_only = cfg, splits, train_only
        self.window = int(round(float(cfg["dataset"]["window_s"]) * SAMPLE_RATE))
        self.hop = int(round(float(cfg["dataset"]["eval_hop_s"]) * SAMPLE_RATE))
        self.cache = AudioCache(cfg["dataset"].get("cache_dir"))
        self.data: dict[str, tuple[list, list[np.ndarray]]] = {}

    def prepare(self) -> None:
        """Decode (or read from the cache) every split once, in the main process, before workers fork."""
        for name in ("train", "val", "test"):
            if name not in self.data:
                self.data[name] = self.cache.load_all(getattr(self.splits, name))
        if not self.data["train"][0]:
            raise ValueError("no readable training clips")

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def train_labels(self) -> list[int]:
        self.prepare()
        return [r.label_index for r in self.data["train"][0]]

    def _loader(self, ds: Any, shuffle: bool = False, sampler: Any = None) -> DataLoader:
        workers = int(self.cfg["trainer"]["num_workers"])
        return DataLoader(
            ds,
            batch_size=int(self.cfg["trainer"]["batch_size"]),
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        records, audios = self.data["train"]
        ds = TrainWindows(audios, [r.label_index for r in records], self.window, build_augment(self.cfg["augment"]))
        main = [i for i, r in enumerate(records) if r.corpus not in self.train_only]
        extra = [i for i, r in enumerate(records) if r.corpus in self.train_only]
        sampler = MixedEpochSampler(main, extra, self.cfg["dataset"].get("train_only_sample"))
        return self._loader(ds, sampler=sampler)

    def _eval(self, name: str) -> DataLoader:
        records, audios = self.data[name]
        return self._loader(EvalWindows(audios, [r.label_index for r in records], self.window, self.hop))

    def val_dataloader(self) -> DataLoader:
        return self._eval("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval("test")


class ClipScores:
    """Accumulates window probabilities per clip and turns them into clip-level metrics."""

    def __init__(self) -> None:
        self.probs: dict[int, list[np.ndarray]] = {}
        self.labels: dict[int, int] = {}

    def add(self, probs: torch.Tensor, labels: torch.Tensor, clips: torch.Tensor) -> None:
        for p, y, c in zip(probs.detach().cpu().numpy(), labels.tolist(), clips.tolist(), strict=True):
            self.probs.setdefault(c, []).append(p)
            self.labels[c] = y

    def metrics(self) -> dict:
        clips = sorted(self.probs)
        y_true = [self.labels[c] for c in clips]
        y_pred = [int(np.mean(self.probs[c], axis=0).argmax()) for c in clips]
        return classification_metrics(y_true, y_pred)


class EmotionModule(L.LightningModule):
    def __init__(self, cfg: dict, class_weights: list[float] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = cfg
        model_cfg = model_config(cfg["model"])
        self.model = build_model(model_cfg)
        spec = model_cfg.specaugment
        self.specaugment = SpecAugment(**spec) if spec is not None else None
        weights = torch.tensor(class_weights if class_weights else [1.0] * NUM_CLASSES, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.gamma = float(cfg["loss"]["gamma"]) if cfg["loss"]["name"] == "focal" else 0.0
        self.label_smoothing = float(cfg["loss"]["label_smoothing"])  # train.yaml holds every loss key
        self.mixup = float(cfg["mixup"] or 0.0)
        self._scores: ClipScores | None = None
        self.last_metrics: dict[str, dict] = {}

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.model(waveform)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self.class_weights if self.cfg["loss"]["class_weights"] else None
        return focal_loss(logits, target, self.gamma, weight, self.label_smoothing)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        wav, y = batch
        spec = self.model.frontend(wav)
        if self.specaugment is not None:
            spec = self.specaugment(spec)
        target: torch.Tensor = y
        if self.mixup > 0 and spec.shape[0] > 1:
            lam = float(np.random.beta(self.mixup, self.mixup))
            perm = torch.randperm(spec.shape[0], device=spec.device)
            spec = lam * spec + (1 - lam) * spec[perm]
            one_hot = torch.nn.functional.one_hot(y, NUM_CLASSES).float()
            target = lam * one_hot + (1 - lam) * one_hot[perm]
        logits = self.model.net(spec)
        loss = self.loss(logits, target)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=wav.shape[0])
        return loss

    def _eval_start(self) -> None:
        self._scores = ClipScores()

    def _eval_step(self, batch: tuple, stage: str) -> None:
        wav, y, clip = batch
        logits = self.model(wav)
        self.log(f"{stage}/loss", self.loss(logits, y), on_epoch=True, batch_size=wav.shape[0])
        assert self._scores is not None
        self._scores.add(torch.softmax(logits, dim=-1), y, clip)

    def _eval_end(self, stage: str) -> None:
        if self._scores is None or not self._scores.probs:
            return
        m = self._scores.metrics()
        self.last_metrics[stage] = m
        self.log_dict({f"{stage}/ua": m["ua"], f"{stage}/acc": m["accuracy"], f"{stage}/f1": m["macro_f1"]}, prog_bar=True)
        for lab in LABELS:
            self.log(f"{stage}/recall_{lab}", m["per_class"][lab]["recall"])

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self) -> Any:
        o = self.cfg["optim"]
        params = [p for p in self.parameters() if p.requires_grad]
        if o["name"] == "adamw":
            opt = torch.optim.AdamW(params, lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        elif o["name"] == "sgd":
            opt = torch.optim.SGD(params, lr=float(o["lr"]), momentum=0.9, weight_decay=float(o["weight_decay"]), nesterov=True)
        else:
            raise ValueError(f"unknown optimiser {o['name']!r} (adamw | sgd)")
        if o["scheduler"] == "none":
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        if o["scheduler"] == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(o["lr"]), total_steps=max(total, 1), pct_start=float(o["warmup_frac"]))
        elif o["scheduler"] == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
        else:
            raise ValueError(f"unknown scheduler {o['scheduler']!r} (onecycle | cosine | none)")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        val = self.last_metrics.get("val", {})
        checkpoint["ser"] = {
            "variant": self.cfg["model"]["variant"],
            "data": self.cfg.get("choices", {}).get("data"),
            "val_metrics": {k: val[k] for k in ("ua", "accuracy", "macro_f1", "n") if k in val},
        }
