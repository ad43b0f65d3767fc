"""Validation of composed configs before anything heavy is built: one line per problem, naming the key.

Every message starts with the dotted key, then the value and what is allowed:
``data.batch_size: 'abc' must be an int >= 1``. The settings of objectives and LoRA are checked by their own
dataclasses (``wan2.objectives``, ``wan2.lora.config``, ``wan2.backbones.model_config``, ``wan2.data.config``:
one declaration per setting); this module holds the checks that read several parts of the config (clip size vs
the model's VAE strides and patch, an expert vs the model's transformers, LoRA targets vs the model's modules,
fsdp vs EMA, shard files) and those of the sections that have no dataclass yet (run, trainer, callbacks). Nothing here imports torch:
a bad value fails in about a second.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wan2 import objectives
from wan2.backbones.model_config import ModelConfig
from wan2.backbones.wan_layout import LORA_PRESETS, WAN_LORA_MODULES, WAN_OTHER_MODULES  # torch-free
from wan2.settings import (
    ConfigError,  # noqa: F401  (re-exported: wan2.config_check.ConfigError)
    check,
    check_bool,
    check_choice,
    check_int,
    check_num,
)
from wan2.settings import err as _err
from wan2.settings import is_int as _is_int
from wan2.settings import is_num as _is_num
from wan2.settings import show as _show

# Mirrors of Lightning's choices (importing it is slow); tests/test_bad_configs.py keeps them in step.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # lightning.Trainer(accelerator=...)
PRECISIONS = (
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
)  # lightning's _PRECISION_INPUT_STR
PRECISION_ALIASES = ("32", "16", "bf16", "64", 32, 16, 64)  # the legacy spellings Lightning still takes
STRATEGIES = (
    "auto",
    "ddp",
    "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "fsdp",
    "fsdp_cpu_offload",
    "deepspeed",
    "deepspeed_stage_2",
    "deepspeed_stage_3",
    "single_device",
)  # lightning.pytorch.strategies.StrategyRegistry names (those that run here), or a {_target_: ...} mapping
FSDP2_DTYPES = ("bf16", "fp16", "fp32")  # FSDP2Strategy(param_dtype=..., reduce_dtype=...)
FSDP_STATE_DICT_TYPES = ("full", "sharded")  # lightning.pytorch.strategies.FSDPStrategy(state_dict_type=...)
TIMEDELTA_KEYS = ("weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds")
_MISSING = object()


def _get(cfg, key: str):
    return OmegaConf.select(cfg, key, default=_MISSING)


# The checks of wan2.settings on the value at a dotted key (absent keys are not checked)
def _check(cfg, key: str, ok: Callable[[object], bool], allowed: str, none_ok: bool = False):
    v = _get(cfg, key)
    return v if v is _MISSING else check(key, v, ok, allowed, none_ok)


def _int(cfg, key: str, lo: int, hi: int | None = None, none_ok: bool = False, also: tuple = ()):
    v = _get(cfg, key)
    return v if v is _MISSING else check_int(key, v, lo, hi, none_ok, also)


def _num(cfg, key: str, lo=None, hi=None, lo_open=False, hi_open=False, none_ok=False):
    v = _get(cfg, key)
    return v if v is _MISSING else check_num(key, v, lo, hi, lo_open, hi_open, none_ok)


def _choice(cfg, key: str, options, none_ok: bool = False, shown=None):
    v = _get(cfg, key)
    return v if v is _MISSING else check_choice(key, v, options, none_ok, shown)


def _bool(cfg, key: str, none_ok: bool = False):
    v = _get(cfg, key)
    return v if v is _MISSING else check_bool(key, v, none_ok)


def _duration_ok(v) -> bool:
    """Lightning's durations: 'DD:HH:MM:SS' or a dict of timedelta arguments, longer than zero."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+):(\d+):(\d+):(\d+)\s*", v)
        return bool(m) and any(int(g) for g in m.groups())
    if isinstance(v, DictConfig):
        d = OmegaConf.to_container(v, resolve=True)
        return (
            bool(d)
            and set(d) <= set(TIMEDELTA_KEYS)
            and all(_is_num(x) and x >= 0 for x in d.values())
            and any(d.values())
        )
    return False


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # the backbone loader says why, in one line
        return {}
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------------------------- sections
def _check_run(cfg: DictConfig) -> None:
    _int(cfg, "seed", 0)
    _int(cfg, "threads", 1, none_ok=True)
    _bool(cfg, "export.enabled")
    _int(cfg, "reliability.max_nonfinite_in_row", 1)
    signals = _get(cfg, "reliability.preemption_signals")
    if signals is not _MISSING:
        allowed = ["SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP"]
        if not isinstance(signals, ListConfig | list) or any(s not in allowed for s in signals):
            _err(
                f"reliability.preemption_signals: {_show(signals)} must be a list of {allowed} "
                "(SIGTERM is always handled)"
            )
    ckpt = _get(cfg, "ckpt_path")
    sharded = (
        ckpt not in (_MISSING, None) and (Path(str(ckpt)) / "meta.pt").is_file()
    )  # an FSDP checkpoint dir
    if ckpt not in (_MISSING, None, "", "none", "last") and not Path(str(ckpt)).is_file() and not sharded:
        _err(
            f"ckpt_path: {ckpt!r} is not a file (allowed: a .ckpt file, a sharded FSDP checkpoint folder, 'last' "
            "for this run folder's checkpoints/last.ckpt, or null)"
        )


