"""The chunked model's training side: window geometry, degradations, head training, calibration, export.

The encoder here has random weights (no weights package needed): what is
tested is the plumbing that makes offline and streaming scores equal and the
served graph faithful, not what the encoder knows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from contract.audio import LABELS, WINDOW_SAMPLES  # noqa: E402
from contract.geometry import ChunkGeometry  # noqa: E402
from contract.model_io import chunk_metadata  # noqa: E402
from training.chunk_training import (  # noqa: E402
    Windows,
    expected_calibration_error,
    fit_head,
    fit_temperature,
    sample_weights,
    score_clips,
)
from training.corpora import Record  # noqa: E402
from training.features import FeatureSet, degrade, placed_windows  # noqa: E402
from training.voicing import SEGMENTS, TAIL, Turns  # noqa: E402

CH = ChunkGeometry()


def small_cfg(**head: object) -> dict:
    return {
        "variant": "whisper",
        "encoder": {"name": "tiny.en", "blocks": 2, "chunk_s": 1.0, "hop_s": 0.5},
        "head": {"kind": "moments", "layers": [0, 1, 2], "mix": "concat", "hidden": 0, "dropout": 0.1, "pooling": "attention", **head},
    }


def test_a_long_clip_gives_several_full_windows() -> None:
    audio = np.arange(int(8.3 * 16000), dtype=np.float32)
    windows = placed_windows(audio, CH)  # ser-predict's windows: every 2.5 s, the last flush with the end
    assert len(windows) == 3 and all(len(c) == 9 and s == 0 for c, s in windows)
    assert windows[1][0][0, 0] == 40000 and windows[-1][0][-1, -1] == audio[-1]


def test_degradations_keep_length_and_range() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (t % 0.5 < 0.3)).astype(np.float32)
    for variant in (
        {"noise_snr_db": 10},
        {"noise_snr_db": [5, 35], "noise_colour": [0, 2], "gain_db": [-20, 6]},
        {"reverb_rt60": 0.4},
        {"opus_kbps": 16},
        {"band": [[80, 300], [3400, 8000]]},
    ):
        out = degrade(audio, variant, rng)
        assert out.shape == audio.shape and out.dtype == np.float32
        assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= 1.0
        assert not np.allclose(out, audio)
    noisy = degrade(audio, {"noise_snr_db": 10}, np.random.default_rng(1))
    active = np.abs(audio) > 0
    snr = 10 * np.log10(np.mean(audio[active] ** 2) / np.mean((noisy - audio) ** 2))
    assert 8 < snr < 12


def test_a_variant_limited_to_corpora_encodes_only_their_clips(tmp_path: Path) -> None:
    import soundfile as sf

    from training.features import covers, encode_variant

    recs = []
    for corpus in ("ravdess", "nemo"):
        for i in range(3):
            path = tmp_path / f"{corpus}-{i}.wav"
            t = np.arange(16000) / 16000
            sf.write(path, (0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)
            recs.append(Record(path, "anger", f"{corpus}:{i}", corpus))
    seen: list[int] = []

    def encoder(chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # stands for the Whisper statistics
        seen.append(len(chunks))
        return np.zeros((len(chunks), 2, 4), np.float16), np.ones((len(chunks), TAIL), np.float32)

    variant = {"name": "noisy", "corpora": ["ravdess"], "noise_snr_db": [0, 20]}
    fs = encode_variant(recs, variant, CH, encoder)
    assert sorted(Path(p).name for p in fs.paths) == [f"ravdess-{i}.wav" for i in range(3)]
    assert [covers(variant, r) for r in recs] == [True] * 3 + [False] * 3
    # Without the key every corpus is covered, and the fraction draw is what it was before the key existed.
    assert all(covers({"name": "noisy", "noise_snr_db": [0, 20]}, r) for r in recs)
    assert sum(seen) == len(fs.feats)


def records(spec: dict[tuple[str, str], int]) -> list[Record]:
    out = []
    for (corpus, label), n in spec.items():
        out += [Record(Path(f"/{corpus}/{label}/{i}.wav"), label, f"{corpus}:{i % 3}", corpus) for i in range(n)]
    return out


def test_sampling_balances_corpora_and_classes() -> None:
    recs = records({("big", "anger"): 300, ("big", "sad"): 100, ("small", "anger"): 10, ("small", "disgust"): 10})
    p, class_w = sample_weights(recs, alpha=0.5)
    assert p.sum() == pytest.approx(1.0)
    by = {}
    for r, pi in zip(recs, p, strict=True):
        by[(r.corpus, r.label)] = by.get((r.corpus, r.label), 0) + pi
    assert by[("big", "anger")] == pytest.approx(by[("big", "sad")])  # classes equal within a corpus
    assert by[("small", "anger")] == pytest.approx(by[("small", "disgust")])
    big, small = by[("big", "anger")] * 2, by[("small", "anger")] * 2
    assert big / small == pytest.approx((400 / 20) ** 0.5)  # corpora weigh clips ** alpha
    # The loss gives every present class the same total weight; absent classes none.
    mass = np.zeros(len(LABELS))
    for r, pi in zip(recs, p, strict=True):
        mass[r.label_index] += pi
    present = mass > 0
    assert np.allclose((mass * class_w)[present], (mass * class_w)[present][0])
    assert np.all(class_w[~present] == 0)


def synthetic_features(recs: list[Record], seed: int, layers: int = 3, d: int = 384) -> FeatureSet:
    """Chunk features whose class shows in a few dimensions of every chunk (all four statistics), plus noise."""
    rng = np.random.default_rng(seed)
    feats, voiced, offset, count, silent = [], [], [], [], []
    total = 0
    for r in recs:
        n = int(rng.integers(3, 10))
        x = rng.normal(size=(n, layers, 4 * d)).astype(np.float32)
        for q in range(4):
            x[:, :, q * d + r.label_index * 8 : q * d + r.label_index * 8 + 8] += 1.5
        x[:, :, d : 2 * d] = np.abs(x[:, :, d : 2 * d])  # deviations are >= 0
        x[:, :, 3 * d :] = np.abs(x[:, :, 3 * d :])
        feats.append(x.astype(np.float16))
        share = rng.uniform(0.3, 1.0, n)
        voiced.append(np.stack([share, rng.uniform(-30, -10, n), *[share] * SEGMENTS], 1).astype(np.float32))
        offset.append(total)
        count.append(n)
        silent.append(9 - n)
        total += n
    return FeatureSet([str(r.path) for r in recs], np.concatenate(feats), np.concatenate(voiced), np.array(offset),
                      np.array(count), np.array(silent), np.arange(len(recs)))


def windows_of(fs: FeatureSet, fill: str) -> Windows:
    return Windows(fs, np.arange(len(fs.offset)), np.arange(len(fs.offset)), fill)


def silent_bank(layers: int = 3, d: int = 384) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((4, layers, 4 * d), np.float16), np.tile(np.array([[0.01, -100.0, *[0.01] * SEGMENTS]], np.float32), (4, 1))


@pytest.mark.slow
@pytest.mark.parametrize("kind,trainer", [("moments", {}), ("moments", {"optimizer": "adamw", "steps": 300}),
                                          ("attention", {"steps": 150, "warmup_steps": 10})])
def test_head_learns_calibrates_and_scores(kind: str, trainer: dict) -> None:
    from training.chunk_model import WhisperChunkModel

    spec = {("a", lab): 40 for lab in LABELS}
    train, test = records(spec), records({("t", lab): 15 for lab in LABELS})
    bank = silent_bank()
    model = WhisperChunkModel(small_cfg(kind=kind))
    stats = fit_head(model, [windows_of(synthetic_features(train, 0), "zeros"), windows_of(synthetic_features(train, 1), "bank")],
                     train, bank, trainer, seed=0)
    assert stats["final_loss"] < 1.0
    m = score_clips(model, windows_of(synthetic_features(test, 2), "zeros"), bank, test)
    assert m["ua"] > 0.9 and m["n"] == len(test)
    val = records({("v", lab): 10 for lab in LABELS})
    t, before, after = fit_temperature(model, windows_of(synthetic_features(val, 3), "zeros"), bank, val)
    assert after <= before and float(model.head.temperature) == pytest.approx(t)


@pytest.mark.slow
def test_lbfgs_fit_is_the_regularised_optimum() -> None:
    """The closed-form fit reaches the minimum of scikit-learn's objective (its gradient vanishes there)."""
    from torch.nn import functional as F

    from training.chunk_training import fit_linear

    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 600)
    x = rng.normal(size=(600, 20)) + np.eye(6, 20)[y] * 1.5
    weight = rng.uniform(0.2, 2.0, 600)
    c = 0.05
    xt, yt, wt = torch.from_numpy(x).float(), torch.from_numpy(y), torch.from_numpy(weight).float()
    w, b = fit_linear(xt, yt, wt, c)
    w64, b64 = w.double().requires_grad_(), b.double().requires_grad_()
    loss = 0.5 * (w64 * w64).sum() + c * (wt.double() * F.cross_entropy(xt.double() @ w64.T + b64, yt, reduction="none")).sum()
    loss.backward()
    assert float(w64.grad.abs().max()) < 1e-3 * float(w.abs().max()) and float(b64.grad.abs().max()) < 1e-2
    # A stronger penalty shrinks the weights: the regulariser is really there.
    w_small, _ = fit_linear(xt, yt, wt, c / 50)
    assert float(w_small.norm()) < 0.5 * float(w.norm())


