"""What the daemon's voice gate lets through that is not speech, and how much speech it keeps.

    python -m bench.vad_gate                       # the shipped gate and VAD mode, beside others (~1 min)
    python -m bench.vad_gate --gates 0.25 0.5 1.0 --modes 2 3

The gate (realtime/postprocess.py) shows an emotion only for a window in which
webrtcvad, behind an adaptive noise floor, found ``post.vad_min_voiced_s``
seconds of voice. Live-like streams (``bench.accuracy --stream``) measure it on
pauses under steady 30 dB noise only; here it meets the sounds a call-centre
headset or a laptop in a room also hears, synthesised (60 s each, seed 0):
steady coloured noise, noise whose level jumps every second by up to 15 dB
(traffic, a fan changing speed), noise amplitude-modulated at 4 Hz (the
syllable rate: the hardest case for any detector without a speech model),
random notes with harmonics (music) and keyboard-like clicks, each at -50,
-35 and -20 dBFS. Per sound, the share of 5 s windows (hop 0.5 s) the gate
passes; and the share of windows holding 1 s of the demo clip's speech at the
same levels, under pink noise 10-30 dB below it, that it passes (what it must keep). Writes
bench/results/vad-gate.{json,md}.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from bench.lib import RESULTS, table, write_report

SR = 16000
WINDOW_S, HOP_S = 5.0, 0.5
LEVELS_DBFS = (-50, -35, -20)


def windows_voiced_s(audio: np.ndarray, mode: int) -> np.ndarray:
    """The VAD's voiced seconds in every 5 s window of ``audio``, as the daemon's intake computes them."""
    from realtime.postprocess import VoiceActivity

    vad = VoiceActivity(SR, capacity_s=len(audio) / SR + 1, aggressiveness=mode)
    vad.process(audio.astype(np.float32))
    w, h = int(WINDOW_S * SR), int(HOP_S * SR)
    return np.array([vad.voiced_seconds(s, s + w) for s in range(0, len(audio) - w + 1, h)])


def _level(x: np.ndarray, dbfs: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x**2) + 1e-20) * 10 ** (dbfs / 20)


def sounds(seconds: float, rng: np.random.Generator) -> dict[str, Callable[[float], np.ndarray]]:
    """Name -> a function of the level (dBFS) giving ``seconds`` of that non-speech sound."""
    from training.features import coloured_noise

    n = int(seconds * SR)

    def jumps(colour: float) -> Callable[[float], np.ndarray]:
        def make(dbfs: float) -> np.ndarray:
            x = coloured_noise(n, rng, colour)
            for i in range(0, n, SR):
                x[i : i + SR] *= 10 ** (rng.uniform(-15, 0) / 20)
            return _level(x, dbfs)
        return make

    def modulated(dbfs: float) -> np.ndarray:
        t = np.arange(n) / SR
        return _level(coloured_noise(n, rng, 1.0) * (1 + 0.9 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 2 * np.pi))), dbfs)

    def music(dbfs: float) -> np.ndarray:
        x, i = np.zeros(n), 0
        while i < n:
            d = int(rng.uniform(0.15, 0.6) * SR)
            f0, t = 110 * 2 ** (rng.integers(0, 36) / 12), np.arange(d) / SR
            x[i : i + d] += (sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * np.exp(-3 * t))[: n - i]
            i += d
        return _level(x, dbfs)

    def clicks(dbfs: float) -> np.ndarray:
        x = coloured_noise(n, rng, 1.0) * 0.01  # a room 40 dB under the clicks
        decay = np.exp(-np.arange(400) / 60)
        for p in rng.integers(0, n - 400, int(seconds * 6)):
            x[p : p + 400] += rng.standard_normal(400) * decay
        return _level(x, dbfs)

    out: dict[str, Callable[[float], np.ndarray]] = {}
    for colour, name in ((0.0, "white"), (1.0, "pink"), (2.0, "brown")):
        out[f"steady {name} noise"] = lambda dbfs, c=colour: _level(coloured_noise(n, rng, c), dbfs)
        out[f"{name} noise, level jumps"] = jumps(colour)
    out["pink noise, 4 Hz modulation"] = modulated
    out["music (notes with harmonics)"] = music
    out["keyboard-like clicks"] = clicks
    return out


def speech_kept(mode: int, gates: list[float], dbfs: float, rng: np.random.Generator) -> dict[str, float]:
    """Share of windows holding 1 s of speech at ``dbfs`` (RMS of that second) under pink noise 10, 20 and 30 dB
    below it that each gate passes."""
    from contract.audio import load_audio
    from realtime.sources import demo_clip_path
    from training.features import coloured_noise

    speech = load_audio(demo_clip_path())
    voiced = []
    for start in np.arange(0.0, len(speech) / SR - 1.0, 0.5):
        part = speech[int(start * SR) : int((start + 1.0) * SR)]
        for snr in (10, 20, 30):
            audio = np.zeros(10 * SR, np.float32)
            part = _level(part, dbfs)
            audio[5 * SR : 6 * SR] = part
            audio += coloured_noise(len(audio), rng, 1.0) * np.sqrt(np.mean(part**2) / 10 ** (snr / 10))
            voiced.append(windows_voiced_s(audio, mode)[[4, 6, 8, 10]])  # windows holding the whole second
    v = np.concatenate(voiced)
    return {f"{g:g}": float(np.mean(v >= g)) for g in gates}


def main() -> int:
    from realtime.config import PostConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gates", type=float, nargs="+", default=sorted({0.25, 0.5, 1.0, PostConfig().vad_min_voiced_s}))
    ap.add_argument("--modes", type=int, nargs="+", default=[PostConfig().vad_aggressiveness, 3])
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    rows = []
    for mode in args.modes:
        rng = np.random.default_rng(0)
        for name, make in sounds(args.seconds, rng).items():
            for dbfs in LEVELS_DBFS:
                v = windows_voiced_s(make(dbfs), mode)
                rows.append({"mode": mode, "sound": name, "dbfs": dbfs, "p50_voiced_s": float(np.median(v)),
                             "passed": {f"{g:g}": float(np.mean(v >= g)) for g in args.gates}})
        for dbfs in LEVELS_DBFS:
            rows.append({"mode": mode, "sound": "speech: 1 s under pink noise 10-30 dB below it", "dbfs": dbfs,
                         "p50_voiced_s": None, "passed": speech_kept(mode, args.gates, dbfs, np.random.default_rng(0))})
    doc = {"gates": args.gates, "modes": args.modes, "shipped": {"gate": PostConfig().vad_min_voiced_s,
           "mode": PostConfig().vad_aggressiveness}, "rows": rows}
    md = markdown(doc)
    write_report(RESULTS / "vad-gate.json", doc, md)
    return 0


def markdown(doc: dict) -> str:
    gates = [f"{g:g}" for g in doc["gates"]]
    head = ["webrtcvad mode", "sound", "dBFS", "median voiced s / window", *(f"passed at {g} s" for g in gates)]
    body = [[r["mode"], r["sound"], "" if r["dbfs"] is None else r["dbfs"],
             "" if r["p50_voiced_s"] is None else f"{r['p50_voiced_s']:.2f}", *(f"{r['passed'][g]:.2f}" for g in gates)]
            for r in doc["rows"]]
    s = doc["shipped"]
    return table(head, body) + (f"\n\n(shipped: mode {s['mode']}, gate {s['gate']:g} s; share of 5 s windows, hop 0.5 s, "
                                "that the gate calls voiced)\n")


if __name__ == "__main__":
    raise SystemExit(main())