def _check_model(cfg: DictConfig) -> None:
    """Each model setting (``wan2.backbones.model_config.ModelConfig``)."""
    ModelConfig.build(cfg.model, at="model")


def _geometry(cfg: DictConfig) -> tuple[int, int, list[int], int] | None:
    """(VAE spatial stride, VAE temporal stride, transformer patch size, number of blocks) of the model the run
    builds: from the pretrained folders' config.json where they are set, else from the model config; None when
    a pretrained folder's config cannot be read (the backbone builder then says why)."""
    model = cfg.model
    pre, vae_pre = model.get("pretrained"), model.get("vae_pretrained")
    if pre:
        vae = _read_json(Path(str(pre)) / "vae" / "config.json")
        tr = _read_json(Path(str(pre)) / "transformer" / "config.json")
    else:
        vae = (
            _read_json(Path(str(vae_pre)) / "config.json")
            if vae_pre
            else OmegaConf.to_container(model.get("vae") or {}, resolve=True)
        )
        tr = OmegaConf.to_container(model.get("transformer") or {}, resolve=True)
    if not vae or not tr:
        return None
    try:
        return (
            int(vae.get("scale_factor_spatial") or 8),
            int(vae.get("scale_factor_temporal") or 4),
            [int(p) for p in tr.get("patch_size") or (1, 2, 2)],
            int(tr.get("num_layers") or 1),
        )
    except (TypeError, ValueError):
        return None


def _num_experts(cfg: DictConfig) -> int | None:
    """2 for a Wan2.2 A14B-style model (transformer_2 + boundary_ratio), 1 for one transformer; None when a
    pretrained folder's model_index.json cannot be read (the backbone builder then says why)."""
    pre = cfg.model.get("pretrained")
    if pre:
        index = _read_json(Path(str(pre)) / "model_index.json")
        if not index:
            return None
        second = index.get("transformer_2")
        return 2 if index.get("boundary_ratio") is not None and second and second[0] is not None else 1
    return 2 if cfg.model.get("boundary_ratio") is not None else 1


