"""The model section of the training config, typed: one dataclass per model kind, the only place a default is written.

Owns what ``model.*`` may hold in ``ser-train``'s config (``conf/model/*.yaml``
plus overrides) and what each key means when a config leaves it out. Two
kinds: the chunked Whisper model (:class:`ChunkModelConfig`, a config with an
``encoder`` section: ``model=whisper`` and ``model=whisper-base``) and the
whole-window spectrogram networks (:class:`WindowModelConfig`: ``compact``,
``seed``).

Where the defaults live, and why here: the dataclasses hold them, and the
YAML recipes set only what they choose differently. A model config is not
only composed from the YAML: tests and the ablation build partial ones in
code, the benches pass a recipe's raw head_trainer on with a few keys
changed, and a checkpoint stores the config it was trained with, which lacks
every key added since. All of them need the meaning of an absent key, so it
has to be in code, and written once: before this module each consumer had a
``.get(key, default)`` of its own, and some disagreed with the YAML (the
attention head's ``hidden`` 256 in code, 0 in the recipe). A default here is
therefore what an absent key has always meant (``stream_p`` 0: no
stream-like windows, as before the key existed); a field without a default
(the encoder's geometry, the network's shape) is one every recipe sets.

Validation: :func:`model_config` merges a mapping into the schema (OmegaConf
structured config: unknown keys and values of the wrong type are refused),
fills what is absent, then checks choices and ranges; every error is a
:class:`contract.config.ConfigError` naming the full key
(``model.head_trainer.stream_p: expected a float, got 'abc'``). Rules that
need the model (``head.layers`` within the encoder's blocks, a known
``encoder.name``) stay with the model. The feature variants
(``features.train_variants``, ``features.eval_conditions``) stay open
mappings: they are augmentation parameters that ``training.features``
interprets, and a new degradation should not need a schema change.

Imports omegaconf, ``contract.config`` and ``training.frontend`` (whose
:class:`~training.frontend.FrontendConfig` is the spectrogram frontend's
schema; it imports torch).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from contract.config import ConfigError, compose
from training.frontend import FrontendConfig

HEAD_KINDS = ("moments", "attention")
LAYER_MIXES = ("concat", "weighted", "last")
CHUNK_POOLINGS = ("attention", "mean")
TURN_SEGMENTS = (1, 2, 4)  # divisors of training.voicing.SEGMENTS
OPTIMIZERS = ("lbfgs", "adamw")
NET_POOLINGS = ("attention", "mean")
FRONTEND_NORMS = ("cmvn", "utterance", "none")


def setting(default: Any, help: str) -> Any:
    """A field: its default (a callable for a list or a mapping) and the one line that says what it does."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def required(help: str) -> Any:
    """A field every recipe must set: absent, it is an error naming the key."""
    return field(default=MISSING, metadata={"help": help})


# OmegaConf structured configs need typing.Optional / typing.Dict at runtime, not PEP 604 unions.

# ----------------------------------------------------------------------------- the chunked Whisper model


@dataclass
class EncoderConfig:
    name: str = setting(
        "tiny.en", "the Whisper encoder (training/whisper_weights.py SOURCES): tiny.en | base"
    )
    blocks: int = required("transformer blocks the feature cache runs and caches (states 0..blocks)")
    chunk_s: float = required("chunk length in seconds")
    hop_s: float = required("one new chunk every hop")


@dataclass
class HeadConfig:
    kind: str = setting(
        "moments",
        "moments: one linear layer on the window's voiced-frame mean and deviation "
        "(bench/ablation.py); attention: the previous head, kept for the ablation",
    )
    layers: list[int] = required("hidden states used: 0 = conv + positions, i = after block i")
    mix: str = setting(
        "concat", "attention head: concat | weighted (softmax-weighted sum of the standardised layers) | last"
    )
    hidden: int = setting(
        0, "attention head: 0 is linear on the pooled embedding; > 0 a GELU projection first"
    )
    dropout: float = setting(0.3, "attention head: dropout before its projection and its output")
    pooling: str = setting("attention", "attention head: attention | mean over the window's chunks")
    turn_pause: float = setting(
        0.0,
        "moments head: a chunk whose voiced weight is below this is a pause between two turns, and the window "
        "pools only its turn with the most speech (training/voicing.dominant_turn); 0 pools the whole window",
    )
    turn_segments: int = setting(
        1,
        "moments head: where turns split: 1 at whole chunks, 2 or 4 at each chunk's halves or quarters, so a pause "
        "shorter than a chunk splits them too (training/voicing.Turns; the parts must tile the chunk hop)",
    )