def test_row_weights_split_each_clip_between_clean_and_augmented() -> None:
    from training.chunk_training import row_weights

    recs = records({("a", "anger"): 4, ("a", "sad"): 4})
    clean = Windows(None, np.arange(8), np.arange(8), "zeros")  # type: ignore[arg-type]
    aug = Windows(None, np.arange(6), np.array([0, 0, 1, 2, 3, 4]), "bank")  # type: ignore[arg-type]
    wc, wa = row_weights([clean, aug], recs, alpha=0.5, clean_p=0.25)
    assert np.concatenate([wc, wa]).mean() == pytest.approx(1.0)
    per_clip = wc.copy()
    np.add.at(per_clip, aug.clip_of, wa)
    assert np.allclose(per_clip, per_clip[0])  # every clip weighs the same in total (balanced classes here)
    assert wc[0] == pytest.approx(0.25 * per_clip[0]) and wa[0] == pytest.approx(0.375 * per_clip[0])
    assert wc[7] == pytest.approx(per_clip[7])  # no augmented window: all of it on the clean one


def test_row_weights_do_not_depend_on_the_unweighted_corpora_listed() -> None:
    """A corpus at weight 0 adds windows that weigh nothing, and changes no other window's weight (so no L2 strength)."""
    from training.chunk_training import row_weights

    english = records({("ravdess", "anger"): 4, ("ravdess", "sad"): 4})
    other = records({("nemo", "anger"): 6, ("nemo", "sad"): 6})
    weights = {"ravdess": 1.0, "default": 0.0}
    alone = row_weights([Windows(None, np.arange(8), np.arange(8), "zeros")], english, 0.5, 0.5, weights)[0]  # type: ignore[arg-type]
    both = row_weights([Windows(None, np.arange(20), np.arange(20), "zeros")], english + other, 0.5, 0.5, weights)[0]  # type: ignore[arg-type]
    assert np.allclose(both[:8], alone) and not both[8:].any()
    assert alone.mean() == pytest.approx(1.0)


