"""Validation of composed configs before anything heavy is built: one line per problem, naming the key.

Every message starts with the dotted key, then the value and what is allowed:
``data.batch_size: 'abc' must be an int >= 1``. Only keys present in the composed config are checked (each
objective has its own), and nothing here imports torch: a bad value fails in about a second.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wan2.backbones.wan_layout import LORA_PRESETS, WAN_LORA_MODULES, WAN_OTHER_MODULES  # torch-free


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is allowed."""


# Mirrors of values that live in modules importing torch; tests/test_bad_configs.py keeps them in step.
LORA_INITS = (True, False, "gaussian", "default")  # wan2.lora.adapters.lora_config(init=...)
TIMESTEP_MODES = ("logit_normal", "uniform", "grid")  # wan2.diffusion.flow.sample_training_sigmas
LOSS_WEIGHTINGS = ("none", "bell")  # wan2.lightning.flow_module.FlowMatchingModule
EXPERTS = ("high", "low", "both")  # wan2.lightning.experts.EXPERTS (objective.expert; null also allowed)
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


def _err(msg: str):
    raise ConfigError(msg)


def _show(v) -> str:
    if isinstance(v, DictConfig | ListConfig):
        v = OmegaConf.to_container(v, resolve=True)
    return repr(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _get(cfg, key: str):
    return OmegaConf.select(cfg, key, default=_MISSING)


def _check(cfg, key: str, ok: Callable[[object], bool], allowed: str, none_ok: bool = False):
    """The value at ``key`` (``_MISSING`` if absent); raises ``key: value must be allowed`` when ``ok`` fails."""
    v = _get(cfg, key)
    if v is _MISSING or (v is None and none_ok):
        return v
    if not ok(v):
        _err(f"{key}: {_show(v)} must be {allowed}{' (or null)' if none_ok else ''}")
    return v


def _int(cfg, key: str, lo: int, hi: int | None = None, none_ok: bool = False, also: tuple = ()):
    allowed = f"an int >= {lo}" if hi is None else f"an int in {lo}..{hi}"
    allowed += "".join(f" or {a!r}" for a in also)
    return _check(
        cfg,
        key,
        lambda v: _in(v, also) or (_is_int(v) and lo <= v and (hi is None or v <= hi)),
        allowed,
        none_ok,
    )


def _num(
    cfg,
    key: str,
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

    def ok(v) -> bool:
        if not _is_num(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)

    return _check(cfg, key, ok, allowed, none_ok)


def _in(v, options) -> bool:
    """``v in options`` where a bool only equals itself (``True == 1`` otherwise)."""
    return any(v is o if isinstance(v, bool) or isinstance(o, bool) else v == o for o in options)


def _choice(cfg, key: str, options, none_ok: bool = False, shown=None):
    """``options`` are accepted; the message lists ``shown`` (default: all of them)."""
    v = _get(cfg, key)
    if v is _MISSING or (v is None and none_ok):
        return v
    if not _in(v, options):
        _err(f"{key}: {_show(v)} is not one of {list(shown or options)}{' (or null)' if none_ok else ''}")
    return v


def _bool(cfg, key: str, none_ok: bool = False):
    return _check(cfg, key, lambda v: isinstance(v, bool), "true or false", none_ok)


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
    pre = _get(cfg, "model.pretrained")
    if pre not in (_MISSING, None, ""):
        if not Path(str(pre)).is_dir():
            _err(
                f"model.pretrained: {pre!r} is not a directory (train the base first or point at a diffusers "
                "export)"
            )
        if not (Path(str(pre)) / "model_index.json").is_file():
            _err(
                f"model.pretrained: {pre!r} has no model_index.json (allowed: a diffusers WanPipeline folder)"
            )
    vae_pre = _get(cfg, "model.vae_pretrained")
    if vae_pre not in (_MISSING, None, ""):
        if not Path(str(vae_pre)).is_dir():
            _err(
                f"model.vae_pretrained: {vae_pre!r} is not a directory (run `python train.py experiment=vae_tiny` "
                "first)"
            )
        if not (Path(str(vae_pre)) / "config.json").is_file():
            _err(
                f"model.vae_pretrained: {vae_pre!r} has no config.json (allowed: an AutoencoderKLWan folder)"
            )
    _int(cfg, "model.text_len", 1)
    _bool(cfg, "model.train_text_encoder")
    _bool(cfg, "model.gradient_checkpointing")
    _num(cfg, "model.boundary_ratio", 0, 1, lo_open=True, hi_open=True, none_ok=True)
    _check(
        cfg,
        "model.transformer.patch_size",
        lambda v: isinstance(v, ListConfig) and len(v) == 3 and all(_is_int(x) and x >= 1 for x in v),
        "a list of 3 ints >= 1 (frames, height, width)",
    )
    _int(cfg, "model.transformer.num_layers", 1)


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
    _check(
        cfg,
        f"{at}.num_frames",
        lambda v: _is_int(v) and v >= 1 and (v - 1) % 4 == 0,
        "4k+1 (5, 9, 13, 17, ...)",
    )
    for key in ("height", "width"):
        _int(cfg, f"{at}.{key}", 16)
    # what the objective's networks can take
    target = str(_get(cfg, "objective._target_"))
    geometry = _geometry(cfg) if isinstance(cfg.get("model"), DictConfig) else None
    if target.endswith("EncoderModule") or geometry is None:  # the RankJump encoder takes any size
        return
    spatial, temporal, patch, _ = geometry
    uses_transformer = not target.endswith("VAEModule")
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


def _check_data(cfg: DictConfig) -> None:
    if not isinstance(cfg.get("data"), DictConfig):
        return
    for key in ("num_train", "num_val", "batch_size", "val_batch_size"):
        _int(cfg, f"data.{key}", 1)
    _int(cfg, "data.num_workers", 0)
    _bool(cfg, "data.cache_text")
    batch, n = _get(cfg, "data.batch_size"), _get(cfg, "data.num_train")
    if _is_int(batch) and _is_int(n) and batch > n:
        _err(f"data.batch_size: {batch} must be <= data.num_train={n} (the last partial batch is dropped)")
    # shard data (configs/data/shards.yaml)
    if _get(cfg, "data.train_shards") is None:
        _err(
            "data.train_shards: null; required: a brace pattern, glob, list of .tar shards or a pipe: URL "
            "(e.g. data.train_shards='data/rankjump/train-*.tar')"
        )
    for key in ("data.train_shards", "data.val_shards"):
        _check_shard_files(key, _get(cfg, key))
    _int(cfg, "data.shuffle_buffer", 0)
    _num(cfg, "data.max_bad_fraction", 0, 1)
    _int(cfg, "data.min_seen", 0)
    _int(cfg, "data.epoch_size", 1, none_ok=True)
    if _get(cfg, "data.num_frames") is not _MISSING:
        _check_clip_size(cfg, "data")
    # RankJump
    rj = _get(cfg, "data.rankjump")
    if rj is _MISSING and _get(cfg, "data.val_split") is _MISSING:
        return
    from dataclasses import fields

    from wan2.data.rankjump import EVENTS, PALETTE, SPLIT_SEED_BASE, RankJumpConfig  # numpy only

    _choice(cfg, "data.val_split", list(SPLIT_SEED_BASE))
    if not isinstance(rj, DictConfig):
        return
    known = [f.name for f in fields(RankJumpConfig)]
    for key in rj:
        if key not in known:
            _err(f"data.rankjump.{key}: not a RankJump setting (allowed: {known})")
    _int(cfg, "data.rankjump.fps", 1)
    _int(cfg, "data.rankjump.rows", 5, 8)
    _int(cfg, "data.rankjump.heldout_fraction", 1)
    _bool(cfg, "data.rankjump.labels")
    _bool(cfg, "data.rankjump.marks")
    colours = _check(
        cfg,
        "data.rankjump.colours",
        lambda v: isinstance(v, ListConfig) and len(v) > 0,
        f"a non-empty list of colours from {list(PALETTE)}",
    )
    for c in colours if isinstance(colours, ListConfig) else ():
        if c not in PALETTE:
            _err(f"data.rankjump.colours: {c!r} is not one of {list(PALETTE)}")
    mix = _check(
        cfg,
        "data.rankjump.mix",
        lambda v: isinstance(v, DictConfig),
        f"a mapping event -> weight over {list(EVENTS)}",
    )
    if isinstance(mix, DictConfig):
        for event in mix:
            if event not in EVENTS:
                _err(f"data.rankjump.mix.{event}: not an event (allowed: {list(EVENTS)})")
            _num(cfg, f"data.rankjump.mix.{event}", 0)
        if sum(mix.values()) <= 0:
            _err(f"data.rankjump.mix: {_show(mix)} must have weights >= 0 with a positive sum")
    _check_clip_size(cfg, "data.rankjump")


def _check_lora(cfg: DictConfig) -> None:
    _int(cfg, "lora.rank", 1)
    _num(cfg, "lora.alpha", 0, lo_open=True, none_ok=True)
    _num(cfg, "lora.dropout", 0, 1, hi_open=True)
    _choice(cfg, "lora.init", LORA_INITS)
    targets = _check(
        cfg,
        "lora.targets",
        lambda v: isinstance(v, str) and v != "",
        f"a preset {list(LORA_PRESETS)} or a regex over the transformer's module names",
    )
    if not isinstance(targets, str) or targets in LORA_PRESETS:
        return
    allowed = f"allowed: a preset {list(LORA_PRESETS)} or a regex matching Linear layers such as 'blocks.0.attn1.to_q'"
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
        _err(
            f"lora.targets: {targets!r} matches no module of the transformer (PEFT full-matches names); {allowed}"
        )
    bad = [n for n, ok in hits if not ok]
    if bad:
        _err(
            f"lora.targets: {targets!r} also matches {bad[0]!r}, which is not a Linear layer LoRA can wrap; {allowed}"
        )


def _check_objective(cfg: DictConfig) -> None:
    obj = cfg.get("objective")
    if not isinstance(obj, DictConfig):
        return
    o = "objective"
    _num(cfg, f"{o}.lr", 0, lo_open=True)
    _num(cfg, f"{o}.weight_decay", 0)
    _check(
        cfg,
        f"{o}.betas",
        lambda v: isinstance(v, ListConfig) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1)",
    )
    _int(cfg, f"{o}.warmup_steps", 0)
    _num(cfg, f"{o}.min_lr_ratio", 0, 1)
    _num(cfg, f"{o}.caption_dropout", 0, 1)
    _num(cfg, f"{o}.ema_decay", 0, 1, hi_open=True)
    _num(cfg, f"{o}.text_lr_scale", 0)
    _bool(cfg, f"{o}.train_text_encoder")
    _choice(cfg, f"{o}.loss_weighting", LOSS_WEIGHTINGS)
    _choice(cfg, f"{o}.timesteps.mode", TIMESTEP_MODES)
    _num(cfg, f"{o}.timesteps.shift", 0, lo_open=True)
    _num(cfg, f"{o}.timesteps.mean")
    _num(cfg, f"{o}.timesteps.std", 0, lo_open=True)
    lo = _num(cfg, f"{o}.timesteps.sigma_min", 0, 1)
    hi = _num(cfg, f"{o}.timesteps.sigma_max", 0, 1)
    if _is_num(lo) and _is_num(hi) and lo >= hi:
        _err(f"{o}.timesteps.sigma_min: {lo} must be < {o}.timesteps.sigma_max={hi}")
    _int(cfg, f"{o}.sample.num_inference_steps", 1)
    _num(cfg, f"{o}.sample.guidance_scale", 1)
    _int(cfg, f"{o}.sample.seed", 0, none_ok=True)
    # Wan2.2 A14B experts (flow matching and LoRA)
    expert = _choice(cfg, f"{o}.expert", EXPERTS, none_ok=True)
    if expert in ("low", "both") and isinstance(cfg.get("model"), DictConfig) and _num_experts(cfg) == 1:
        _err(
            f"{o}.expert: {expert!r} needs a two-expert model (model=wan22_t2v_a14b, model.boundary_ratio set, or a "
            "pretrained folder with transformer_2); this model has one transformer (allowed: null or 'high')"
        )
    # LoRA
    _bool(cfg, f"{o}.fuse")
    if "lora" in obj:
        _check_lora(cfg)
    # distillation: teacher_steps halves round by round down to student_steps
    _num(cfg, f"{o}.guidance_scale", 1)
    _int(cfg, f"{o}.cfg_steps", 0)
    _int(cfg, f"{o}.round_steps", 1)
    _int(cfg, f"{o}.dm_steps", 0)
    _num(cfg, f"{o}.dm_fake_lr_scale", 0)
    dm_teacher = obj.get("dm_teacher")
    if dm_teacher is not None and not (Path(str(dm_teacher)) / "model_index.json").is_file():
        _err(
            f"{o}.dm_teacher: {str(dm_teacher)!r} is not a diffusers export (no model_index.json; allowed: null "
            "or an export folder such as pretrained/wan_tiny_base)"
        )
    rng = obj.get("dm_sigma_range")
    if rng is not None and not (len(rng) == 2 and all(_is_num(v) for v in rng) and 0 < rng[0] < rng[1] <= 1):
        _err(
            f"{o}.dm_sigma_range: {list(rng)!r} must be two noise levels 0 < lo < hi <= 1 (e.g. [0.02, 0.98])"
        )
    teacher = _int(cfg, f"{o}.teacher_steps", 1)
    student = _int(cfg, f"{o}.student_steps", 1)
    if _is_int(teacher) and _is_int(student):
        n = teacher
        while n > student and n % 2 == 0:
            n //= 2
        if n != student:
            options = [student * 2**k for k in range(1, 5)]
            _err(
                f"{o}.teacher_steps: {teacher} must halve down to {o}.student_steps={student} "
                f"(allowed: {student} x a power of 2, e.g. {options})"
            )
    # VAE
    for key in ("kl_weight", "highlight_boost", "first_frame_weight"):
        _num(cfg, f"{o}.{key}", 0)
    _bool(cfg, f"{o}.freeze_encoder")
    # RankJump encoder
    for key in (
        "num_frames",
        "height",
        "width",
        "pool_width",
        "channels",
        "embed_dim",
        "text_dim",
        "text_layers",
        "text_heads",
        "text_len",
    ):
        _int(cfg, f"{o}.encoder.{key}", 1)
    dim, heads = _get(cfg, f"{o}.encoder.text_dim"), _get(cfg, f"{o}.encoder.text_heads")
    if _is_int(dim) and _is_int(heads) and dim % heads:
        _err(f"{o}.encoder.text_dim: {dim} must be a multiple of {o}.encoder.text_heads={heads}")


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
    ema, devices, nodes = (
        _get(cfg, "objective.ema_decay"),
        _get(cfg, "trainer.devices"),
        _get(cfg, "trainer.num_nodes"),
    )
    world = (devices if _is_int(devices) and devices >= 1 else 1) * (nodes if _is_int(nodes) else 1)
    if _is_num(ema) and ema > 0 and world > 1:
        _err(
            f"objective.ema_decay: {ema} needs whole weights, and trainer=fsdp shards them over {world} ranks "
            "(allowed with fsdp: 0 over several devices; trainer=ddp keeps the EMA)"
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
        _check_callbacks(cfg)
    except OmegaConfBaseException as err:  # e.g. an interpolation that does not resolve
        key = getattr(err, "full_key", None) or "config"
        _err(f"{key}: {str(err).strip().splitlines()[0]}")
