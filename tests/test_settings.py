"""Each setting is declared once: in its dataclass. YAML files only override (none restates a default), the
modules take their values from the dataclass (no second default in a signature), and the checks live there."""

import dataclasses
import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import wan2.config_resolvers  # noqa: F401  (registers every settings dataclass)
from wan2.backbones.model_config import ModelConfig
from wan2.data.config import DATA_CONFIGS
from wan2.lora.config import LoRAConfig
from wan2.objectives import OBJECTIVES, discover
from wan2.settings import ConfigError, defaults_node

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _restated(yaml: dict, defaults: dict, at: str = "") -> list[str]:
    """Keys whose YAML value equals the dataclass default (interpolations aside)."""
    out = []
    for key, v in yaml.items():
        if key == "defaults" or key not in defaults:
            continue
        if isinstance(v, dict) and isinstance(defaults[key], dict):
            out += _restated(v, defaults[key], f"{at}{key}.")
        elif not (isinstance(v, str) and "${" in v) and v == defaults[key] and type(v) is type(defaults[key]):
            out.append(f"{at}{key}")
    return out


@pytest.mark.parametrize(
    "group,base",
    [("objective", None), ("lora", LoRAConfig), ("model", ModelConfig), ("data", None)],
)
def test_yaml_files_only_override(group, base):
    discover()
    for path in sorted((CONFIGS / group).glob("*.yaml")):
        yaml = OmegaConf.to_container(OmegaConf.load(path))
        parents = [d for d in yaml.get("defaults", []) if isinstance(d, str) and d != "_self_"]
        assert parents, f"{path.name}: its defaults list must extend base_<name> (the dataclass)"
        if not parents[0].startswith("base_"):  # extends another option (wan_tiny_moe: wan_tiny)
            assert (CONFIGS / group / f"{parents[0]}.yaml").is_file(), path.name
            continue
        registry = {"objective": OBJECTIVES, "data": DATA_CONFIGS}.get(group)
        cls = registry[parents[0].removeprefix("base_")] if registry is not None else base
        assert not _restated(yaml, defaults_node(cls)), f"{path.name} restates defaults"


def test_every_objective_declares_its_module_and_checks():
    registry = discover()
    assert set(registry) >= {"flow_matching", "lora", "distill", "vae", "encoder"}
    for name, cls in registry.items():
        assert cls.NAME == name and cls.TARGET, name
        for f in dataclasses.fields(cls):  # every field has a default: a YAML only overrides
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, (
                f.name
            )
        cls.build({})  # the defaults pass their own checks


def test_modules_take_their_values_from_the_dataclass():
    """No constructor declares a second default that could disagree: (backbone, cfg, **settings) only."""
    import importlib

    for cls in discover().values():
        module_path, _, name = cls.TARGET.rpartition(".")
        module = getattr(importlib.import_module(module_path), name)
        assert module.Config is cls
        params = list(inspect.signature(module.__init__).parameters.values())[1:]
        assert [p.name for p in params] == ["backbone", "cfg", "settings"], (name, params)


def test_data_modules_take_their_values_from_the_dataclass(tmp_path):
    """Each configs/data/<name>.yaml extends its dataclass; its DataModule declares no default of its own
    (``VideoDataModule``'s positional ``train_shards`` is None: the dataclass says it is required)."""
    import importlib

    from tests.conftest import compose_cfg

    assert set(DATA_CONFIGS) == {p.stem for p in (CONFIGS / "data").glob("*.yaml")}
    for name, cls in DATA_CONFIGS.items():
        module_path, _, cls_name = cls.TARGET.rpartition(".")
        module = getattr(importlib.import_module(module_path), cls_name)
        assert module.Config is cls
        params = list(inspect.signature(module.__init__).parameters.values())[1:]
        assert [p.name for p in params if p.name != "train_shards"] == ["cfg", "settings"], (name, params)
        assert all(p.default in (None, inspect.Parameter.empty) for p in params), (name, params)
        shards = [f"data.train_shards={tmp_path}/x.tar"] if name == "shards" else []
        data = OmegaConf.to_container(compose_cfg([f"data={name}", *shards]).data, resolve=True)
        assert data.pop("_target_") == cls.TARGET
        built = module(**data).cfg  # what Hydra's instantiate does
        assert built == cls.build(data) and built.to_dict() == data, name


def test_data_checks_name_the_key():
    with pytest.raises(ConfigError) as info:
        DATA_CONFIGS["rankjump"].build({"rankjump": {"rows": 9}})
    assert str(info.value) == "data.rankjump.rows: 9 must be an int in 5..8"
    with pytest.raises(ConfigError) as info:
        DATA_CONFIGS["shards"].build({"train_shards": "x.tar", "num_frame": 5})
    assert str(info.value).startswith("data.num_frame: not a setting of ShardDataConfig")
    assert str(info.value).endswith("did you mean 'num_frames'?")


def test_unknown_setting_names_the_nearest():
    with pytest.raises(ConfigError) as info:
        OBJECTIVES["flow_matching"].build({"warmup_step": 3})
    msg = str(info.value)
    assert msg.startswith("objective.warmup_step: not a setting of FlowMatchingConfig")
    assert msg.endswith("did you mean 'warmup_steps'?"), msg


def test_choice_names_the_nearest():
    with pytest.raises(ConfigError) as info:
        OBJECTIVES["flow_matching"].build({"timesteps": {"mode": "logit_norm"}})
    assert str(info.value) == (
        "objective.timesteps.mode: 'logit_norm' is not one of ['logit_normal', 'uniform', 'grid']; "
        "did you mean 'logit_normal'?"
    )


def test_lora_defaults_reach_peft():
    from wan2.lora import lora_config
    from wan2.lora.config import TARGET_PRESETS

    peft = lora_config()
    spec = LoRAConfig()
    assert spec.alpha is None and (peft.r, peft.lora_alpha) == (
        spec.rank,
        spec.rank,
    )  # null alpha: alpha = rank
    assert lora_config(rank=8).lora_alpha == 8 and lora_config(rank=8, alpha=2).lora_alpha == 2
    assert peft.target_modules == TARGET_PRESETS[spec.targets]