@dataclass
class FeaturesConfig:
    # Open mappings (name, fraction, place, reverb_rt60, noise_snr_db, ...): training/features.py reads them.
    train_variants: list[dict[str, Any]] = setting(
        lambda: [{"name": "clean"}],
        "cached encodings per variant, clean first (the standardisation's statistics)",
    )
    eval_conditions: dict[str, dict[str, Any]] = setting(
        lambda: {"clean": {"name": "clean"}}, "degradations scored by ser-eval and bench/accuracy.py, by name"
    )


@dataclass
class HeadTrainerConfig:
    optimizer: str = setting(
        "lbfgs",
        "lbfgs: the convex fit of the moments head (no seed, no schedule); "
        "adamw: minibatches (the attention head's only choice)",
    )
    c: float = setting(
        0.05, "inverse L2 strength of the L-BFGS fit (scikit-learn's C, sample weights of mean 1)"
    )
    max_iter: int = setting(
        200, "L-BFGS iterations (float32; near the optimum: training/chunk_training.fit_linear)"
    )
    corpus_alpha: float = setting(
        0.5, "a corpus weighs clips**alpha; classes within a corpus weigh the same, then classes overall"
    )
    corpus_weights: Optional[dict[str, float]] = setting(  # noqa: UP045 - OmegaConf reads the annotation at runtime
        None, "corpus name -> factor on its share ('default': the others); null: every corpus 1"
    )
    clean_p: float = setting(
        0.25, "share of each clip's weight on its clean windows; the augmented ones share the rest"
    )
    temperature_folds: int = setting(
        0, "> 0: the temperature also fits out-of-fold logits of the training speakers (this many head fits)"
    )
    stream_p: float = setting(
        0.0,
        "share of each clip's weight on stream-like windows (its speaker's clips end to end "
        "with noise pauses, training/chunk_training.stream_like_windows); 0: none",
    )
    stream_variants: list[str] = setting(
        lambda: ["clean"],
        "features.train_variants whose chunks the stream-like windows are laid out from (a clip's stream_p share is "
        "spread over its windows from all of them); an augmented one puts its noise under the speech, as a live "
        "stream's quiet utterances meet it",
    )
    stream_passes: int = setting(2, "stream-like windows: shuffled streams per training speaker ...")
    stream_per_clip: int = setting(4, "... and at most this many windows labelled by each clip")
    stream_turns: bool = setting(
        True, "stream-like windows pooled with head.turn_pause's mask too; false keeps the neighbours' speech in them "
        "(the mask then applies to served windows only; README, turns)",
    )
    steps: int = setting(1500, "adamw: minibatch steps")
    batch_size: int = setting(64, "adamw: windows per step")
    lr: float = setting(1e-3, "adamw: peak learning rate")
    weight_decay: float = setting(0.01, "adamw: decoupled weight decay")
    warmup_steps: int = setting(200, "adamw: linear warm-up steps")
    label_smoothing: float = setting(0.05, "adamw: label smoothing of the cross-entropy")
    dropout: float = setting(0.3, "adamw on the moments head: dropout on the standardised pooled features")
    pooling: str = setting(
        "window_moments",
        "what the moments head sees (training/chunk_training.POOLINGS); "
        "only window_moments is served, the others are for the ablation",
    )


@dataclass
class ChunkModelConfig:
    """``model=whisper`` / ``model=whisper-base``: a frozen Whisper encoder on chunks and a head on cached features."""

    variant: str = setting("whisper", "the model's name in checkpoints, metadata and run directories")
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    head_trainer: HeadTrainerConfig = field(default_factory=HeadTrainerConfig)


# ----------------------------------------------------------------------------- the whole-window networks


@dataclass
class SpecAugmentConfig:
    freq_masks: int = required("frequency masks per spectrogram")
    freq_width: int = required("widest frequency mask, in mel bands")
    time_masks: int = required("time masks per spectrogram")
    time_width: int = required("widest time mask, in frames")


@dataclass
class NetConfig:
    channels: list[int] = required("output channels of each conv stage")
    kernels: list[int] = required("kernel size of each conv stage")
    pools: list[list[int]] = required("max-pool (mel, time) of each conv stage")
    d_model: int = required("Transformer width")
    n_heads: int = required("attention heads")
    ff_dim: int = required("feed-forward width")
    n_layers: int = required("Transformer layers")
    dropout: float = required("dropout in the Transformer and before the output")
    pooling: str = required("attention | mean over time")