def test_a_clips_noise_draw_is_its_own_and_varies_with_the_seed() -> None:
    """Listing other clips beside a clip leaves its windows' noise-bank draw alone; another seed draws anew."""
    from training.chunk_training import bank_draws

    english = records({("ravdess", lab): 3 for lab in LABELS})
    other = records({("nemo", lab): 3 for lab in LABELS})
    alone = synthetic_features(english, 0, layers=1, d=8)
    both = FeatureSet.concat([synthetic_features(other, 1, layers=1, d=8), alone])
    first = len(both.offset) - len(alone.offset)  # english's windows come after the other corpus's in ``both``
    draw = bank_draws(alone, np.arange(len(alone.offset)), 9, 96, seed=0)
    assert np.array_equal(bank_draws(both, np.arange(first, len(both.offset)), 9, 96, seed=0), draw)
    assert not np.array_equal(bank_draws(alone, np.arange(len(alone.offset)), 9, 96, seed=1), draw)
    assert len({tuple(r) for r in draw}) == len(draw)  # every window its own draw, not one shared pattern


@pytest.mark.slow
def test_a_fit_does_not_depend_on_the_unweighted_corpora_listed() -> None:
    """The same head whether a corpus at weight 0 is in the list or not (weights, standardisation and noise alike):
    so a leave-one-corpus-out fit that lists the held-out corpora is the fit ``ser-train`` makes without them."""
    from training.chunk_model import WhisperChunkModel

    english = records({("ravdess", lab): 12 for lab in LABELS})
    other = records({("nemo", lab): 8 for lab in LABELS})
    clean = [synthetic_features(english, 0), synthetic_features(other, 1)]
    noisy = [synthetic_features(english, 2), synthetic_features(other, 3)]
    trainer = {"corpus_weights": {"ravdess": 1.0, "default": 0.0}, "stream_p": 0.3}  # stream-like windows too
    feats, voiced = silent_bank()
    rng = np.random.default_rng(4)  # a bank of distinct noise chunks, so which entry a window draws matters
    bank = (rng.normal(size=(32, *feats.shape[1:])).astype(np.float16), np.tile(voiced[:1], (32, 1)))
    heads = []
    for recs, sets in ((english, (clean[0], noisy[0])),
                       (english + other, (FeatureSet.concat(clean), FeatureSet.concat(noisy)))):
        model = WhisperChunkModel(small_cfg())
        windows = [Windows(fs, np.arange(len(fs.offset)), fs.clip, fill) for fs, fill in zip(sets, ("zeros", "bank"), strict=True)]
        fit_head(model, windows, recs, bank, trainer, seed=0)
        heads.append(model.head.linear.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], atol=1e-4, rtol=1e-3)


