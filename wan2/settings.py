"""Typed settings: the base class of every config dataclass and the one-line checks they use.

Each configurable thing declares its settings once, as a ``Settings`` dataclass beside its code (defaults
only there); ``store`` registers its defaults with Hydra's ConfigStore so that a YAML file lists
``- base_<name>`` in its defaults and only overrides. ``Settings.build`` turns a composed node (or keyword
arguments) into the dataclass and runs its ``check``: one line per problem, starting with the dotted key,
``objective.lr: 'abc' must be a number > 0``. Nothing here imports torch: a bad value fails in about a second.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is allowed."""


def err(msg: str):
    raise ConfigError(msg)


def show(v) -> str:
    """``repr`` of a value as the user wrote it (OmegaConf containers as plain lists / dicts)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(v, DictConfig | ListConfig):
        v = OmegaConf.to_container(v, resolve=True)
    return repr(v)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def one_of(v, options) -> bool:
    """``v in options`` where a bool only equals itself (``True == 1`` otherwise)."""
    return any(v is o if isinstance(v, bool) or isinstance(o, bool) else v == o for o in options)


def did_you_mean(word, options) -> str:
    """``"; did you mean 'motion'?"`` for the closest option, else ``""``."""
    near = difflib.get_close_matches(str(word), [str(o) for o in options], 1)
    return f"; did you mean {near[0]!r}?" if near else ""


# ------------------------------------------------------------------------------------ one value, one line
def check(key: str, v, ok: Callable[[object], bool], allowed: str, none_ok: bool = False):
    """Raise ``key: value must be allowed`` unless ``ok(v)`` (or ``v`` is None and ``none_ok``)."""
    if v is None and none_ok:
        return v
    if not ok(v):
        err(f"{key}: {show(v)} must be {allowed}{' (or null)' if none_ok else ''}")
    return v


def check_int(key: str, v, lo: int, hi: int | None = None, none_ok: bool = False, also: tuple = ()):
    allowed = f"an int >= {lo}" if hi is None else f"an int in {lo}..{hi}"
    allowed += "".join(f" or {a!r}" for a in also)
    ok = lambda x: one_of(x, also) or (is_int(x) and lo <= x and (hi is None or x <= hi))  # noqa: E731
    return check(key, v, ok, allowed, none_ok)


def check_num(
    key: str,
    v,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    none_ok: bool = False,
):
    if lo is not None and hi is not None:
        allowed = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        allowed = f"a number {'>' if lo_open else '>='} {lo}"
    else:
        allowed = "a number"

    def ok(x) -> bool:
        if not is_num(x):
            return False
        if lo is not None and (x <= lo if lo_open else x < lo):
            return False
        return hi is None or (x < hi if hi_open else x <= hi)

    return check(key, v, ok, allowed, none_ok)


def check_choice(key: str, v, options, none_ok: bool = False, shown=None):
    """``options`` are accepted; the message lists ``shown`` (default: all of them) and the nearest one."""
    if v is None and none_ok:
        return v
    if not one_of(v, options):
        shown = list(shown or options)
        hint = did_you_mean(v, [o for o in shown if isinstance(o, str)]) if isinstance(v, str) else ""
        err(f"{key}: {show(v)} is not one of {shown}{' (or null)' if none_ok else ''}{hint}")
    return v


def check_bool(key: str, v, none_ok: bool = False):
    return check(key, v, lambda x: isinstance(x, bool), "true or false", none_ok)


# ------------------------------------------------------------------------------------------- the base class
@dataclasses.dataclass
class Settings:
    """Base of every config dataclass: ``build`` from a node or keywords, ``check`` with the node's dotted key.

    Subclasses set ``KEY`` (where the node sits in ``train.yaml``'s config, e.g. ``objective``) and may set
    ``TARGET`` (the class Hydra instantiates, written as ``_target_`` into the stored defaults)."""

    KEY: ClassVar[str] = ""
    TARGET: ClassVar[str | None] = None

    def check(self, at: str) -> None:
        """Raise ``ConfigError`` for the first field that cannot work (``at``: this node's dotted key)."""

    @classmethod
    def build(cls, cfg=None, settings: Mapping | None = None, at: str | None = None):
        """The checked dataclass from ``cfg`` (an instance, a mapping or an OmegaConf node) updated with
        ``settings`` (keyword arguments, e.g. what Hydra's instantiate passes); unknown keys are refused with
        the nearest known one."""
        at = cls.KEY if at is None else at
        if isinstance(cfg, cls) and not settings:
            obj = cfg
        else:
            values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(_plain(cfg or {}))
            values.update(_plain(settings or {}))
            obj = cls._from_mapping(values, at)
        obj.check(at)
        return obj

    @classmethod
    def _from_mapping(cls, values: Mapping, at: str):
        names = [f.name for f in dataclasses.fields(cls)]
        values = {k: v for k, v in values.items() if k != "_target_"}
        for key in values:
            if key not in names:
                err(
                    f"{_join(at, key)}: not a setting of {cls.__name__} (allowed: {names}){did_you_mean(key, names)}"
                )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, v in values.items():
            sub = _settings_class(hints.get(name))
            if sub is not None and isinstance(v, Mapping):
                v = sub._from_mapping(v, _join(at, name))
            kwargs[name] = v
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """Plain dict of every field (nested settings as dicts, tuples as lists): hyperparameters, JSON."""
        return _yaml_values(dataclasses.asdict(self))


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _plain(node) -> Mapping:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _settings_class(hint) -> type[Settings] | None:
    """The Settings subclass a field is typed with (``X`` or ``X | None``), else None."""
    for t in (hint, *typing.get_args(hint)):
        if isinstance(t, type) and issubclass(t, Settings):
            return t
    return None


def defaults_node(cls: type[Settings]) -> dict:
    """The dataclass defaults as a plain dict (``_target_`` first when the class has one): the node stored in
    Hydra's ConfigStore. Plain, not structured, so a wrong type reaches ``check`` and its one-line message
    instead of OmegaConf's conversion error; unknown keys are still refused when composing (struct mode)."""
    out: dict[str, Any] = {"_target_": cls.TARGET} if cls.TARGET else {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            v = f.default_factory()
            out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
    return _yaml_values(out)


def _yaml_values(v):
    """Tuples as lists, recursively (OmegaConf stores lists)."""
    if isinstance(v, dict):
        return {k: _yaml_values(x) for k, x in v.items()}
    return [_yaml_values(x) for x in v] if isinstance(v, tuple | list) else v


def store(cls: type[Settings], group: str, name: str) -> None:
    """Register ``cls``'s defaults as ``<group>/<name>`` (a YAML extends it with ``defaults: [<name>, _self_]``)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=group, name=name, node=defaults_node(cls))


def registrar(registry: dict, group: str):
    """``register = registrar(REGISTRY, "group")`` gives the class decorator ``@register(name)``: it sets
    ``cls.NAME``, records ``REGISTRY[name] = cls`` and stores ``<group>/base_<name>`` in Hydra's ConfigStore."""

    def register(name: str):
        def deco(cls: type[Settings]) -> type[Settings]:
            cls.NAME = name
            registry[name] = cls
            store(cls, group=group, name=f"base_{name}")
            return cls

        return deco

    return register
