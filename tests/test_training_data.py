"""Corpus readers, speaker-disjoint splits, audio I/O and the window datasets, on generated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.audio import SAMPLE_RATE, WINDOW_SAMPLES, AudioError, load_audio, pad_or_crop, window_starts
from tests.conftest import tone, write_wav
from training.corpora import DataError, scan_corpus
from training.splits import speaker_folds, split_records


def _clip(seconds: float = 0.3, freq: float = 300.0) -> np.ndarray:
    return tone(freq, seconds)


def test_ravdess_reader_maps_codes_drops_calm_surprise_and_song(tmp_path: Path) -> None:
    root = tmp_path / "ravdess"
    for emo in ("01", "02", "03", "04", "05", "06", "07", "08"):
        write_wav(root / "Actor_01" / f"03-01-{emo}-01-01-01-01.wav", _clip())
    write_wav(root / "Actor_02" / "03-02-05-01-01-01-02.wav", _clip())  # song: dropped
    write_wav(root / "Actor_02" / "readme-notes.wav", _clip())  # unparsable name
    scan = scan_corpus("ravdess", root)
    assert sorted(r.label for r in scan.records) == ["anger", "disgust", "fear", "happy", "neutral", "sad"]
    assert {r.speaker for r in scan.records} == {"ravdess:01"}
    assert scan.dropped == {"calm": 1, "surprised": 1, "song": 1}
    assert [p.name for p in scan.unparsed] == ["readme-notes.wav"]


def test_cremad_emodb_tess_and_folder_layouts(tmp_path: Path) -> None:
    write_wav(tmp_path / "c" / "AudioWAV" / "1001_DFA_ANG_XX.wav", _clip())
    write_wav(tmp_path / "c" / "AudioWAV" / "1002_IEO_SAD_HI.wav", _clip())
    c = scan_corpus("cremad", tmp_path / "c")
    assert {(r.label, r.speaker) for r in c.records} == {("anger", "cremad:1001"), ("sad", "cremad:1002")}

    write_wav(tmp_path / "e" / "wav" / "03a01Wa.wav", _clip())
    write_wav(tmp_path / "e" / "wav" / "16b10Lb.wav", _clip())  # boredom
    e = scan_corpus("emodb", tmp_path / "e")
    assert [(r.label, r.speaker) for r in e.records] == [("anger", "emodb:03")]
    assert e.dropped == {"boredom": 1}

    write_wav(tmp_path / "t" / "OAF_angry" / "OAF_back_angry.wav", _clip())
    write_wav(tmp_path / "t" / "YAF_pleasant_surprised" / "YAF_back_ps.wav", _clip())
    t = scan_corpus("tess", tmp_path / "t")
    assert [(r.label, r.speaker) for r in t.records] == [("anger", "tess:OAF")]

    write_wav(tmp_path / "f" / "Happy" / "spk7_take1.wav", _clip())
    write_wav(tmp_path / "f" / "boredom" / "spk7_take2.wav", _clip())
    f = scan_corpus("folder", tmp_path / "f")
    assert [(r.label, r.speaker) for r in f.records] == [("happy", "folder:spk7")]


def test_missing_path_and_empty_corpus_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_corpus("ravdess", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable ravdess"):
        scan_corpus("ravdess", tmp_path / "empty")
    with pytest.raises(DataError, match="unknown corpus"):
        scan_corpus("iemocap", tmp_path)


def test_load_audio_resamples_downmixes_and_rejects_broken_files(tmp_path: Path) -> None:
    import soundfile as sf

    sr = 44_100
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32) * 0.5
    sf.write(str(tmp_path / "st.flac"), stereo, sr)
    audio = load_audio(tmp_path / "st.flac")
    assert audio.dtype == np.float32 and abs(len(audio) - SAMPLE_RATE) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(audio) - 440) < 2
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(AudioError, match="broken.wav"):
        load_audio(tmp_path / "broken.wav")


def test_pad_or_crop_and_window_starts_cover_the_clip() -> None:
    short = np.ones(100, dtype=np.float32)
    padded = pad_or_crop(short, 300)
    assert padded.shape == (300,) and padded.sum() == 100 and padded[100] == 1 and padded[0] == 0
    long = np.arange(1000, dtype=np.float32)
    assert pad_or_crop(long, 300, offset=950).tolist() == long[700:].tolist()
    assert window_starts(100, 300) == [0]
    starts = window_starts(1000, 300, 150)
    assert starts[0] == 0 and starts[-1] == 700 and all(b - a <= 150 for a, b in zip(starts, starts[1:], strict=False))


def _records(n_speakers: int = 10):
    from training.corpora import Record

    recs = [Record(Path(f"{s}_{e}.wav"), lab, f"ravdess:{s:02d}", "ravdess")
            for s in range(1, n_speakers + 1) for e, lab in enumerate(("anger", "sad", "happy"))]
    recs += [Record(Path(f"tess_{i}.wav"), "fear", "tess:OAF", "tess") for i in range(5)]
    return recs


@pytest.mark.parametrize("cfg", [
    {"k": 0, "test_fraction": 0.2, "val_fraction": 0.1},
    {"k": 5, "fold": 3, "val_fraction": 0.2},
    {"k": 0, "test_speakers": ["ravdess:01", "ravdess:02"], "val_speakers": ["ravdess:03"]},
])
def test_splits_never_share_a_speaker(cfg: dict) -> None:
    s = split_records(_records(), {"tess"}, cfg, seed=7)
    spk = s.speakers()
    assert not (set(spk["train"]) & set(spk["val"]) or set(spk["train"]) & set(spk["test"]) or set(spk["val"]) & set(spk["test"]))
    assert spk["test"] and spk["val"]
    assert "tess:OAF" in spk["train"] and "tess:OAF" not in spk["test"] + spk["val"]  # training-only corpus
    assert len(s.train) + len(s.val) + len(s.test) == len(_records())


def test_kfold_partitions_speakers_and_is_reproducible() -> None:
    speakers = [f"s{i}" for i in range(20)]
    folds = speaker_folds(speakers, 5, seed=1)
    assert sorted(sum(folds, [])) == sorted(speakers) and all(len(f) == 4 for f in folds)
    assert folds == speaker_folds(speakers, 5, seed=1) != speaker_folds(speakers, 5, seed=2)
    tests = [set(split_records(_records(20), {"tess"}, {"k": 5, "fold": f, "val_fraction": 0.1}).speakers()["test"]) for f in range(5)]
    assert set().union(*tests) == {f"ravdess:{i:02d}" for i in range(1, 21)}

    # split.seed pins the folds whatever the run's seed, so replicas of a fold can be trained.
    cfg = {"k": 5, "fold": 2, "val_fraction": 0.1}
    by_run_seed = [split_records(_records(20), {"tess"}, cfg, seed=s).speakers() for s in (0, 1, 2)]
    assert by_run_seed[0] != by_run_seed[1] or by_run_seed[0] != by_run_seed[2]
    pinned = [split_records(_records(20), {"tess"}, {**cfg, "seed": 0}, seed=s).speakers() for s in (0, 1, 2)]
    assert pinned[0] == pinned[1] == pinned[2] == by_run_seed[0]


def test_audio_cache_decodes_once_and_skips_unreadable(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from training.corpora import Record
    from training.dataset import AudioCache, EvalWindows, TrainWindows

    good = write_wav(tmp_path / "a.wav", tone(200, 7.0, sr=22_050), sr=22_050)
    bad = tmp_path / "b.wav"
    bad.write_bytes(b"not audio")
    cache = AudioCache(tmp_path / "cache")
    kept, audios = cache.load_all([Record(good, "sad", "x:1", "x"), Record(bad, "sad", "x:1", "x")])
    assert [r.path for r in kept] == [good] and len(audios[0]) == 7 * SAMPLE_RATE
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    np.testing.assert_array_equal(cache.get(good), audios[0])

    train = TrainWindows([audios[0], tone(100, 1.0)], [5, 0], WINDOW_SAMPLES, augment=None)
    for i in range(2):
        x, y = train[i]
        assert x.shape == (WINDOW_SAMPLES,)
    ev = EvalWindows([audios[0], tone(100, 1.0)], [5, 0], WINDOW_SAMPLES, WINDOW_SAMPLES // 2)
    clips = [ev[i][2] for i in range(len(ev))]
    assert clips.count(0) == len(window_starts(7 * SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SAMPLES // 2)) and clips.count(1) == 1


def _write_opus(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, SAMPLE_RATE, format="OGG", subtype="OPUS")


def test_labels_csv_corpora_read_their_listing(tmp_path: Path) -> None:
    """nEMO / ASED / TurEV / emotiontts / BanglaSER layout: <speaker>/<stem>.ogg listed in labels.csv."""
    root = tmp_path / "nemo"
    for spk, stem in (("EB0", "EB0_anger_1"), ("EB0", "EB0_sadness_2"), ("KD0", "KD0_surprised_1"), ("KD0", "KD0_neutral_3")):
        _write_opus(root / spk / f"{stem}.ogg", _clip(0.4))
    (root / "labels.csv").write_text(
        "path,speaker,label\n"
        "EB0/EB0_anger_1.ogg,EB0,anger\n"
        "EB0/EB0_sadness_2.ogg,EB0,sadness\n"     # a synonym
        "KD0/KD0_surprised_1.ogg,KD0,surprise\n"  # not one of the six: dropped and counted
        "KD0/KD0_neutral_3.ogg,KD0,neutral\n"
        "KD0/gone.ogg,KD0,happy\n"                # listed but missing: unparsed, named
    )
    scan = scan_corpus("nemo", root)
    assert sorted((r.label, r.speaker) for r in scan.records) == [("anger", "nemo:EB0"), ("neutral", "nemo:KD0"), ("sad", "nemo:EB0")]
    assert scan.dropped == {"surprise": 1}
    assert [p.name for p in scan.unparsed] == ["gone.ogg"]
    assert load_audio(scan.records[0].path).size > 0  # Ogg Opus decodes


def test_labels_csv_without_listing_or_header_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ased").mkdir()
    with pytest.raises(DataError, match="labels.csv is missing"):
        scan_corpus("ased", tmp_path / "ased")
    (tmp_path / "ased" / "labels.csv").write_text("file,who,emotion\na.ogg,x,anger\n")
    with pytest.raises(DataError, match="header must name path, speaker and label"):
        scan_corpus("ased", tmp_path / "ased")