def test_expected_calibration_error() -> None:
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(np.eye(2)[labels], labels) == pytest.approx(0.0)
    wrong = np.eye(2)[1 - labels]
    assert expected_calibration_error(wrong, labels) == pytest.approx(1.0)


@pytest.mark.slow
def test_the_models_own_framing_is_the_contracts() -> None:
    """``forward`` cuts a window with torch's ``unfold``; the daemon and ``Engine.infer`` cut it with
    ``ChunkGeometry.frame`` (numpy) and call the two halves: the two framings must give one answer."""
    from training.chunk_model import WhisperChunkModel

    torch.manual_seed(0)
    model = WhisperChunkModel(small_cfg(hidden=32)).eval()
    wave = torch.randn(2, WINDOW_SAMPLES) * 0.1
    with torch.inference_mode():
        whole = model(wave)
        chunks = torch.from_numpy(CH.frame(wave.numpy())).reshape(-1, CH.chunk_samples)
        halves = model.classify(model.encode_chunks(chunks).reshape(2, 9, -1))
    torch.testing.assert_close(whole, halves)


@pytest.mark.slow
def test_export_is_faithful_small_and_runs_both_halves(tmp_path: Path) -> None:
    """Random-weight chunk model -> ONNX: parity, float16-exact storage, engine offline == streaming."""
    pytest.importorskip("onnxruntime")
    from engine.registry import load_engine
    from training.chunk_model import WhisperChunkModel
    from training.export_chunked import chunked_parity, export_chunked_onnx

    torch.manual_seed(0)
    model = WhisperChunkModel(small_cfg(hidden=32)).eval()
    with torch.no_grad():  # weights that float16 holds exactly, as the real encoder's are
        for p in model.encoder.parameters():
            p.copy_(p.half().float())
    meta = {"labels": '["anger", "disgust", "fear", "happy", "neutral", "sad"]', "sample_rate": "16000", "window_s": "5.0",
            "variant": "whisper", "name": "t", **chunk_metadata(model.geometry, model.embedding_dim)}
    path = tmp_path / "m.onnx"
    export_chunked_onnx(model, path, meta)
    assert chunked_parity(model, path) < 1e-4
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert path.stat().st_size < 0.6 * fp32_bytes  # encoder weights stored as float16
    eng = load_engine(path, backend="onnxruntime")
    assert eng.chunked and eng.chunks_per_window == 9
    audio = (np.random.default_rng(0).standard_normal(WINDOW_SAMPLES + 4 * CH.hop_samples) * 0.1).astype(np.float32)
    # Streaming: every chunk encoded once, windows assembled from the last 9 embeddings.
    starts = np.arange(0, len(audio) - CH.chunk_samples + 1, CH.hop_samples)
    emb = eng.encode_chunks(np.stack([audio[s : s + CH.chunk_samples] for s in starts]))
    streamed = eng.classify(np.stack([emb[i : i + 9] for i in range(len(starts) - 8)]))
    offline = eng.infer(np.stack([audio[i * CH.hop_samples : i * CH.hop_samples + WINDOW_SAMPLES] for i in range(len(starts) - 8)]))
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
    with torch.inference_mode():
        ref = torch.softmax(model(torch.from_numpy(audio[:WINDOW_SAMPLES])[None]), -1).numpy()
    np.testing.assert_allclose(offline[:1], ref, atol=1e-4)


