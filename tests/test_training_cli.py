"""ser-train and ser-eval end to end on generated audio, and their error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from contract.audio import SAMPLE_RATE
from tests.conftest import write_wav

pytest.importorskip("torch", reason="training tests need torch (pip install 'ser[train]')")
pytest.importorskip("lightning", reason="training tests need lightning (pip install 'ser[train]')")

BIN = Path(sys.executable).parent
EMOTION_CODES = {"05": 180.0, "07": 260.0, "06": 340.0, "03": 420.0, "01": 500.0, "04": 580.0}


def make_ravdess(root: Path, actors: int = 4) -> Path:
    """RAVDESS-named clips: each emotion a tone of its own pitch, with noise, at 22.05 kHz."""
    rng = np.random.default_rng(0)
    sr = 22_050
    t = np.arange(int(0.8 * sr)) / sr
    for a in range(1, actors + 1):
        for code, f in EMOTION_CODES.items():
            for rep in (1, 2):
                x = 0.3 * np.sin(2 * np.pi * f * (1 + 0.02 * a) * t) + 0.02 * rng.standard_normal(len(t))
                write_wav(root / f"Actor_{a:02d}" / f"03-01-{code}-01-01-{rep:02d}-{a:02d}.wav", x.astype(np.float32), sr)
    return root


@pytest.mark.slow
def test_train_then_eval_end_to_end(tmp_path: Path) -> None:
    data = make_ravdess(tmp_path / "data" / "ravdess")
    run_dir = tmp_path / "run"
    cmd = [str(BIN / "ser-train"), "data=ravdess", f"data_root={data.parent}", "model=compact",
           "trainer.max_epochs=2", "trainer.batch_size=8", "trainer.num_workers=0", "trainer.limit_train_batches=2",
           f"dataset.cache_dir={tmp_path / 'cache'}", f"run.dir={run_dir}", "split.test_fraction=0.25", "split.val_fraction=0.34"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"outputs in {run_dir}" in out.stdout
    ckpt = run_dir / "checkpoints"
    for name in ("best.ckpt", "last.ckpt", "best_val.json", "best_val_confusion.png", "best_test.json", "best_test_confusion.png"):
        assert (ckpt / name).is_file(), name
    assert (run_dir / "config.yaml").is_file() and (run_dir / "logs" / "metrics.csv").is_file()
    splits = json.loads((run_dir / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"]) and len(splits["test"]) == 1
    test_metrics = json.loads((ckpt / "best_test.json").read_text())
    assert {"accuracy", "ua", "macro_f1", "per_class", "confusion"} <= set(test_metrics)

    ev = subprocess.run([str(BIN / "ser-eval"), str(ckpt / "best.ckpt"), "--data", "ravdess", "--data-root", str(data.parent),
                         "--split-of", str(run_dir), "--snr", "10", "--out", str(tmp_path / "eval")],
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "eval_ravdess_snr10.json").read_text())
    assert report["n"] == 12 and report["snr_db"] == 10 and (tmp_path / "eval" / "eval_ravdess_snr10_confusion.png").is_file()

    # Several checkpoints score as one ensemble (mean of softmax outputs); a checkpoint with itself equals itself.
    from training.cli import evaluate_checkpoint

    corpora = [{"name": "ravdess", "root": str(data)}]
    single = evaluate_checkpoint(ckpt / "best.ckpt", corpora, set(splits["test"]), None, None)
    twice = evaluate_checkpoint([ckpt / "best.ckpt", ckpt / "best.ckpt"], corpora, set(splits["test"]), None, None)
    assert twice["confusion"] == single["confusion"] and twice["ua"] == pytest.approx(single["ua"])
    ev = subprocess.run([str(BIN / "ser-eval"), str(ckpt / "best.ckpt"), str(ckpt / "last.ckpt"), "--data", "ravdess",
                         "--data-root", str(data.parent), "--split-of", str(run_dir), "--out", str(tmp_path / "ens")],
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((tmp_path / "ens" / "eval_ravdess.json").read_text())
    assert report["n"] == 12 and report["checkpoint"] == [str(ckpt / "best.ckpt"), str(ckpt / "last.ckpt")]

    # Resuming a finished run continues from last.ckpt instead of starting over.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0 and "resuming from" in again.stderr


def test_clear_errors_without_tracebacks(tmp_path: Path) -> None:
    from training.cli import eval_main, train_main

    runner = CliRunner()
    r = runner.invoke(train_main, ["trainer.max_epoch=3"])
    assert r.exit_code != 0 and "unknown config key 'trainer.max_epoch'" in r.output and "Traceback" not in r.output
    r = runner.invoke(train_main, ["data=ravdess", f"data_root={tmp_path / 'missing'}", f"run.dir={tmp_path / 'r'}"])
    assert r.exit_code != 0 and "does not exist" in r.output
    (tmp_path / "empty" / "ravdess").mkdir(parents=True)
    r = runner.invoke(train_main, ["data=ravdess", f"data_root={tmp_path / 'empty'}", f"run.dir={tmp_path / 'r'}"])
    assert r.exit_code != 0 and "no usable ravdess" in r.output

    data = make_ravdess(tmp_path / "d" / "ravdess", actors=1)
    r = runner.invoke(eval_main, [str(tmp_path / "nope.ckpt"), "--data-root", str(data.parent)])
    assert r.exit_code != 0 and "checkpoint not found" in r.output
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x80\x04 this is not a checkpoint")
    r = runner.invoke(eval_main, [str(corrupt), "--data-root", str(data.parent)])
    assert r.exit_code != 0 and "corrupt" in r.output and "Traceback" not in r.output
    assert SAMPLE_RATE == 16_000