def _check_clip_size(cfg: DictConfig, at: str) -> None:
    """``{at}.num_frames / height / width`` (RankJump settings or a shard data module's expected clip size)."""
    from wan2.data.config import check_clip

    check_clip(at, *(_get(cfg, f"{at}.{k}") for k in ("num_frames", "height", "width")))
    # what the objective's networks can take
    settings = objectives.by_target(str(_get(cfg, "objective._target_")))
    clip = settings.CLIP if settings is not None else "transformer"
    geometry = _geometry(cfg) if isinstance(cfg.get("model"), DictConfig) else None
    if clip == "any" or geometry is None:  # e.g. the RankJump encoder takes any size
        return
    spatial, temporal, patch, _ = geometry
    uses_transformer = clip == "transformer"
    s = spatial * (patch[1] if uses_transformer else 1)
    what = "VAE stride x patch size" if uses_transformer else "VAE stride"
    for key in ("height", "width"):
        v = _get(cfg, f"{at}.{key}")
        if _is_int(v) and v % s:
            _err(f"{at}.{key}: {v} must be a multiple of {s} ({what}), e.g. {max(s, v // s * s)}")
    frames = _get(cfg, f"{at}.num_frames")
    if not _is_int(frames):
        return
    if (frames - 1) % temporal:
        _err(f"{at}.num_frames: {frames} must be {temporal}k+1 for a VAE with temporal stride {temporal}")
    latent, pt = (frames - 1) // temporal + 1, patch[0] if uses_transformer else 1
    if latent % pt:
        _err(
            f"{at}.num_frames: {frames} gives {latent} latent frames, not a multiple of the transformer's temporal "
            f"patch size {pt}"
        )


def _check_shard_files(key: str, spec) -> None:
    """Local shard files named by ``spec`` (brace pattern, ``::`` list, glob or a list of those) must exist;
    ``pipe:`` commands and URLs are left to the reader."""
    if spec in (_MISSING, None):
        return
    import glob

    from braceexpand import braceexpand  # webdataset's own dependency

    specs = [spec] if isinstance(spec, str) else list(spec)
    files = []
    for item in specs:
        for part in str(item).split("::"):
            if part.startswith("pipe:") or "://" in part:
                continue
            if any(c in part for c in "*?["):
                if not glob.glob(part):
                    _err(
                        f"{key}: no file matches {part!r} (allowed: existing .tar shards, a pipe: command, a URL)"
                    )
                continue
            files += list(braceexpand(part))
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        _err(
            f"{key}: {len(missing)} of {len(files)} shard files do not exist (first: {missing[0]!r}); "
            "allowed: existing .tar shards, a pipe: command, a URL"
        )


def _check_bucket_folder(cfg: DictConfig, spec) -> bool:
    """True when ``data.train_shards`` is a bucketed shard folder (``make_shards.py --buckets``); its manifest
    must be whole and its buckets fit the model (sides multiples of VAE stride x patch, frames the VAE's)."""
    from wan2.data.buckets import bucket_size_problem, is_bucket_folder, read_bucket_manifest

    if not is_bucket_folder(spec):
        if spec not in (_MISSING, None) and _get(cfg, "data.cache_dir") not in (_MISSING, None):
            _err(
                f"data.cache_dir: {_get(cfg, 'data.cache_dir')!r} needs data.train_shards to be a bucketed folder "
                "(make_shards.py --buckets); other shards are read as videos (data.cache_dir=null)"
            )
        if isinstance(spec, str) and Path(spec).is_dir():
            _err(
                f"data.train_shards: {spec!r} is a folder without manifest.json (a make_shards.py --buckets run "
                "that did not finish?); allowed: a bucketed folder, .tar shards (a brace pattern or glob), a pipe: command"
            )
        return False
    try:
        manifest = read_bucket_manifest(spec)
    except ValueError as err:
        _err(f"data.train_shards: {err}")
    geometry = _geometry(cfg) if isinstance(cfg.get("model"), DictConfig) else None
    if geometry is not None:
        spatial, temporal, patch, _ = geometry
        problem = bucket_size_problem(manifest, spatial * patch[1], temporal)
        if problem is not None:
            _err(
                f"data.train_shards: {spec!r}: {problem}; rebuild it with make_shards.py --buckets --model ..."
            )
    return True