def test_a_window_pooled_by_turns_is_its_dominant_turn_pooled_alone() -> None:
    """Two turns apart: pooling with ``turn_pause`` equals pooling the dominant turn and the pauses without the other."""
    from training.chunk_model import MomentHead

    f = 3
    rng = np.random.default_rng(0)
    emb = torch.from_numpy(rng.standard_normal((1, 9, 4 * f + TAIL)).astype(np.float32))
    emb[..., f : 2 * f] = emb[..., :f] ** 2 + 0.5  # second moments above the squared means
    emb[..., 4 * f] = torch.tensor([0.9, 0.8, 0.01, 0.01, 0.9, 0.9, 0.8, 0.9, 0.7])  # voiced shares
    emb[..., 4 * f + 1] = torch.tensor([-20, -20, -80, -80, -18, -20, -22, -20, -25.0])  # peaks: pauses far below
    emb[..., 4 * f + 2 :] = emb[..., 4 * f : 4 * f + 1]  # every quarter as voiced as its chunk
    whole = MomentHead.pool(emb, f)
    turns = MomentHead.pool(emb, f, Turns(0.1))
    alone = MomentHead.pool(emb[:, 2:], f)  # the pauses and the second turn
    torch.testing.assert_close(turns, alone)
    assert not torch.allclose(turns, whole, atol=1e-3)


def test_quarters_split_turns_at_a_pause_no_chunk_sees() -> None:
    """A 0.5 s pause that falls across two chunks leaves each half voiced, so chunk-level turns see one turn;
    at quarters the chunk holding the first utterance's end is dropped and the longer second turn is pooled alone."""
    from training.chunk_model import MomentHead

    f, k = 3, CH.chunks_per_window
    line = np.ones((k - 1) * 2 + 4)  # 20 quarters of 0.25 s: the first turn, a pause at quarters 8-9, the second turn
    line[8:10] = 0.02
    quarters = np.stack([line[2 * i : 2 * i + 4] for i in range(k)])  # chunk i holds quarters 2i .. 2i + 3
    emb = torch.from_numpy(np.random.default_rng(0).standard_normal((1, k, 4 * f + TAIL)).astype(np.float32))
    emb[..., f : 2 * f] = emb[..., :f] ** 2 + 0.5
    emb[..., 4 * f] = torch.from_numpy(quarters.mean(1)).float()
    emb[..., 4 * f + 1] = -20.0
    emb[..., 4 * f + 2 :] = torch.from_numpy(quarters).float()
    quarter_turns = Turns.of(0.4, 4, CH.chunk_samples, CH.hop_samples, k)
    assert quarter_turns.hop == 2
    keep = quarter_turns.keep(emb[..., 4 * f], torch.ones(1, k), emb[..., 4 * f + 2 :])
    assert keep.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1]]
    torch.testing.assert_close(MomentHead.pool(emb, f, quarter_turns), MomentHead.pool(emb[:, 4:], f))
    torch.testing.assert_close(MomentHead.pool(emb, f, Turns(0.4)), MomentHead.pool(emb, f))  # every chunk weighs >= 0.5
    with pytest.raises(ValueError, match="turn_segments"):
        Turns.of(0.4, 3, CH.chunk_samples, CH.hop_samples, k)


