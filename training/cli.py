"""``ser-train`` and ``ser-eval``: whole training runs from config, and scoring a checkpoint on any corpus."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click

from contract.config import ConfigError, compose, save, to_dict
from training.corpora import DataError

log = logging.getLogger("ser")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


TRAIN_HELP = """Train a model from conf/train.yaml with OVERRIDES applied.

\b
OVERRIDES pick config groups and set keys, for example:
  ser-train data=ravdess+tess model=compact trainer.max_epochs=30
  ser-train data=cremad data_root=/data split.k=5 split.fold=2
  ser-train model=seed augment=none optim.lr=3e-4 run.dir=runs/seed
Groups: model (whisper: the default; whisper-base: multilingual; compact,
seed), data (all, ravdess, tess, nemo, ased, turev, emotiontts, banglaser_ext,
cremad, emodb, folder, joined with +), augment (default, none). A run directory that already holds
checkpoints/last.ckpt resumes from it. Use --show-config to print the resolved
config and exit.
"""


@click.command(help=TRAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("overrides", nargs=-1)
@click.option("--show-config", is_flag=True, help="Print the resolved config and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def train_main(overrides: Sequence[str], show_config: bool, verbose: bool) -> None:
    _setup_logging(verbose)
    from training.schema import compose_train

    try:
        cfg = compose_train(overrides)  # the model section typed: a wrong key or value fails here, named
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if show_config:
        from contract.config import to_yaml

        click.echo(to_yaml(cfg))
        return
    try:
        run_dir = run_training(to_dict(cfg))
    except (ConfigError, DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"ser-train: outputs in {run_dir}")


def run_training(cfg: dict) -> Path:
    """Split, train, checkpoint, then score the best checkpoint on validation and test. Returns the run dir."""
    import lightning as L
    from lightning.pytorch.callbacks import (
        EarlyStopping,
        EMAWeightAveraging,
        LearningRateMonitor,
        ModelCheckpoint,
    )
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from training.corpora import scan_corpora
    from training.loss import class_weights
    from training.metrics import summary_line, write_report
    from training.module import EmotionDataModule, EmotionModule
    from training.splits import split_records

    run_dir = Path(cfg["run"]["dir"] or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg['model']['variant']}")
    if "encoder" in cfg["model"]:  # the chunked Whisper model: a head on cached features, no Lightning loop
        from training.chunk_training import train_run

        run_dir.mkdir(parents=True, exist_ok=True)
        save(compose_from_dict(cfg), run_dir / "config.yaml")
        return train_run(cfg, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resume = bool(cfg["run"]["resume"]) and last.is_file()  # compose gives every train.yaml key
    run_dir.mkdir(parents=True, exist_ok=True)
    save(compose_from_dict(cfg), run_dir / "config.yaml")
    L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    records, train_only = scan_corpora(cfg["data"]["corpora"])
    splits = split_records(records, train_only, cfg["split"], seed=int(cfg["seed"]))
    (run_dir / "splits.json").write_text(json.dumps(splits.speakers(), indent=2))
    log.info("split by speaker: %s", {k: f"{len(getattr(splits, k))} clips / {len(v)} speakers" for k, v in splits.speakers().items()})
    if not splits.val:
        raise ValueError("the validation split is empty: set split.val_fraction > 0 or split.val_speakers")

    dm = EmotionDataModule(cfg, splits, train_only)
    weights = class_weights(dm.train_labels(), 6).tolist() if cfg["loss"]["class_weights"] else None
    module = EmotionModule(cfg, weights)

    t = cfg["trainer"]
    loggers = [CSVLogger(run_dir, name="logs", version=""), TensorBoardLogger(run_dir, name="tb", version="")]
    if t["wandb"]:
        try:
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(save_dir=str(run_dir), offline=True, project="ser"))
        except Exception as exc:  # wandb is optional: never fail a run for it
            log.warning("wandb logging unavailable: %s", exc)
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val/ua", mode="max", save_last=True, save_top_k=1, enable_version_counter=False
    )
    callbacks = [best_cb, EarlyStopping(monitor="val/ua", mode="max", patience=int(t["patience"])), LearningRateMonitor()]
    if t["ema_decay"]:
        # Validate, select and ship the exponential moving average of the weights: on small, speaker-disjoint
        # validation sets it is far steadier than the raw weights of the last step.
        callbacks.append(EMAWeightAveraging(decay=float(t["ema_decay"])))
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=int(t["max_epochs"]),
        accelerator=t["accelerator"],
        devices=t["devices"],
        strategy=t["strategy"],
        precision=t["precision"],
        logger=loggers,
        callbacks=callbacks,
        log_every_n_steps=int(t["log_every_n_steps"]),
        limit_train_batches=t["limit_train_batches"],
        limit_val_batches=t["limit_val_batches"],
        gradient_clip_val=t["gradient_clip_val"],
        deterministic=False,
    )
    if resume:
        log.info("resuming from %s", last)
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)

    best = Path(best_cb.best_model_path or last)
    # Score with a fresh trainer: the fit trainer's weight-averaging callback would reload the raw weights
    # from the checkpoint, not the averaged ones it ships (and ser-eval and the exporter read).
    scorer = L.Trainer(accelerator=t["accelerator"], devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    for stage, loader in (("val", dm.val_dataloader), ("test", dm.test_dataloader)):
        if not getattr(splits, stage):
            continue
        scorer.test(module, dataloaders=loader(), ckpt_path=str(best), verbose=False)
        m = module.last_metrics.get("test")
        if m is None:
            continue
        m = {**m, "split": stage, "checkpoint": str(best), "speakers": splits.speakers()[stage]}
        json_path, png = write_report(m, best.parent, f"{best.stem}_{stage}", title=f"{best.stem} on {stage} ({m['n']} clips)")
        log.info("%s: %s -> %s, %s", stage, summary_line(m), json_path, png)
    return run_dir


def compose_from_dict(cfg: dict):  # noqa: ANN201 - OmegaConf type
    from contract.config import from_dict

    return from_dict(cfg)


EVAL_HELP = """Score CHECKPOINT (from ser-train) on a corpus: accuracy, UA, macro F1, per-class
recall, confusion PNG, written as JSON. Several checkpoints score as one ensemble (their
softmax outputs averaged), which is how to measure what averaging a few runs buys.

