"""Chunk features of the frozen Whisper encoder, cached on disk per encoder, clip and augmentation.

With the encoder frozen, what a recipe changes is only the light head, so
the expensive part (about 12 ms of CPU per 1 s chunk for tiny.en at 3
blocks, 19 ms for base) is done once: each clip, clean and under each
augmentation variant, is placed in a 5 s window as it would be served, and
every 1 s chunk of that window that touches the clip (one every 0.5 s) is
encoded to per-layer statistics (:class:`ChunkEncoder`: all-frame and
voiced-frame mean and deviation of each hidden state, ``[layers, 4 d]``
float16, plus the chunk's voiced share and loudest frame). Chunks that hold
only padding are not stored: for the clean and evaluation variants they are
digital silence, whose embedding is computed once; for training variants
they are drawn from a bank of encoded noise and silence chunks. Folds then
fit in seconds and recipes can be compared over several seeds.

A window's chunk ``i`` (0..K-1) is ``window[i * hop : i * hop + chunk]``;
this is the geometry the exported model and the daemon use, so the clean
variant's features are exactly what the served model computes.
"""

from __future__ import annotations

import io
import logging
import math
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.audio import SAMPLE_RATE, AudioError, load_audio, window_starts
from contract.geometry import ChunkGeometry
from training.corpora import Record

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- degradations