@dataclass
class WindowModelConfig:
    """``model=compact`` / ``model=seed``: a log-mel frontend, conv stack and Transformer over a 5 s window."""

    variant: str = required("the model's name in checkpoints, metadata and run directories")
    # The frontend's defaults are training.frontend.FrontendConfig's (what the exported model computes).
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    specaugment: Optional[SpecAugmentConfig] = setting(None, "time and frequency masks; null: none")  # noqa: UP045
    net: NetConfig = field(default_factory=NetConfig)


def schema_for(data: Mapping[str, Any] | DictConfig) -> type:
    """The dataclass a model config is checked against: an ``encoder`` section makes it the chunk model."""
    return ChunkModelConfig if "encoder" in data else WindowModelConfig


# ----------------------------------------------------------------------------- validation


_TYPE_NAMES = {"Float": "a float", "Integer": "an integer", "String": "a string", "Boolean": "a boolean"}


def model_config(data: Mapping[str, Any] | DictConfig, where: str = "model") -> DictConfig:
    """``data`` merged into its schema: typed, every absent key at its default, choices and ranges checked.

    Idempotent (a typed config passes through unchanged), so every consumer
    may call it on what it is handed: a composed config, a partial dict built
    in a test, a checkpoint's stored config. Raises ConfigError naming the key.
    """
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    cfg = _typed(schema_for(data), dict(data), where)
    _check(cfg, where)
    return cfg


def head_trainer_config(
    data: Mapping[str, Any] | DictConfig | None, where: str = "model.head_trainer"
) -> DictConfig:
    """``head_trainer`` keys over their defaults (``{}`` is all defaults), typed and checked; ConfigError names the key."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    cfg = _typed(HeadTrainerConfig, dict(data or {}), where)
    _check_head_trainer(cfg, where)
    return cfg


def stored_model_config(data: Mapping[str, Any] | DictConfig, where: str = "model") -> dict[str, Any]:
    """A checkpoint's stored model config as a plain dict with every key present (absent ones at their defaults).

    Checkpoints keep the config they were trained with, so one written before
    a key existed lacks it; the default is what the key's absence meant then.
    """
    return OmegaConf.to_container(model_config(data, where), resolve=True)  # type: ignore[return-value]


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/train.yaml`` with its groups and ``overrides``, the model section typed and validated."""
    return compose("train", overrides, sections={"model": model_config})


def _typed(schema: type, data: dict, where: str) -> DictConfig:
    for name, hint in get_type_hints(schema).items():  # a section given as a scalar: name it, not its parent
        if dataclasses.is_dataclass(hint) and name in data and not isinstance(data[name], Mapping):
            raise ConfigError(f"{where}.{name}: expected a mapping of keys, got {data[name]!r}")
    cfg = OmegaConf.structured(schema)
    try:
        cfg = OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, where, data)) from None
    missing = sorted(_missing_keys(cfg))
    if missing:
        keys = ", ".join(f"{where}.{k}" for k in missing)
        raise ConfigError(f"{keys}: required, and not set ({schema.__name__} has no default for it)")
    return cfg  # type: ignore[return-value]


def _missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for key in cfg:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            out.append(path)
            continue
        node = cfg._get_node(key)
        if (
            isinstance(node, DictConfig)
            and not node._is_none()
            and OmegaConf.get_type(node) not in (dict, None)
        ):
            out.extend(_missing_keys(node, f"{path}."))
    return out


def _describe(exc: OmegaConfBaseException, where: str, data: dict) -> str:
    """One line naming the full key: ``model.head_trainer.stream_p: expected a float, got 'abc'``."""
    first = str(exc).splitlines()[0]
    full_key = getattr(exc, "full_key", None)
    key = f"{where}.{full_key}" if full_key else where
    if isinstance(exc, ConfigKeyError):
        return f"{key}: unknown key"
    if isinstance(exc, MissingMandatoryValue):
        return f"{key}: required, and not set"
    converted = re.search(r"could not be converted to (\w+)", first)
    if isinstance(exc, ValidationError) and converted and converted.group(1) in _TYPE_NAMES:
        value = _lookup(data, str(full_key))
        got = first.split("'")[1] if value is _ABSENT and first.count("'") >= 2 else value
        return f"{key}: expected {_TYPE_NAMES[converted.group(1)]}, got {got!r}"
    section = re.match(r"Merge error: (\w+) is not a subclass of (\w+)", first)
    if section:
        return f"{key}: expected a mapping ({section.group(2)}), got {section.group(1)}"
    return f"{key}: {first}"


_ABSENT = object()