def _check_data(cfg: DictConfig) -> None:
    """The data module's own dataclass checks each of its settings (``wan2.data.config``); then what depends
    on the model (clip size vs VAE stride and patch) and on the disk (shard files)."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig):
        return
    from wan2.data.config import for_node

    settings = for_node(data)
    d = settings.build(data, at="data") if settings is not None else None
    n = getattr(d, "num_train", None)
    if n is not None and d.batch_size > n:  # a run would train nothing (a module alone may hold fewer clips)
        _err(
            f"data.batch_size: {d.batch_size} must be <= data.num_train={n} (the last partial batch is dropped)"
        )
    for key in ("data.train_shards", "data.val_shards"):
        if not (key == "data.train_shards" and _check_bucket_folder(cfg, _get(cfg, key))):
            _check_shard_files(key, _get(cfg, key))
    if _get(cfg, "data.num_frames") is not _MISSING:
        _check_clip_size(cfg, "data")
    if isinstance(_get(cfg, "data.rankjump"), DictConfig):
        _check_clip_size(cfg, "data.rankjump")


def _check_lora_targets(cfg: DictConfig, targets: str) -> None:
    """A target regex must full-match at least one Linear layer of the model's transformer and nothing else
    (PEFT raises there)."""
    if targets in LORA_PRESETS:
        return
    presets = list(LORA_PRESETS)
    allowed = f"allowed: a preset {presets} or a regex matching Linear layers such as 'blocks.0.attn1.to_q'"
    try:
        pattern = re.compile(targets)
    except re.error as err:
        _err(f"lora.targets: {targets!r} is not a valid regex ({err}); {allowed}")
    geometry = _geometry(cfg) if "model" in cfg else None
    layers = geometry[3] if geometry else 40
    hits = []
    for name, ok in [(n, True) for n in WAN_LORA_MODULES] + [(n, False) for n in WAN_OTHER_MODULES]:
        for n in (
            [name.replace("blocks.0", f"blocks.{i}", 1) for i in range(layers)]
            if name.startswith("blocks.0")
            else [name]
        ):
            if pattern.fullmatch(n):
                hits.append((n, ok))
    if not hits:
        near = difflib.get_close_matches(targets, presets, 1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        _err(
            f"lora.targets: {targets!r} matches no module of the transformer (PEFT full-matches names); "
            f"{allowed}{hint}"
        )
    bad = [n for n, ok in hits if not ok]
    if bad:
        _err(
            f"lora.targets: {targets!r} also matches {bad[0]!r}, which is not a Linear layer LoRA can wrap; {allowed}"
        )


def _check_objective(cfg: DictConfig) -> None:
    """The objective's own dataclass checks each of its settings; then what depends on the model."""
    obj = cfg.get("objective")
    if not isinstance(obj, DictConfig):
        return
    settings = objectives.by_target(obj.get("_target_"))
    if settings is None:  # not a registered objective: instantiate will say what is wrong
        return
    o = settings.build(obj, at="objective")
    # Wan2.2 A14B experts (flow matching and LoRA)
    expert = getattr(o, "expert", None)
    if expert in ("low", "both") and isinstance(cfg.get("model"), DictConfig) and _num_experts(cfg) == 1:
        _err(
            f"objective.expert: {expert!r} needs a two-expert model (model=wan22_t2v_a14b, model.boundary_ratio set, "
            "or a pretrained folder with transformer_2); this model has one transformer (allowed: null or 'high')"
        )
    lora = getattr(o, "lora", None)
    if lora is not None:
        _check_lora_targets(cfg, lora.targets)