@pytest.mark.slow
@pytest.mark.parametrize("segments", [1, 4])
def test_export_with_turns_matches_torch_on_windows_of_two_turns(tmp_path: Path, segments: int) -> None:
    """The turn mask is in the exported graph: ONNX == torch on windows with a pause between two utterances."""
    ort = pytest.importorskip("onnxruntime")
    from contract.model_io import CHUNKS_INPUT, OUTPUT_NAME, WINDOW_EMBEDDINGS_INPUT
    from engine.signals import speech_like
    from training.chunk_model import WhisperChunkModel
    from training.export_chunked import export_chunked_onnx

    torch.manual_seed(0)
    model = WhisperChunkModel(small_cfg(turn_pause=0.2, turn_segments=segments)).eval()
    meta = {"labels": '["anger", "disgust", "fear", "happy", "neutral", "sad"]', "sample_rate": "16000", "window_s": "5.0",
            "variant": "whisper", "name": "t", **chunk_metadata(model.geometry, model.embedding_dim)}
    path = tmp_path / "m.onnx"
    export_chunked_onnx(model, path, meta)
    # Windows of 9 chunks: speech, then 1-3 chunks of faint noise, then other speech.
    rng = np.random.default_rng(1)
    speech = speech_like(27, CH.chunk_samples, seed=3)
    windows = []
    for gap in (1, 2, 3):
        quiet = (rng.standard_normal((gap, CH.chunk_samples)) * 1e-4).astype(np.float32)
        windows.append(np.concatenate([speech[gap * 9 - 9 : gap * 9 - 9 + 4], quiet, speech[gap * 9 - 5 : gap * 9 - gap]]))
    chunks = np.concatenate(windows)
    with torch.inference_mode():
        emb = model.encode_chunks(torch.from_numpy(chunks)).reshape(3, 9, -1)
        ref = torch.softmax(model.classify(emb), -1).numpy()
        model.head.turns = Turns()
        blended = torch.softmax(model.classify(emb), -1).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {CHUNKS_INPUT: np.zeros((0, CH.chunk_samples), np.float32),
                                   WINDOW_EMBEDDINGS_INPUT: emb.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.abs(ref - blended).max() > 1e-4  # the turns changed what the (untrained, so nearly flat) head pooled


@pytest.mark.slow
def test_temperature_from_logits_undoes_a_known_overconfidence() -> None:
    """Labels drawn from softmax(z); logits 2.5 z are overconfident by 2.5, which the fit must find."""
    from training.chunk_training import temperature_from_logits

    rng = np.random.default_rng(0)
    z = rng.standard_normal((20_000, 6)) * 1.5
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(6, p=row) for row in p])
    t, before, after = temperature_from_logits(2.5 * z, y)
    assert 2.3 < t < 2.7 and after < before
    t1, _, _ = temperature_from_logits(z, y)
    assert 0.9 < t1 < 1.1


class SyntheticCache:
    """A feature cache of synthetic_features: what ``train_split`` reads, without encoding anything."""

    def __init__(self, recs: list[Record]) -> None:
        self.fs = synthetic_features(recs, 7)

    def bank(self) -> tuple[np.ndarray, np.ndarray]:
        return silent_bank()

    def get(self, recs: list[Record], variant: dict) -> FeatureSet:
        return self.fs


@pytest.mark.slow
def test_out_of_fold_logits_score_every_training_speaker_once_with_a_head_that_never_saw_it() -> None:
    from training.chunk_training import out_of_fold_logits

    recs = records({("ravdess", lab): 24 for lab in LABELS}) + records({("tess", lab): 9 for lab in LABELS})
    cfg = {**small_cfg(), "features": {"train_variants": [{"name": "clean"}]}}
    logits, labels = out_of_fold_logits(cfg, {}, recs, {"ravdess"}, SyntheticCache(recs), seed=0, folds=3)
    ravdess = [r for r in recs if r.corpus == "ravdess"]
    assert logits.shape == (len(ravdess), len(LABELS))  # one window per clip here; TESS is never held out
    assert sorted(labels.tolist()) == sorted(r.label_index for r in ravdess)
    assert (logits.argmax(1) == labels).mean() > 0.9  # the class signal generalises across speakers
    with pytest.raises(ValueError, match="temperature_folds=4 needs as many"):
        out_of_fold_logits(cfg, {}, recs, {"ravdess"}, SyntheticCache(recs), seed=0, folds=4)


# ----------------------------------------------------------------------------- stream-like training windows


def test_clip_runs_drop_the_silent_ends_of_each_clip() -> None:
    from training.chunk_training import clip_chunk_runs

    recs = records({("a", "anger"): 2})
    fs = synthetic_features(recs, 0)
    o, n = int(fs.offset[0]), int(fs.count[0])
    fs.voiced[o, 1] = fs.voiced[o + n - 1, 1] = -70.0  # lead-in and tail: 40+ dB below the clip's loudest
    runs = clip_chunk_runs(fs)
    assert runs[0].tolist() == list(range(o + 1, o + n - 1))
    assert runs[1].tolist() == list(range(int(fs.offset[1]), int(fs.offset[1]) + int(fs.count[1])))


