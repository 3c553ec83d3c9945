"""Compose YAML configs from ``conf/`` with command-line ``key=value`` overrides.

A top-level file (``train.yaml``) may name config groups in a
``defaults`` mapping (``model: compact``); each group is a folder of YAML files.
On the command line ``group=choice`` picks a file, ``group=a+b`` merges several
(lists are concatenated, so ``data=ravdess+tess`` trains on both corpora),
``a.b.c=value`` sets a key that must already exist, and ``+a.b=value`` adds a
new one. A group file may start from another of its group (``extends: whisper``)
and say only what differs: its keys replace the parent's, lists whole. This is
the part of Hydra's compose API that ser needs, kept small enough to give precise errors. Torch-free: the daemon applies its overrides with :func:`apply_overrides`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conf import CONF_DIR


class ConfigError(Exception):
    """A config file, group choice or override that does not exist or does not parse."""


_MISSING = object()


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot load config {path}: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config {path} must be a mapping")
    return cfg


def _merge(a: Any, b: Any, concat_lists: bool = True) -> Any:
    """``b`` over ``a`` (plain containers), mappings key by key; lists are concatenated, so groups can be
    combined with '+', or with ``concat_lists`` false replaced whole, as a file that ``extends:`` another
    restates a list to change it (concatenated, a recipe could never drop one of its parent's ``train_variants``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(out[k], v, concat_lists) if k in out else v
        return out
    if concat_lists and isinstance(a, list) and isinstance(b, list):
        return a + b
    return b


def group_choices(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Names of the files in a config group folder (``conf/<group>/*.yaml``)."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def load_group_file(group: str, name: str, conf_dir: Path = CONF_DIR, _seen: tuple[str, ...] = ()) -> dict:
    """One file of a config group as a plain dict, its ``extends:`` chain resolved (parents first)."""
    path = conf_dir / group / f"{name}.yaml"
    if not path.is_file():
        asked = f"{conf_dir / group / _seen[-1]}.yaml: extends " if _seen else ""
        raise ConfigError(f"{asked}unknown {group} {name!r}; choose from: {', '.join(group_choices(group, conf_dir)) or '(none)'}")
    data = OmegaConf.to_container(_load_yaml(path), resolve=False)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: extends must name one file of conf/{group}, not {parent!r}")
    if parent in (*_seen, name):
        raise ConfigError(f"{path}: extends {parent!r} makes a cycle ({' -> '.join((*_seen, name, parent))})")
    return _merge(load_group_file(group, parent, conf_dir, (*_seen, name)), data, concat_lists=False)


def _load_group(group: str, choice: str, conf_dir: Path) -> dict:
    merged: dict = {}
    for part in str(choice).split("+"):
        merged = _merge(merged, load_group_file(group, part, conf_dir))
    return merged


def compose(
    name: str,
    overrides: Sequence[str] = (),
    conf_dir: Path = CONF_DIR,
    sections: Mapping[str, Callable[[Any, str], DictConfig]] | None = None,
) -> DictConfig:
    """Build the config ``conf/<name>.yaml`` with its groups and the given overrides applied.

    ``sections`` maps a top-level key to the function that types and
    validates it (``training.schema.model_config`` for ``model``), called
    with the section and its key twice: on the files, which fills the keys
    they leave at the schema's defaults (so ``a.b=value`` may set them), and
    after the overrides, so a mistyped or unknown key is a ConfigError naming
    it, whichever file or override set it. This module stays schema-free: the
    package that owns a section passes it.
    """
    base_path = conf_dir / f"{name}.yaml"
    if not base_path.is_file():
        raise ConfigError(f"no config named {name!r} in {conf_dir}")
    base = OmegaConf.to_container(_load_yaml(base_path), resolve=False)
    defaults: dict = dict(base.pop("defaults", None) or {})

    plain: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if key in defaults:
            defaults[key] = value
        else:
            plain.append(item)

    for group, choice in defaults.items():
        if choice in (None, "null"):
            continue
        base[group] = _merge(base.get(group) or {}, _load_group(group, choice, conf_dir))
    base["choices"] = {g: str(c) for g, c in defaults.items()}
    for key, typed in (sections or {}).items():
        if key in base:
            base[key] = OmegaConf.to_container(typed(base[key], key), resolve=False)
    cfg = OmegaConf.create(base)

    cfg = apply_overrides(cfg, plain)

    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config {name!r} does not resolve: {exc}") from exc
    for key, typed in (sections or {}).items():
        if key in cfg:
            cfg[key] = typed(cfg[key], key)
    OmegaConf.set_struct(cfg, True)
    return cfg


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``a.b=value`` sets a key that must exist (values parsed as YAML); ``+a.b=value`` adds one. Returns ``cfg``.

    A structured config (the daemon's schema) also checks the value's type,
    so a mistyped value is a ConfigError naming its key.
    """
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        add = key.startswith("+")
        key = key.lstrip("+")
        if not add and OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=False) is _MISSING:
            raise ConfigError(f"unknown config key {key!r} (use +{key}=... to add a new key)")
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse value of {key!r}: {exc}") from exc
        try:
            OmegaConf.update(cfg, key, parsed, merge=False, force_add=add)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"config key {key!r}: {str(exc).splitlines()[0]}") from exc
    return cfg


def to_yaml(cfg: DictConfig | ListConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save(cfg: DictConfig, path: Path) -> None:
    """Write the resolved config next to a run's outputs, so the run can be reproduced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))


def to_dict(cfg: DictConfig | dict) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def from_dict(data: dict) -> DictConfig:
    return OmegaConf.create(data)

