"""Readers for labelled emotional-speech corpora in their original layouts.

Each reader walks a folder and yields :class:`Record` (path, label, speaker,
corpus) from file names alone, so scanning is instant and decoding happens
once, later, in the dataset's cache. Emotions outside the six classes (calm,
surprise, boredom) are dropped and counted. Torch-free.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from contract.audio import AUDIO_SUFFIXES, LABELS

log = logging.getLogger(__name__)


class DataError(Exception):
    """A data path that does not exist, or a corpus without one usable file."""


@dataclass(frozen=True)
class Record:
    path: Path
    label: str
    speaker: str  # namespaced by corpus ("ravdess:01"), so corpora never share speakers by accident
    corpus: str

    @property
    def label_index(self) -> int:
        return LABELS.index(self.label)


@dataclass
class Scan:
    """What a reader found: usable records, dropped emotions, and names it could not parse."""

    records: list[Record] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    unparsed: list[Path] = field(default_factory=list)


# Label parsers: file path -> (label or None to drop with the raw emotion name, speaker) or raise ValueError.
Parsed = tuple[str | None, str, str]  # (label, raw emotion, speaker id without corpus prefix)

_RAVDESS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "anger", "06": "fear", "07": "disgust", "08": "surprised"}
_CREMAD = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
_EMODB = {"W": "anger", "E": "disgust", "A": "fear", "F": "happy", "N": "neutral", "T": "sad", "L": "boredom"}
_SYNONYMS = {
    "anger": "anger", "angry": "anger", "ang": "anger",
    "disgust": "disgust", "disgusted": "disgust", "dis": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "fea": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy", "hap": "happy",
    "neutral": "neutral", "neu": "neutral",
    "sad": "sad", "sadness": "sad",
}  # fmt: skip


def _keep(raw: str) -> str | None:
    return raw if raw in LABELS else None


def parse_ravdess(path: Path) -> Parsed:
    """``MM-VV-EE-II-SS-RR-AA``: modality, vocal channel (01 speech, 02 song), emotion, ..., actor."""
    parts = path.stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() for p in parts):
        raise ValueError("not MM-VV-EE-II-SS-RR-AA")
    if parts[1] != "01":
        return None, "song", parts[6]
    raw = _RAVDESS.get(parts[2])
    if raw is None:
        raise ValueError(f"unknown emotion code {parts[2]}")
    return _keep(raw), raw, parts[6]


def parse_cremad(path: Path) -> Parsed:
    """``1001_DFA_ANG_XX``: actor, sentence, emotion, intensity."""
    m = re.fullmatch(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2}|X+)", path.stem)
    if not m or m.group(3) not in _CREMAD:
        raise ValueError("not AAAA_SSS_EEE_II")
    return _CREMAD[m.group(3)], m.group(3), m.group(1)


def parse_emodb(path: Path) -> Parsed:
    """``03a01Wa``: speaker, text, emotion letter (German initial), version."""
    m = re.fullmatch(r"(\d\d)([ab]\d\d)([WELAFTN])([a-z])", path.stem)
    if not m:
        raise ValueError("not SSttt E v")
    raw = _EMODB[m.group(3)]
    return _keep(raw), raw, m.group(1)


def parse_tess(path: Path) -> Parsed:
    """``OAF_back_angry`` (speaker OAF or YAF, word, emotion; 'ps' is pleasant surprise)."""
    parts = path.stem.split("_")
    if len(parts) < 3:
        raise ValueError("not SPK_word_emotion")
    raw = parts[-1].lower()
    speaker = parts[0].upper()
    if raw in ("ps", "pleasant", "surprised", "surprise"):
        return None, "surprise", speaker
    label = _SYNONYMS.get(raw)
    if label is None:
        raise ValueError(f"unknown emotion {raw!r}")
    return label, raw, speaker


def parse_folder(path: Path) -> Parsed:
    """``ROOT/<label>/<speaker>_<anything>.wav``: the folder names the label, the stem prefix the speaker."""
    raw = path.parent.name.lower()
    label = _SYNONYMS.get(raw)
    speaker = re.split(r"[_\-]", path.stem, maxsplit=1)[0]
    return label, raw, speaker


READERS: dict[str, Callable[[Path], Parsed]] = {
    "ravdess": parse_ravdess,
    "cremad": parse_cremad,
    "emodb": parse_emodb,
    "tess": parse_tess,
    "folder": parse_folder,
}

# Corpora listed by a ``labels.csv`` (``path,speaker,label``; paths relative to the corpus folder), as
# ``../shared/data`` stores the multilingual ones. Any other name can use the same reader as ``csv``.
CSV_CORPORA = ("nemo", "ased", "turev", "emotiontts", "banglaser_ext", "csv")
LABELS_CSV = "labels.csv"


def audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def scan_corpus(name: str, root: str | Path) -> Scan:
    """Records of one corpus under ``root``; raises :class:`DataError` for a bad path or nothing usable."""
    if name not in READERS and name not in CSV_CORPORA:
        raise DataError(f"unknown corpus {name!r}; readers exist for {', '.join((*READERS, *CSV_CORPORA))}")
    root = Path(root).expanduser().resolve()  # absolute paths: caches are keyed by them
    if not root.is_dir():
        raise DataError(f"data path for {name} does not exist: {root}")
    scan = _scan_labels_csv(name, root) if name in CSV_CORPORA else _scan_names(name, root, READERS[name])
    if scan.unparsed:
        log.warning("%s: %d files do not follow the %s naming and were skipped, e.g. %s", name, len(scan.unparsed), name, scan.unparsed[0])
    if scan.dropped:
        log.info("%s: dropped %d clips of other emotions: %s", name, sum(scan.dropped.values()), dict(scan.dropped))
    if not scan.records:
        raise DataError(f"no usable {name} audio files under {root} (found {len(scan.unparsed)} unparsable, {sum(scan.dropped.values())} of other emotions)")
    return scan


def _scan_names(name: str, root: Path, parse: Callable[[Path], Parsed]) -> Scan:
    scan = Scan()
    for path in audio_files(root):
        try:
            label, raw, speaker = parse(path)
        except ValueError:
            scan.unparsed.append(path)
            continue
        if label is None:
            scan.dropped[raw] += 1
            continue
        scan.records.append(Record(path=path, label=label, speaker=f"{name}:{speaker}", corpus=name))
    return scan


def _scan_labels_csv(name: str, root: Path) -> Scan:
    """Rows of ``root/labels.csv``; a row naming a missing file or lacking a field counts as unparsed."""
    listing = root / LABELS_CSV
    if not listing.is_file():
        raise DataError(f"{name}: {listing} is missing (expected path,speaker,label rows)")
    scan = Scan()
    with open(listing, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "speaker", "label"} <= set(reader.fieldnames):
            raise DataError(f"{listing}: header must name path, speaker and label, found {reader.fieldnames}")
        for row in reader:
            rel, speaker, raw = ((row.get(k) or "").strip() for k in ("path", "speaker", "label"))
            path = root / rel
            if not rel or not speaker or not raw or not path.is_file():
                scan.unparsed.append(path)
                continue
            label = _SYNONYMS.get(raw.lower())
            if label is None:
                scan.dropped[raw.lower()] += 1
                continue
            scan.records.append(Record(path=path, label=label, speaker=f"{name}:{speaker}", corpus=name))
    return scan


def scan_corpora(corpora: Iterable[dict]) -> tuple[list[Record], set[str]]:
    """All records of the configured corpora, and the names of those marked training-only."""
    records: list[Record] = []
    train_only: set[str] = set()
    for c in corpora:
        scan = scan_corpus(c["name"], c["root"])
        records.extend(scan.records)
        if c.get("train_only"):
            train_only.add(c["name"])
        counts = Counter(r.label for r in scan.records)
        log.info("%s: %d clips, %d speakers, %s", c["name"], len(scan.records), len({r.speaker for r in scan.records}), dict(sorted(counts.items())))
    return records, train_only