def test_stream_like_windows_follow_the_stream_scorers_rule() -> None:
    from training.chunk_training import STREAM_SHARE, stream_like_windows

    recs = records({("a", lab): 6 for lab in LABELS})  # speakers a:0, a:1, a:2
    fs = synthetic_features(recs, 0)
    sw = stream_like_windows(windows_of(fs, "zeros"), recs, 9, seed=0, passes=2, bank_size=4)
    assert len(sw.chunks) > 20 and sw.chunks.shape[1] == 9 and len(sw.clip_of) == len(sw.chunks)
    assert sw.chunks.min() >= -4 and not (sw.chunks == -1).any()  # pauses are noise of the bank, never its digital silence
    owner = np.full(len(fs.feats), -1)
    for i in range(len(fs.offset)):
        owner[fs.offset[i] : fs.offset[i] + fs.count[i]] = fs.clip[i]
    for row, label in zip(sw.chunks, sw.clip_of, strict=True):
        own = row[row >= 0]
        assert len({recs[owner[c]].speaker for c in own}) == 1  # one speaker's clips per stream
        speech = {c: fs.voiced[own[owner[own] == c], 0].clip(0, 1).sum() for c in set(owner[own].tolist())}
        assert speech[label] >= STREAM_SHARE * sum(speech.values()) - 1e-6  # labelled by the clip holding 2/3 of the speech
        assert speech[label] * 0.5 >= min(1.0, 0.9 * fs.voiced[own[owner[own] == label], 0].clip(0, 1).sum() * 0.5) - 1e-6
    assert (sw.chunks < 0).any(axis=1).mean() > 0.3  # many windows hold a pause, as a stream's do
    again = stream_like_windows(windows_of(fs, "zeros"), recs, 9, seed=0, passes=2, bank_size=4)
    np.testing.assert_array_equal(again.chunks, sw.chunks)  # deterministic
    one = [i for i, r in enumerate(recs) if r.speaker == "a:1"]
    only = stream_like_windows(Windows(fs, np.array(one), np.array(one), "zeros"), recs, 9, seed=0, passes=2, bank_size=4)
    mine = np.isin(sw.clip_of, one)
    np.testing.assert_array_equal(only.chunks, sw.chunks[mine])  # a speaker's windows do not depend on the others'
    capped = stream_like_windows(windows_of(fs, "zeros"), recs, 9, seed=0, passes=2, bank_size=4, per_clip=2)
    assert np.bincount(capped.clip_of).max() == 2 and set(capped.clip_of.tolist()) == set(sw.clip_of.tolist())
    full = {tuple(r) for r in sw.chunks}
    assert all(tuple(r) in full for r in capped.chunks)  # a subset of the same windows, every labelling clip kept


def test_stream_windows_are_laid_out_from_each_variant_named() -> None:
    """``head_trainer.stream_variants``: an augmented variant's chunks make stream-like windows of their own (noise
    under the speech, not only in the pauses), in their own orders; the clean variant's draw is the one it always was."""
    from training.chunk_model import WhisperChunkModel
    from training.chunk_training import stream_like_windows

    recs = records({("a", lab): 6 for lab in LABELS})
    clean, noisy = synthetic_features(recs, 0), synthetic_features(recs, 2)
    train = [Windows(clean, np.arange(len(clean.offset)), clean.clip, "zeros"),
             Windows(noisy, np.arange(len(noisy.offset)), noisy.clip, "bank", "noisy")]
    laid = [stream_like_windows(w, recs, 9, seed=0, passes=2, bank_size=4) for w in train]
    assert laid[0].chunks.max() < len(clean.feats) and laid[1].chunks.max() < len(noisy.feats)
    unsalted = stream_like_windows(Windows(noisy, train[1].index, train[1].clip_of, "bank"), recs, 9, seed=0, passes=2, bank_size=4)
    assert not np.array_equal(unsalted.chunks, laid[1].chunks)  # another variant, other orders and pauses
    bank = silent_bank()
    fitted = {}
    for names in (["clean"], ["clean", "noisy"]):
        model = WhisperChunkModel(small_cfg())
        fitted[len(names)] = fit_head(model, train, recs, bank, {"stream_p": 0.5, "stream_variants": names}, seed=0)["windows"]
    # every window of both variants, plus each variant's stream-like windows
    stream_clean = fitted[1] - len(clean.offset) - len(noisy.offset)
    assert stream_clean > 0 and fitted[2] > fitted[1]
    with pytest.raises(ValueError, match="stream_variants"):
        fit_head(WhisperChunkModel(small_cfg()), train, recs, bank, {"stream_p": 0.5, "stream_variants": ["roomy"]}, seed=0)