def _check_trainer(cfg: DictConfig) -> None:
    if not isinstance(cfg.get("trainer"), DictConfig):
        return
    t = "trainer"
    _choice(cfg, f"{t}.accelerator", ACCELERATORS)
    _check(
        cfg,
        f"{t}.devices",
        lambda v: (
            (_is_int(v) and (v >= 1 or v == -1))
            or v == "auto"
            or (isinstance(v, str) and re.fullmatch(r"\s*(-1|\d+|\d+(\s*,\s*\d+)*\s*,?)\s*", v) is not None)
            or (isinstance(v, ListConfig) and len(v) > 0 and all(_is_int(d) and d >= 0 for d in v))
        ),
        "an int >= 1, -1 (all), 'auto', or a list of device ids",
    )
    _int(cfg, f"{t}.num_nodes", 1)
    strategy = _get(cfg, f"{t}.strategy")
    if isinstance(strategy, DictConfig):
        _check(
            cfg,
            f"{t}.strategy._target_",
            lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z_][\w.]*\.\w*Strategy", v) is not None,
            "a strategy class path, e.g. 'lightning.pytorch.strategies.FSDPStrategy'",
        )
        _choice(cfg, f"{t}.strategy.state_dict_type", FSDP_STATE_DICT_TYPES)
        for key in ("param_dtype", "reduce_dtype"):  # wan2.lightning.distributed.FSDP2Strategy
            _choice(cfg, f"{t}.strategy.{key}", FSDP2_DTYPES, none_ok=True)
        for key in ("reshard_after_forward", "save_distributed_checkpoint"):
            _bool(cfg, f"{t}.strategy.{key}")
    elif strategy is not _MISSING:
        _choice(cfg, f"{t}.strategy", STRATEGIES, shown=STRATEGIES + ("{_target_: ...Strategy}",))
    _bool(cfg, f"{t}.use_distributed_sampler")
    _bool(cfg, f"{t}.sync_batchnorm")
    # not ${wan2.auto_precision:...}: resolving it for a GPU imports torch
    if not OmegaConf.is_interpolation(cfg.trainer, "precision"):
        _choice(cfg, f"{t}.precision", PRECISIONS + PRECISION_ALIASES, none_ok=True, shown=PRECISIONS)
    else:  # only $WAN2_PRECISION, which forces it, can be wrong
        from wan2.config_resolvers import forced_precision

        try:
            forced_precision()
        except ValueError as e:
            _err(f"{t}.precision: {e}")
    _int(cfg, f"{t}.max_steps", 1, also=(-1,))
    _int(cfg, f"{t}.max_epochs", 1, none_ok=True, also=(-1,))
    _check(
        cfg,
        f"{t}.max_time",
        _duration_ok,
        "'DD:HH:MM:SS' (quoted in YAML) or a dict of timedelta arguments, longer than zero",
        none_ok=True,
    )
    every_epoch = _int(cfg, f"{t}.check_val_every_n_epoch", 1, none_ok=True)
    if every_epoch in (None, _MISSING):
        _check(
            cfg,
            f"{t}.val_check_interval",
            lambda v: (_is_int(v) and v >= 1) or _duration_ok(v),
            "an int >= 1 (steps) or a duration 'DD:HH:MM:SS' (trainer.check_val_every_n_epoch is null)",
            none_ok=True,
        )
    else:
        _check(
            cfg,
            f"{t}.val_check_interval",
            lambda v: (_is_int(v) and v >= 1) or (_is_num(v) and 0 < v <= 1) or _duration_ok(v),
            "an int >= 1 (batches), a share of the epoch in (0, 1] or 'DD:HH:MM:SS'",
            none_ok=True,
        )
    _check(
        cfg,
        f"{t}.limit_val_batches",
        lambda v: (_is_int(v) and v >= 0) or (_is_num(v) and 0 <= v <= 1),
        "an int >= 0 (batches) or a share in [0, 1]",
        none_ok=True,
    )
    _int(cfg, f"{t}.log_every_n_steps", 1)
    _num(cfg, f"{t}.gradient_clip_val", 0, none_ok=True)
    _choice(cfg, f"{t}.gradient_clip_algorithm", ("norm", "value"), none_ok=True)
    _int(cfg, f"{t}.accumulate_grad_batches", 1)
    _int(cfg, f"{t}.num_sanity_val_steps", 0, also=(-1,))
    _check(
        cfg,
        f"{t}.deterministic",
        lambda v: isinstance(v, bool) or v == "warn",
        "true, false or 'warn'",
        none_ok=True,
    )
    _bool(cfg, f"{t}.enable_model_summary")


def _check_callbacks(cfg: DictConfig) -> None:
    c = "callbacks"
    _int(cfg, f"{c}.checkpoint.every_n_train_steps", 0, none_ok=True)
    _int(cfg, f"{c}.checkpoint.save_top_k", 0, also=(-1,))
    if isinstance(_get(cfg, f"{c}.quick_eval"), DictConfig):
        _int(cfg, f"{c}.quick_eval.every_n_steps", 1)
        _int(cfg, f"{c}.quick_eval.num_prompts", 1)
        _int(cfg, f"{c}.quick_eval.num_inference_steps", 1)
        _num(cfg, f"{c}.quick_eval.guidance_scale", 1, none_ok=True)
        _int(cfg, f"{c}.quick_eval.seed", 0)
        from wan2.data.rankjump import SPLIT_SEED_BASE

        _choice(cfg, f"{c}.quick_eval.split", list(SPLIT_SEED_BASE))