def active_power(audio: np.ndarray) -> float:
    """Mean power of the active frames (within 40 dB of the loudest 25 ms frame), so pauses do not set the SNR."""
    frames = audio[: len(audio) // 400 * 400].reshape(-1, 400) if len(audio) >= 400 else audio[None, :]
    power = np.mean(frames.astype(np.float64) ** 2, axis=1)
    active = power[power > power.max() * 1e-4] if power.max() > 0 else power
    return float(active.mean()) if active.size else 0.0


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Unit-power noise with a ``1 / f**exponent`` power spectrum (0 white, 1 pink, 2 brown)."""
    if exponent == 0:
        return rng.standard_normal(n)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    spec /= f ** (exponent / 2)
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator, exponent: float = 0.0) -> np.ndarray:
    noise = coloured_noise(len(audio), rng, exponent) * math.sqrt(active_power(audio) / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


def reverberate(audio: np.ndarray, rt60: float, rng: np.random.Generator, wet: float = 1.0) -> np.ndarray:
    """Mix with a synthetic room of ``rt60`` seconds (``wet`` 1: fully wet), peak level kept."""
    from scipy.signal import fftconvolve

    from training.augment import synthetic_rir

    rir = synthetic_rir(rt60, SAMPLE_RATE, random.Random(int(rng.integers(1 << 31))))
    mix = (1 - wet) * audio + wet * fftconvolve(audio, rir)[: len(audio)]
    peak_in, peak_out = float(np.max(np.abs(audio))), float(np.max(np.abs(mix)))
    return (mix * (peak_in / peak_out) if peak_out > 0 else mix).astype(np.float32)


def opus(audio: np.ndarray, kbps: float) -> np.ndarray:
    """Encode to Ogg Opus at about ``kbps`` and decode (libsndfile maps compression level 0..1 to ~256..6 kbps)."""
    import soundfile as sf

    level = float(np.clip(1.0 - (kbps - 6.0) / 254.0, 0.0, 1.0))
    buf = io.BytesIO()
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    x = audio / peak * 0.99 if peak > 0.99 else audio
    sf.write(buf, x, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=level)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    out = np.zeros_like(audio)
    out[: min(len(y), len(audio))] = y[: len(audio)]
    return out


def band_limit(audio: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(4, [low_hz, min(high_hz, SAMPLE_RATE / 2 - 100)], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return sosfilt(sos, audio).astype(np.float32)


def _draw(spec: Any, rng: np.random.Generator) -> float:
    if isinstance(spec, (list, tuple)):
        return float(rng.uniform(float(spec[0]), float(spec[1])))
    return float(spec)


def degrade(audio: np.ndarray, variant: dict, rng: np.random.Generator) -> np.ndarray:
    """Apply a variant's degradations in the order a signal meets them: room, microphone band, codec, noise, gain.

    Keys (each optional; a ``[lo, hi]`` pair is drawn uniformly): ``reverb_rt60``, ``reverb_wet``,
    ``band`` ([low_hz, high_hz] ranges as ``[[lo1, lo2], [hi1, hi2]]``), ``opus_kbps``, ``noise_snr_db``,
    ``noise_colour`` (exponent range), ``gain_db``; ``p_<key>`` is the probability of each step (default 1).
    """
    def on(key: str) -> bool:
        return key in variant and rng.random() < float(variant.get(f"p_{key}", 1.0))

    x = audio
    if on("reverb_rt60"):
        x = reverberate(x, _draw(variant["reverb_rt60"], rng), rng, _draw(variant.get("reverb_wet", 1.0), rng))
    if on("band"):
        lo, hi = variant["band"]
        x = band_limit(x, _draw(lo, rng), _draw(hi, rng))
    if on("opus_kbps"):
        x = opus(x, _draw(variant["opus_kbps"], rng))
    if on("noise_snr_db"):
        x = add_noise(x, _draw(variant["noise_snr_db"], rng), rng, _draw(variant.get("noise_colour", 0.0), rng))
    if on("gain_db"):
        x = x * 10 ** (_draw(variant["gain_db"], rng) / 20)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return (x / peak * 0.99 if peak > 1.0 else x).astype(np.float32)


# ----------------------------------------------------------------------------- chunk placement


def placed_windows(audio: np.ndarray, ch: ChunkGeometry, left: int | None = None) -> list[tuple[np.ndarray, int]]:
    """The windows that score a clip and, for each, its chunks that touch audio and how many hold none.

    A clip no longer than a window is placed at ``left`` (``None``: centred,
    as ``ser-predict`` pads) in one window of zeros; a longer clip gives the
    windows :func:`contract.audio.window_starts` lists (hop half a window).
    Returns ``[(chunks [n, chunk], n_silent)]`` with ``n + n_silent == per_window``.
    """
    n = len(audio)
    if n <= ch.window_samples:
        left = (ch.window_samples - n) // 2 if left is None else int(np.clip(left, 0, ch.window_samples - n))
        canvas = np.zeros(ch.window_samples, dtype=np.float32)
        canvas[left : left + n] = audio
        starts = ch.chunk_starts()
        touch = (starts < left + n) & (starts + ch.chunk_samples > left)
        chunks = ch.frame(canvas)[touch]
        return [(chunks, ch.chunks_per_window - len(chunks))]
    return [(ch.frame(audio[s : s + ch.window_samples]), 0) for s in window_starts(n, ch.window_samples)]


# ----------------------------------------------------------------------------- the encoder side


class ChunkEncoder:
    """Frozen Whisper encoder -> per-layer statistics of each chunk and its voiced share.

    Returns ``(stats [n, layers + 1, 4 d] float16, voiced [n, TAIL] float32)``:
    per hidden state, the mean and standard deviation over all of the chunk's
    frames, then the mean and deviation over its frames weighted by
    :func:`training.voicing.frame_weights` (the served head's input); and per
    chunk its voiced share (mean frame weight), its loudest frame (dBFS) and
    the voiced share of each quarter (:func:`training.voicing.segment_shares`).
    """

    def __init__(self, n_layers: int = 3, batch: int = 128, name: str = "tiny.en") -> None:
        import torch

        from training.whisper import WhisperLogMel, pretrained_encoder

        self.torch = torch
        self.frontend = WhisperLogMel()
        self.encoder = pretrained_encoder(n_layers, name=name)
        self.d = self.encoder.dims.n_audio_state
        self.batch = batch

    def __call__(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from training.voicing import TAIL, chunk_tail, frame_levels, frame_weights, weighted_moments

        torch = self.torch
        stats, shares = [], []
        with torch.inference_mode():
            for i in range(0, len(chunks), self.batch):
                x = torch.from_numpy(np.ascontiguousarray(chunks[i : i + self.batch], dtype=np.float32))
                db = frame_levels(x)
                w = frame_weights(db)
                per_layer = []
                states = self.encoder(self.frontend(x))
                for h in states:
                    m, s2 = weighted_moments(h, w)
                    vsd = torch.sqrt(torch.clamp(s2 - m * m, min=0.0))
                    per_layer.append(torch.cat([h.mean(1), h.std(1), m, vsd], dim=-1))
                stats.append(torch.stack(per_layer, dim=1).numpy().astype(np.float16))
                t = states[0].shape[1]
                shares.append(chunk_tail(w[:, :t], db[:, :t], t).numpy().astype(np.float32))
        if not stats:
            return np.zeros((0, len(self.encoder.blocks) + 1, 4 * self.d), np.float16), np.zeros((0, TAIL), np.float32)
        return np.concatenate(stats), np.concatenate(shares)


# ----------------------------------------------------------------------------- the cache


@dataclass
class FeatureSet:
    """Encoded windows of many clips under one variant.

    ``feats [chunks, layers, 4 d]`` holds the stored chunks back to back
    (:class:`ChunkEncoder`'s statistics) and ``voiced [chunks, TAIL]`` their voiced
    shares and loudest frames (dBFS); window ``w`` of the set is ``feats[offset[w] : offset[w] + count[w]]``
    plus ``silent[w]`` padding chunks; ``clip[w]`` indexes ``paths``.
    """

    paths: list[str]
    feats: np.ndarray
    voiced: np.ndarray
    offset: np.ndarray
    count: np.ndarray
    silent: np.ndarray
    clip: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{random.getrandbits(32):08x}.tmp.npz")
        np.savez(tmp, paths=np.array(self.paths), feats=self.feats, voiced=self.voiced, offset=self.offset,
                 count=self.count, silent=self.silent, clip=self.clip)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        with np.load(path) as z:
            return cls([str(p) for p in z["paths"]], z["feats"], z["voiced"], z["offset"], z["count"], z["silent"], z["clip"])

    @classmethod
    def concat(cls, sets: Sequence[FeatureSet]) -> FeatureSet:
        paths: list[str] = []
        feats, voiced, offset, count, silent, clip = [], [], [], [], [], []
        base = 0
        for s in sets:
            offset.append(s.offset + base)
            clip.append(s.clip + len(paths))
            base += len(s.feats)
            paths.extend(s.paths)
            feats.append(s.feats)
            voiced.append(s.voiced)
            count.append(s.count)
            silent.append(s.silent)
        return cls(paths, *(np.concatenate(a) for a in (feats, voiced, offset, count, silent, clip)))


def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def _clip_rng(variant: dict, r: Record) -> np.random.Generator:
    return np.random.default_rng(_seed(str(variant.get("name", "clean")), Path(r.path).name, r.speaker))


def covers(variant: dict, r: Record) -> bool:
    """Whether ``variant`` holds clip ``r``: its corpus is in ``corpora`` (when given) and its ``fraction`` draw
    (the first of the clip's generator) falls inside."""
    if "corpora" in variant and r.corpus not in variant["corpora"]:
        return False
    return "fraction" not in variant or _clip_rng(variant, r).random() < float(variant["fraction"])


Encoder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def encode_variant(records: Sequence[Record], variant: dict, ch: ChunkGeometry, encoder: Encoder,
                   progress: Callable[[int, int], None] | None = None) -> FeatureSet:
    """Encode every record under ``variant`` (``name`` plus :func:`degrade` keys, ``place``: centre | random,
    ``fraction``: the share of clips it covers, drawn per clip).

    Each clip's degradation and placement come from a seed of (variant, file
    name), so a rerun or another machine caches the same features.
    """
    paths: list[str] = []
    pending: list[np.ndarray] = []
    offset, count, silent, clip = [], [], [], []
    total = 0
    feats: list[np.ndarray] = []
    voiced: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            f, v = encoder(np.concatenate(pending))
            feats.append(f)
            voiced.append(v)
            pending.clear()

    for i, r in enumerate(records):
        try:
            audio = load_audio(r.path)
        except AudioError as exc:
            log.warning("skipping %s", exc)
            continue
        rng = _clip_rng(variant, r)
        if ("corpora" in variant and r.corpus not in variant["corpora"]) or rng.random() >= float(variant.get("fraction", 1.0)):
            continue  # a variant may cover a fixed random share of the clips (training falls back to clean)
        if any(k for k in variant if k not in ("name", "place", "fraction", "corpora")):
            audio = degrade(audio, variant, rng)
        left = None
        if variant.get("place") == "random" and len(audio) <= ch.window_samples:
            left = int(rng.integers(0, ch.window_samples - len(audio) + 1))
        windows = placed_windows(audio, ch, left)
        if variant.get("place") == "random" and len(windows) > 1:
            windows = [windows[int(rng.integers(len(windows)))]]
        paths.append(str(r.path))
        for chunks, n_silent in windows:
            offset.append(total)
            count.append(len(chunks))
            silent.append(n_silent)
            clip.append(len(paths) - 1)
            total += len(chunks)
            pending.append(chunks)
        if sum(len(p) for p in pending) >= 256:
            flush()
        if progress:
            progress(i + 1, len(records))
    flush()
    from training.voicing import TAIL

    dim = feats[0].shape[1:] if feats else (0, 0)
    return FeatureSet(
        paths,
        np.concatenate(feats) if feats else np.zeros((0, *dim), np.float16),
        np.concatenate(voiced) if voiced else np.zeros((0, TAIL), np.float32),
        np.asarray(offset, np.int64), np.asarray(count, np.int32), np.asarray(silent, np.int32), np.asarray(clip, np.int64),
    )


def noise_bank(ch: ChunkGeometry, encoder: Encoder, n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Encoded chunks with no speech: digital silence first, then white/pink/brown noise from -90 to -30 dBFS.

    Returns ``(feats, voiced)`` as :class:`ChunkEncoder` does.
    """
    rng = np.random.default_rng(seed)
    chunks = [np.zeros(ch.chunk_samples, np.float32)]
    for _ in range(n - 1):
        level = 10 ** (rng.uniform(-90, -30) / 20)
        chunks.append((coloured_noise(ch.chunk_samples, rng, rng.uniform(0, 2)) * level).astype(np.float32))
    return encoder(np.stack(chunks))


def variant_key(variant: dict) -> str:
    """Folder name of a variant's cache: its name and a digest of its settings (a changed recipe re-encodes)."""
    import json

    return f"{variant.get('name', 'clean')}-{zlib.crc32(json.dumps(variant, sort_keys=True).encode()):08x}"


FORMAT = "m4"  # the statistics ChunkEncoder stores (all-frame and voiced moments, voiced share, peak, quarters' shares)


def encoder_tag(n_layers: int, ch: ChunkGeometry, name: str = "tiny.en") -> str:
    from training.whisper_weights import weights_source

    sha = weights_source(name).sha256
    return f"whisper-{name}-{sha[:8]}-b{n_layers}-c{ch.chunk_samples}-h{ch.hop_samples}-w{ch.window_samples}-{FORMAT}"


class FeatureCache:
    """Feature sets on disk, one file per (encoder, variant, corpus); built on first use, resumable by corpus."""

    def __init__(self, root: str | Path, ch: ChunkGeometry, n_layers: int = 3, name: str = "tiny.en",
                 encoder: Encoder | None = None, tag: str = "") -> None:
        """``encoder`` replaces the torch :class:`ChunkEncoder` (e.g. a quantized model as the engine serves it,
        ``bench/int8_accuracy.py``); its features are cached apart, under the encoder's tag plus ``tag``."""
        if encoder is not None and not tag:
            raise ValueError("an encoder other than the torch one needs a tag: its features are not the torch encoder's")
        self.ch, self.n_layers, self.name = ch, n_layers, name
        self.dir = Path(root).expanduser() / "features" / (encoder_tag(n_layers, ch, name) + (f"-{tag}" if tag else ""))
        self._encoder: Encoder | None = encoder
        self._loaded: dict[Path, FeatureSet] = {}  # a run reads each file once (folds share them)
        self._sets: dict[tuple, tuple[FeatureSet, set[str]]] = {}

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = ChunkEncoder(self.n_layers, name=self.name)
        return self._encoder

    def _load(self, path: Path) -> FeatureSet | None:
        if path not in self._loaded and path.is_file():
            self._loaded[path] = FeatureSet.load(path)
        return self._loaded.get(path)

    def get(self, records: Sequence[Record], variant: dict) -> FeatureSet:
        """The variant's features of ``records`` (grouped by corpus; each corpus file holds all of its clips)."""
        by_corpus: dict[str, list[Record]] = {}
        for r in records:
            by_corpus.setdefault(r.corpus, []).append(r)
        memo = (variant_key(variant), tuple(sorted(by_corpus)))
        hit = self._sets.get(memo)  # the same object for the same request: folds share what is pooled from it
        if hit is not None and all(str(r.path) in hit[1] or not covers(variant, r) for r in records):
            return hit[0]
        sets = []
        for corpus, recs in sorted(by_corpus.items()):
            path = self.dir / variant_key(variant) / f"{corpus}.npz"
            fs = self._load(path)
            have = set(fs.paths) if fs is not None else set()
            todo = [r for r in recs if str(r.path) not in have and covers(variant, r)]
            if todo:  # only the clips this file lacks; unreadable ones are tried again next time
                log.info("encoding %s / %s: %d clips", variant.get("name"), corpus, len(todo))
                new = encode_variant(todo, variant, self.ch, self.encoder, _progress(f"{variant.get('name')}/{corpus}"))
                if new.paths:
                    fs = new if fs is None else FeatureSet.concat([fs, new])
                    fs.save(path)
                    self._loaded[path] = fs
            if fs is None:
                continue
            sets.append(fs)
        if not sets:
            raise ValueError(f"variant {variant.get('name')} holds none of these {len(records)} clips")
        fs = sets[0] if len(sets) == 1 else FeatureSet.concat(sets)
        self._sets[memo] = (fs, set(fs.paths))
        return fs

    def bank(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`noise_bank`'s ``(feats, voiced)``, encoded once."""
        path = self.dir / "noise_bank.npz"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            feats, voiced = noise_bank(self.ch, self.encoder)
            tmp = path.with_suffix(f".{random.getrandbits(32):08x}.tmp.npz")
            np.savez(tmp, feats=feats, voiced=voiced)
            tmp.replace(path)
        with np.load(path) as z:
            return z["feats"], z["voiced"]


def _progress(label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            log.info("%s: %d / %d clips", label, done, total)

    return report