def test_row_weights_give_stream_windows_their_share_of_each_clip() -> None:
    from training.chunk_training import row_weights

    recs = records({("a", "anger"): 4, ("a", "sad"): 4})
    clean = Windows(None, np.arange(8), np.arange(8), "zeros")  # type: ignore[arg-type]
    stream_of = np.array([0, 0, 0, 1, 5])  # clips 0, 1 and 5 label stream-like windows
    wc, ws = row_weights([clean], recs, alpha=0.5, clean_p=0.5, stream_of=stream_of, stream_p=0.4)
    per_clip = wc.copy()
    np.add.at(per_clip, stream_of, ws)
    assert np.allclose(per_clip, per_clip[0])  # a clip weighs the same in total, with or without stream windows
    assert ws[:3].sum() == pytest.approx(0.4 * per_clip[0]) and wc[0] == pytest.approx(0.6 * per_clip[0])
    assert wc[2] == pytest.approx(per_clip[2])  # no stream window: all of it on its own


@pytest.mark.slow
def test_head_fits_with_stream_like_windows() -> None:
    from training.chunk_model import WhisperChunkModel

    spec = {("a", lab): 12 for lab in LABELS}
    train, test = records(spec), records({("t", lab): 10 for lab in LABELS})
    bank = silent_bank()
    bank[1][1:, 1] = -60.0  # noise entries, quieter than the speech
    plain = WhisperChunkModel(small_cfg())
    s0 = fit_head(plain, [windows_of(synthetic_features(train, 0), "zeros")], train, bank, {}, seed=0)
    model = WhisperChunkModel(small_cfg())
    s1 = fit_head(model, [windows_of(synthetic_features(train, 0), "zeros")], train, bank, {"stream_p": 0.5}, seed=0)
    assert s1["windows"] > s0["windows"]  # the stream-like windows joined the fit
    assert score_clips(model, windows_of(synthetic_features(test, 2), "zeros"), bank, test)["ua"] > 0.9


@pytest.mark.slow
def test_stream_turns_false_masks_the_served_windows_but_not_the_stream_like_training_windows() -> None:
    """``stream_turns: false`` pools the stream-like training windows whole, as a head without the mask would.

    Each clip here is one turn (every chunk well voiced) centred in silence, so
    the mask leaves the clip windows as they are; the stream-like windows join
    two clips across a pause, where the mask drops one of them. With the switch
    off the fit must equal the unmasked head's; with it on it must not.
    """
    from training.chunk_model import WhisperChunkModel

    train = records({("a", lab): 6 for lab in LABELS})
    fs = synthetic_features(train, 0)
    fs.voiced[:, 0] = np.random.default_rng(1).uniform(0.8, 1.0, len(fs.voiced))  # no pause inside a clip
    bank = silent_bank()
    bank[1][1:, 1] = -60.0  # the pauses between clips: noise far below the speech

    def fit(turn_pause: float, stream_turns: bool) -> torch.Tensor:
        model = WhisperChunkModel(small_cfg(turn_pause=turn_pause))
        fit_head(model, [windows_of(fs, "zeros")], train, bank, {"stream_p": 0.5, "stream_turns": stream_turns}, seed=0)
        return model.head.linear.weight.detach().clone()

    plain = fit(0.0, True)
    torch.testing.assert_close(fit(0.4, False), plain)
    assert not torch.allclose(fit(0.4, True), plain, atol=1e-4)


def test_calibration_bins_pool_folds_into_the_ece_of_all_clips() -> None:
    from training.chunk_training import calibration_bins, ece_from_bins

    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 6)) * 2
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = rng.integers(0, 6, 300)
    pooled = calibration_bins(probs[:100], labels[:100]) + calibration_bins(probs[100:], labels[100:])
    assert ece_from_bins(pooled) == pytest.approx(expected_calibration_error(probs, labels))
    assert pooled[:, 0].sum() == 300


def test_ece_noise_floor_shrinks_with_more_clips_and_is_what_a_calibrated_head_scores() -> None:
    from training.chunk_training import ece_noise_floor

    rng = np.random.default_rng(0)
    z = rng.normal(size=(2000, 6)) * 2
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    small, large = ece_noise_floor(probs[:100], rng, 100), ece_noise_floor(probs, rng, 100)
    assert large < small / 2  # sampling error falls about as 1/sqrt(n)
    y = np.array([rng.choice(6, p=p) for p in probs])  # a head calibrated by construction
    assert expected_calibration_error(probs, y) < 3 * large
    assert expected_calibration_error(np.eye(6)[(y + 1) % 6] * 0.9 + 0.1 / 6, y) > 0.5  # confident and wrong: far above