def _check_fsdp_ema(cfg: DictConfig) -> None:
    """The EMA keeps whole weights; FSDP over several ranks leaves each rank a shard of them."""
    strategy = _get(cfg, "trainer.strategy")
    if not (isinstance(strategy, DictConfig) and str(strategy.get("_target_", "")).endswith("FSDP2Strategy")):
        return
    ema, world = _get(cfg, "objective.ema_decay"), _world(cfg)
    if _is_num(ema) and ema > 0 and world > 1:
        _err(
            f"objective.ema_decay: {ema} needs whole weights, and trainer=fsdp shards them over {world} ranks "
            "(allowed with fsdp: 0 over several devices; trainer=ddp keeps the EMA)"
        )


def _world(cfg: DictConfig) -> int:
    """Processes of the run: ``trainer.devices x trainer.num_nodes`` (1 for what is not a count, e.g. auto)."""
    devices, nodes = _get(cfg, "trainer.devices"), _get(cfg, "trainer.num_nodes")
    return (devices if _is_int(devices) and devices >= 1 else 1) * (nodes if _is_int(nodes) else 1)


def fsdp_strategy(strategy) -> bool:
    """Whether a ``trainer.strategy`` value (a registry name or a ``_target_`` mapping) is FSDP (torch-free;
    ``wan2.lightning.distributed.is_fsdp`` also takes strategy objects)."""
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    if isinstance(strategy, Mapping):
        return str(strategy.get("_target_", "")).endswith(("FSDPStrategy", "FSDP2Strategy"))
    return False


def _check_memory(cfg: DictConfig) -> None:
    """The ``memory`` group's own checks (``wan2.memory.config``), then what depends on the model (blocks to
    swap) and the trainer (a bf16 frozen base needs a bf16 compute dtype; resolved later when interpolated)."""
    node = cfg.get("memory")
    if not isinstance(node, DictConfig):
        return
    from wan2.memory.config import MemoryConfig

    mem = MemoryConfig.build(node, at="memory")
    geometry = _geometry(cfg) if isinstance(cfg.get("model"), DictConfig) else None
    if geometry is not None and mem.block_swap >= geometry[3]:
        _err(
            f"memory.block_swap: {mem.block_swap} must be < the transformer's {geometry[3]} blocks (at least one "
            "block stays on the accelerator)"
        )
    if isinstance(cfg.get("trainer"), DictConfig) and not OmegaConf.is_interpolation(
        cfg.trainer, "precision"
    ):
        fsdp = fsdp_strategy(_get(cfg, "trainer.strategy"))
        precision = _get(cfg, "trainer.precision")
        mem.frozen("32-true" if precision in (_MISSING, None) else precision, fsdp=fsdp)
        if fsdp and (mem.fp8_frozen or mem.block_swap):
            key = "fp8_frozen" if mem.fp8_frozen else "block_swap"
            _err(f"memory.{key}: not with trainer=fsdp (FSDP shards and gathers the weights itself)")
    world = _world(cfg)
    if mem.block_swap and world > 1:
        _err(
            f"memory.block_swap: {mem.block_swap} needs one process (DDP keeps every parameter on its GPU; got "
            f"{world} devices); allowed with several: 0"
        )


def check_train_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` (one line: key, value, what is allowed) for the first value that cannot work."""
    try:
        _check_run(cfg)
        if isinstance(cfg.get("model"), DictConfig):
            _check_model(cfg)
        _check_data(cfg)
        _check_objective(cfg)
        _check_trainer(cfg)
        _check_fsdp_ema(cfg)
        _check_memory(cfg)
        _check_callbacks(cfg)
    except OmegaConfBaseException as err:  # e.g. an interpolation that does not resolve
        key = getattr(err, "full_key", None) or "config"
        _err(f"{key}: {str(err).strip().splitlines()[0]}")