def _lookup(data: Any, dotted: str) -> Any:
    """The value at ``a.b[0].c`` in plain containers, or _ABSENT."""
    for part in re.findall(r"[^.\[\]]+", dotted):
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _ABSENT
    return data


def _fail(where: str, key: str, message: str) -> None:
    raise ConfigError(f"{where}.{key}: {message}")


def _one_of(cfg: Any, key: str, choices: Sequence[str], where: str) -> None:
    if cfg[key] not in choices:
        _fail(where, key, f"must be one of {' | '.join(choices)}, got {cfg[key]!r}")


def _at_least(cfg: Any, key: str, low: float, where: str, strict: bool = False) -> None:
    v = cfg[key]
    if v < low or (strict and v == low):
        _fail(where, key, f"must be {'>' if strict else '>='} {low}, got {v!r}")


def _share(cfg: Any, key: str, where: str, below_one: bool = False) -> None:
    v = cfg[key]
    if not 0.0 <= v <= 1.0 or (below_one and v == 1.0):
        _fail(where, key, f"must lie in [0, 1{')' if below_one else ']'}, got {v!r}")


def _check(cfg: DictConfig, where: str) -> None:
    if OmegaConf.get_type(cfg) is ChunkModelConfig:
        enc, head = cfg.encoder, cfg.head
        _at_least(enc, "blocks", 1, f"{where}.encoder")
        _at_least(enc, "chunk_s", 0, f"{where}.encoder", strict=True)
        _at_least(enc, "hop_s", 0, f"{where}.encoder", strict=True)
        _one_of(head, "kind", HEAD_KINDS, f"{where}.head")
        _one_of(head, "mix", LAYER_MIXES, f"{where}.head")
        _one_of(head, "pooling", CHUNK_POOLINGS, f"{where}.head")
        _at_least(head, "hidden", 0, f"{where}.head")
        _share(head, "dropout", f"{where}.head", below_one=True)
        _share(head, "turn_pause", f"{where}.head", below_one=True)
        if head.turn_segments not in TURN_SEGMENTS:
            _fail(f"{where}.head", "turn_segments", f"must be one of {TURN_SEGMENTS}, got {head.turn_segments!r}")
        if not cfg.features.train_variants:
            _fail(where, "features.train_variants", "needs at least the clean variant")
        _check_head_trainer(cfg.head_trainer, f"{where}.head_trainer")
        names = [v.get("name") for v in cfg.features.train_variants]
        if cfg.head_trainer.stream_p > 0 and not cfg.head_trainer.stream_variants:
            _fail(f"{where}.head_trainer", "stream_variants", "must name at least one variant when stream_p > 0")
        for name in cfg.head_trainer.stream_variants:
            if name not in names:
                _fail(f"{where}.head_trainer", "stream_variants", f"{name!r} is not one of features.train_variants {names}")
        return
    _one_of(cfg.frontend, "norm", FRONTEND_NORMS, f"{where}.frontend")
    net = cfg.net
    _one_of(net, "pooling", NET_POOLINGS, f"{where}.net")
    _share(net, "dropout", f"{where}.net", below_one=True)
    for key in ("d_model", "n_heads", "ff_dim", "n_layers"):
        _at_least(net, key, 1, f"{where}.net")
    if not len(net.channels) == len(net.kernels) == len(net.pools):
        _fail(where, "net", "channels, kernels and pools must have one entry per conv stage")


def _check_head_trainer(c: DictConfig, where: str) -> None:
    _one_of(c, "optimizer", OPTIMIZERS, where)
    _at_least(c, "c", 0, where, strict=True)
    _at_least(c, "corpus_alpha", 0, where)
    for key in ("clean_p", "stream_p"):
        _share(c, key, where)
    for key in ("label_smoothing", "dropout"):
        _share(c, key, where, below_one=True)
    for key in ("max_iter", "stream_passes", "stream_per_clip", "batch_size"):
        _at_least(c, key, 1, where)
    for key in ("temperature_folds", "steps", "warmup_steps"):
        _at_least(c, key, 0, where)
    _at_least(c, "lr", 0, where, strict=True)
    _at_least(c, "weight_decay", 0, where)
    for name, w in (c.corpus_weights or {}).items():
        if w < 0:
            _fail(where, f"corpus_weights.{name}", f"must be >= 0, got {w!r}")


def corpus_factor(corpus_weights: Mapping[str, float] | None, corpus: str) -> float:
    """What ``head_trainer.corpus_weights`` means for one corpus: its own factor, else ``default``'s, else 1."""
    weights = dict(corpus_weights or {})
    return float(weights[corpus] if corpus in weights else weights.get("default", 1.0))
