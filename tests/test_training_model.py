"""Frontend against an independent numpy/librosa reference; models, loss, metrics, config, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from contract.audio import LABELS, SAMPLE_RATE
from contract.config import ConfigError, compose
from training.mel import hann_window, mel_filterbank
from training.metrics import classification_metrics

torch = pytest.importorskip("torch", reason="training tests need torch (pip install 'ser[train]')")


def numpy_logmel(x: np.ndarray, n_fft: int, win: int, hop: int, n_mels: int, f_min: float, f_max: float, top_db: float) -> np.ndarray:
    """Independent reference: framed FFT with numpy (not the conv basis), librosa-style mel, dB."""
    pad = n_fft // 2
    xp = np.pad(x.astype(np.float64), (pad, pad))
    n_frames = 1 + len(x) // hop
    window = hann_window(win, n_fft)
    frames = np.stack([xp[i * hop : i * hop + n_fft] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = mel_filterbank(SAMPLE_RATE, n_fft, n_mels, f_min, f_max).astype(np.float64) @ power.T
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    return np.maximum(db, db.max() - top_db)


def test_mel_filterbank_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    ours = mel_filterbank(SAMPLE_RATE, 400, 64, 50.0, 8000.0)
    ref = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=400, n_mels=64, fmin=50.0, fmax=8000.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", ["compact", pytest.param("seed", marks=pytest.mark.slow)])
def test_frontend_matches_numpy_reference(variant: str) -> None:
    from training.frontend import FrontendConfig, LogMel
    from training.model import frontend_config

    fe = frontend_config(compose("train", [f"model={variant}"]).model)
    raw = LogMel(FrontendConfig(**{**fe.__dict__, "norm": "none"}))
    rng = np.random.default_rng(0)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    ours = raw(torch.from_numpy(x)[None])[0].numpy()
    ref = numpy_logmel(x, fe.n_fft, fe.win_length, fe.hop_length, fe.n_mels, fe.f_min, fe.f_max, fe.top_db)
    assert ours.shape == ref.shape == (fe.n_mels, 1 + len(x) // fe.hop_length)
    assert np.max(np.abs(ours - ref)) < 0.05  # dB, float32 conv vs float64 FFT

    for norm in ("utterance", "cmvn"):
        front = LogMel(FrontendConfig(**{**fe.__dict__, "norm": norm}))
        normed = front(torch.from_numpy(x)[None])[0]
        louder = front(torch.from_numpy(x * 4)[None])[0]
        assert torch.allclose(normed, louder, atol=1e-3), norm  # both normalisations are gain-invariant
        assert abs(float(normed.std()) - 1) < 0.2, norm
    utt = LogMel(FrontendConfig(**{**fe.__dict__, "norm": "utterance"}))(torch.from_numpy(x)[None])[0]
    assert abs(float(utt.mean())) < 1e-3 and abs(float(utt.std()) - 1) < 1e-2


def test_cmvn_removes_channel_colouring_and_ignores_padding() -> None:
    from training.frontend import FrontendConfig, LogMel

    front = LogMel(FrontendConfig(norm="cmvn"))
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SAMPLE_RATE).astype(np.float32) * np.repeat(rng.uniform(0.05, 0.5, 50), 320).astype(np.float32)
    # A fixed linear filter (a "microphone") shifts each band's log level by a constant: cmvn takes it out.
    coloured = np.convolve(x, [1.0, 0.6, 0.2], mode="same").astype(np.float32)
    a, b = front(torch.from_numpy(x)[None])[0], front(torch.from_numpy(coloured)[None])[0]
    raw = LogMel(FrontendConfig(norm="none"))
    assert (a - b).abs().mean() < 0.5 * (raw(torch.from_numpy(x)[None]) - raw(torch.from_numpy(coloured)[None])).abs().mean() / a.std()
    # How much zero padding surrounds a clip does not move the statistics of its audible part.
    one = front(torch.from_numpy(np.concatenate([x, np.zeros(SAMPLE_RATE, dtype=np.float32)]))[None])[0]
    three = front(torch.from_numpy(np.concatenate([x, np.zeros(3 * SAMPLE_RATE, dtype=np.float32)]))[None])[0]
    assert torch.allclose(one[:, :100], three[:, :100], atol=1e-3)


@pytest.mark.parametrize("variant,params", [("compact", (3e5, 1e6)), pytest.param("seed", (12e6, 16e6), marks=pytest.mark.slow)])
def test_models_give_logits_and_gradients(variant: str, params: tuple[float, float]) -> None:
    from training.model import build_model, count_parameters

    model = build_model(compose("train", [f"model={variant}"]).model)
    assert params[0] < count_parameters(model) < params[1]
    x = torch.randn(2, SAMPLE_RATE * 5 if variant == "compact" else SAMPLE_RATE * 2) * 0.1
    logits = model(x)
    assert logits.shape == (2, len(LABELS))
    assert not torch.allclose(logits.softmax(-1).sum(-1), logits.sum(-1))  # logits, not probabilities
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_focal_loss_reduces_to_cross_entropy_and_focuses_on_hard_examples() -> None:
    from training.loss import class_weights, focal_loss

    logits = torch.randn(16, 6)
    y = torch.randint(0, 6, (16,))
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(focal_loss(logits, y, gamma=0.0), ce, atol=1e-6)
    w = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.5, 1.0])
    assert torch.allclose(focal_loss(logits, y, gamma=0.0, weight=w), torch.nn.functional.cross_entropy(logits, y, weight=w), atol=1e-6)
    easy = torch.tensor([[8.0, 0, 0, 0, 0, 0]])
    hard = torch.tensor([[0.5, 0, 0, 0, 0, 0]])
    t0 = torch.tensor([0])
    ratio_focal = focal_loss(easy, t0, 2.0) / focal_loss(hard, t0, 2.0)
    ratio_ce = focal_loss(easy, t0, 0.0) / focal_loss(hard, t0, 0.0)
    assert ratio_focal < ratio_ce / 10  # easy examples are down-weighted
    weights = class_weights([0, 0, 0, 1], 6)
    assert weights[1] > weights[0] > 0 and weights[2] == 0 and torch.isclose(weights[weights > 0].mean(), torch.tensor(1.0))


def test_metrics_ua_differs_from_accuracy_on_imbalanced_data() -> None:
    y_true = [0] * 8 + [1] * 2
    y_pred = [0] * 8 + [0, 1]
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["ua"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["per_class"]["disgust"]["recall"] == 0.5 and m["confusion"][1][0] == 1
    f1_anger = 2 * (8 / 9) * 1 / (8 / 9 + 1)
    assert m["macro_f1"] == pytest.approx((f1_anger + 2 / 3) / 2)


def test_config_groups_overrides_and_errors() -> None:
    cfg = compose("train", ["data=ravdess+tess", "model=seed", "trainer.max_epochs=3", "+extra.key=1"])
    assert [c["name"] for c in cfg.data.corpora] == ["ravdess", "tess"]
    assert cfg.model.variant == "seed" and cfg.trainer.max_epochs == 3 and cfg.extra.key == 1
    with pytest.raises(ConfigError, match="unknown config key 'trainer.max_epoch'"):
        compose("train", ["trainer.max_epoch=3"])
    with pytest.raises(ConfigError, match="unknown model 'huge'"):
        compose("train", ["model=huge"])
    with pytest.raises(ConfigError, match="key=value"):
        compose("train", ["model"])


def test_augmentation_pipeline_runs_and_changes_audio() -> None:
    pytest.importorskip("audiomentations")
    from training.augment import build_augment

    aug = build_augment(compose("train", []).augment)
    x = (0.3 * np.sin(2 * np.pi * 200 * np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE)).astype(np.float32)
    outs = [aug(x.copy(), SAMPLE_RATE) for _ in range(5)]
    assert all(o.shape == x.shape and o.dtype == np.float32 and np.abs(o).max() <= 1.0 for o in outs)
    assert any(not np.allclose(o, x) for o in outs)
    assert build_augment(compose("train", ["augment=none"]).augment) is None
