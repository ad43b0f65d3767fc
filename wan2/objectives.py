"""Registry of training objectives: each declares its settings once, as an ``ObjectiveSettings`` dataclass
registered here by ``@register(name)`` (which also stores its defaults in Hydra's ConfigStore as
``objective/base_<name>``). ``plan.py`` and ``config_check`` look objectives up here; nothing here imports torch.

Where objectives come from (``discover``): the built-in ones from ``wan2/lightning/*_config.py``; your own from
any module of a ``wan2_objectives`` folder on ``PYTHONPATH`` (a namespace package, no ``__init__.py``). A new
objective is one such module (settings + LightningModule) and one YAML (``configs/objective/<name>.yaml`` or a
folder on ``hydra.searchpath``) whose defaults list is ``[base_<name>, _self_]``; see docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import ClassVar

from wan2.settings import Settings, check_num, registrar

PLUGIN_PACKAGE = "wan2_objectives"
OBJECTIVES: dict[str, type[ObjectiveSettings]] = {}


@dataclasses.dataclass
class ObjectiveSettings(Settings):
    """Settings every objective has (the optimiser's learning rate); subclasses add theirs.

    ``PLAN``: how ``scripts/plan.py`` counts its trainable weights (``full`` transformer, ``lora`` adapters,
    ``distill`` with a teacher) or None when it trains no Wan transformer. ``CLIP``: what the clip size must
    suit: ``transformer`` (VAE stride x patch size), ``vae`` (VAE stride) or ``any``."""

    KEY: ClassVar[str] = "objective"
    NAME: ClassVar[str] = ""
    PLAN: ClassVar[str | None] = None
    CLIP: ClassVar[str] = "transformer"

    lr: float = 1e-3  # AdamW learning rate (peak, after warm-up)

    def check(self, at: str) -> None:
        check_num(f"{at}.lr", self.lr, 0, lo_open=True)


# ``@register(name)``: ``OBJECTIVES[name] = cls`` and ``objective/base_<name>`` in Hydra's ConfigStore
register = registrar(OBJECTIVES, "objective")


_discovered = False


def discover() -> dict[str, type[ObjectiveSettings]]:
    """Import every objective settings module once (built-in, then ``wan2_objectives.*``); returns the registry."""
    global _discovered
    if not _discovered:
        _discovered = True
        import wan2.lightning

        for m in pkgutil.iter_modules(wan2.lightning.__path__, "wan2.lightning."):
            if m.name.endswith("_config"):
                importlib.import_module(m.name)
        try:
            plugins = importlib.import_module(PLUGIN_PACKAGE)
        except ModuleNotFoundError:
            plugins = None
        for m in pkgutil.iter_modules(getattr(plugins, "__path__", []), f"{PLUGIN_PACKAGE}."):
            importlib.import_module(m.name)
    return OBJECTIVES


def by_target(target: str | None) -> type[ObjectiveSettings] | None:
    """The settings class of the objective whose LightningModule is ``target`` (a dotted path, or only the
    class name); None when no registered objective trains it."""
    if not target:
        return None
    for cls in discover().values():
        if cls.TARGET == target or (cls.TARGET or "").rsplit(".", 1)[-1] == str(target).rsplit(".", 1)[-1]:
            return cls
    return None


def plan_kinds() -> dict[str, str]:
    """LightningModule class name -> how the planner counts it, for objectives that train a Wan transformer."""
    return {cls.TARGET.rsplit(".", 1)[-1]: cls.PLAN for cls in discover().values() if cls.TARGET and cls.PLAN}