\b
Examples:
  ser-eval runs/x/checkpoints/best.ckpt --data ravdess --speakers ravdess:01,ravdess:02
  ser-eval runs/a/checkpoints/last.ckpt runs/b/checkpoints/last.ckpt --split-of runs/a
  ser-eval best.ckpt --data cremad --data-root /data --snr 10
  ser-eval best.ckpt --data emodb --data-root /data --reverb 0.4
"""


@click.command(help=EVAL_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", "data", default="ravdess", show_default=True, help="Corpus config(s), joined with + (ravdess, tess, cremad, emodb, folder).")
@click.option("--data-root", default=None, help="Folder holding the corpora (default: config data_root).")
@click.option("--speakers", default=None, help="Comma-separated speaker ids to score (e.g. ravdess:01,ravdess:02); default all.")
@click.option("--split-of", type=click.Path(path_type=Path), default=None, help="A run dir: score the speakers of its test split (splits.json).")
@click.option("--snr", type=float, default=None, help="Add white noise at this SNR in dB before scoring (robustness).")
@click.option("--reverb", type=float, default=None, help="Convolve with a synthetic room of this RT60 in s (robustness).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: beside the checkpoint).")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("-v", "--verbose", is_flag=True)
def eval_main(checkpoints: tuple[Path, ...], data: str, data_root: str | None, speakers: str | None, split_of: Path | None,
              snr: float | None, reverb: float | None, out: Path | None, batch_size: int, verbose: bool) -> None:
    _setup_logging(verbose)
    from training.metrics import summary_line, write_report
    from training.model import CheckpointError

    overrides = [f"data={data}"] + ([f"data_root={data_root}"] if data_root else [])
    try:
        cfg = to_dict(compose("train", overrides))
        chosen = set(speakers.split(",")) if speakers else None
        if split_of is not None:
            split_file = Path(split_of) / "splits.json"
            if not split_file.is_file():
                raise click.ClickException(f"{split_file} not found")
            chosen = set(json.loads(split_file.read_text())["test"])
        m = evaluate_checkpoint(list(checkpoints), cfg["data"]["corpora"], chosen, snr, reverb, batch_size)
    except (ConfigError, DataError, CheckpointError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    tag = data.replace("+", "-") + (f"_snr{snr:g}" if snr is not None else "") + (f"_reverb{reverb:g}" if reverb is not None else "")
    out_dir = out or checkpoints[0].parent
    name = checkpoints[0].name if len(checkpoints) == 1 else f"ensemble of {len(checkpoints)}"
    m = {**m, "checkpoint": str(checkpoints[0]) if len(checkpoints) == 1 else [str(c) for c in checkpoints],
         "data": data, "snr_db": snr, "reverb_rt60": reverb}
    json_path, png = write_report(m, out_dir, f"eval_{tag}", title=f"{name} on {tag} ({m['n']} clips)")
    click.echo(f"ser-eval: {summary_line(m)}")
    click.echo(f"ser-eval: wrote {json_path} and {png}")


def evaluate_checkpoint(checkpoint: Path | list[Path], corpora: list[dict], speakers: set[str] | None, snr: float | None,
                        reverb: float | None, batch_size: int = 16, seed: int = 0) -> dict:
    """Clip-level metrics of a checkpoint on the given corpora (optionally some speakers, optionally corrupted).

    A list of checkpoints is scored as an ensemble: the mean of their softmax outputs per window,
    then the usual clip averaging. The first checkpoint's dataset settings (window hop) apply.
    """
    import numpy as np
    import torch

    from contract.audio import SAMPLE_RATE, WINDOW_SAMPLES
    from training.corpora import scan_corpora
    from training.dataset import AudioCache, EvalWindows
    from training.features import add_noise, reverberate
    from training.model import load_checkpoint
    from training.module import ClipScores

    loaded = [load_checkpoint(c) for c in (checkpoint if isinstance(checkpoint, list) else [checkpoint])]
    models, ckpt_cfg = [m for m, _ in loaded], loaded[0][1]
    records, _ = scan_corpora(corpora)
    if speakers:
        unknown = speakers - {r.speaker for r in records}
        if unknown:
            raise ValueError(f"speakers not in the data: {sorted(unknown)}")
        records = [r for r in records if r.speaker in speakers]
    records, audios = AudioCache(ckpt_cfg["dataset"].get("cache_dir")).load_all(records)
    if not records:
        raise DataError("no readable clips to score")
    rng = np.random.default_rng(seed)
    if reverb is not None:
        audios = [reverberate(a, reverb, rng) for a in audios]
    if snr is not None:
        audios = [add_noise(a, snr, rng) for a in audios]
    ds = EvalWindows(audios, [r.label_index for r in records], WINDOW_SAMPLES, int(float(ckpt_cfg["dataset"]["eval_hop_s"]) * SAMPLE_RATE))
    scores = ClipScores()
    with torch.inference_mode():
        for wav, y, clip in torch.utils.data.DataLoader(ds, batch_size=batch_size):
            scores.add(torch.stack([torch.softmax(model(wav), dim=-1) for model in models]).mean(0), y, clip)
    return scores.metrics()
