"""PEFT LoRA on ``WanTransformer3DModel``, saved as diffusers ``pytorch_lora_weights.safetensors``.

Presets (``wan2.backbones.wan_layout.TARGET_PRESETS``) name where the adapter sits in each block:
- ``motion``: self-attention ``attn1`` only (attention across frames and positions: where motion lives);
- ``attention``: ``attn1`` + cross-attention ``attn2``;
- ``all``: attention + the feed-forward ``ffn``.
Anything else is taken as a user regex over module names (PEFT full-match).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from wan2.export import atomic_dir
from wan2.lora.config import TARGET_PRESETS, LoRAConfig

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class LoraFileError(ValueError):
    """A LoRA file that is not a LoRA, or was made for a different base."""


def target_regex(targets: str) -> str:
    """A preset name or a user regex; the regex must compile."""
    pattern = TARGET_PRESETS.get(targets, targets)
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(
            f"lora.targets: {targets!r} is neither a preset {sorted(TARGET_PRESETS)} nor a regex ({err})"
        ) from err
    return pattern


def lora_config(spec: LoRAConfig | None = None, **settings) -> LoraConfig:
    """PEFT ``LoraConfig`` for ``spec`` (or ``LoRAConfig`` fields as keywords; defaults from ``LoRAConfig``)."""
    spec = LoRAConfig.build(spec, settings)
    init_value = {"gaussian": "gaussian", "default": True, "true": True, True: True}.get(spec.init, spec.init)
    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha if spec.alpha is not None else spec.rank,
        lora_dropout=spec.dropout,
        target_modules=target_regex(spec.targets),
        init_lora_weights=init_value,
    )


def add_lora(transformer, config: LoraConfig, adapter_name: str = "default") -> int:
    """Freeze the transformer, add the adapter; returns the number of trainable parameters."""
    transformer.requires_grad_(False)
    try:
        transformer.add_adapter(config, adapter_name=adapter_name)
    except ValueError as err:
        if "not found in the base model" not in str(err):
            raise
        raise ValueError(
            f"lora.targets: {config.target_modules!r} matches no module of the transformer"
        ) from None
    n = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    if n == 0:
        raise ValueError(f"lora.targets: {config.target_modules!r} matches no module of the transformer")
    return n


def save_lora(transformer, out_dir: str | Path, config: LoraConfig, extra: dict | None = None) -> Path:
    """``out_dir/pytorch_lora_weights.safetensors`` (keys ``transformer.blocks.N....lora_A.weight``) that
    stock ``WanPipeline.load_lora_weights`` reads, plus ``adapter_config.json`` (PEFT), ``wan2_lora.json``
    and a model card ``README.md``. ``extra["base"]``: the base export this adapter was trained on."""
    from diffusers import WanPipeline

    from wan2.export import lora_card

    extra = dict(extra or {})
    extra["base"] = extra.get("base") or base_model_name(transformer)
    state = get_peft_model_state_dict(transformer)
    meta = config.to_dict()
    meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in meta.items()}
    meta["base_model_name_or_path"] = extra["base"]

    def write(d: Path) -> None:
        WanPipeline.save_lora_weights(
            d, transformer_lora_layers=state, weight_name=WEIGHT_NAME, transformer_lora_adapter_metadata=meta
        )
        (d / "adapter_config.json").write_text(json.dumps(meta, indent=2, default=str))
        (d / "wan2_lora.json").write_text(json.dumps(extra, indent=2))
        (d / "README.md").write_text(lora_card(extra, _base_meta(extra["base"])))

    return atomic_dir(out_dir, write)


def base_model_name(transformer) -> str:
    """Where the adapted transformer came from: the pipeline folder (or Hub name) it was loaded from, else
    its class with a note that the base was never saved (a randomly initialised model)."""
    name = getattr(transformer, "config", {}).get("_name_or_path")
    if name:
        return str(Path(name).parent if Path(name).name in ("transformer", "transformer_2") else name)
    return f"{type(transformer).__name__} (randomly initialised, not saved)"


def _base_meta(base: str) -> dict:
    """The base export's ``wan2.json`` (size, steps, guidance) for the card's load recipe; {} if unknown."""
    path = Path(base) / "wan2.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def lora_component(path: str | Path) -> str:
    """The pipeline component a LoRA file adapts: ``transformer_2`` for an A14B low-noise expert adapter (its
    ``wan2_lora.json`` says so; stock diffusers loads it with ``load_lora_weights(..., load_into_transformer_2=True)``),
    else ``transformer``."""
    path = Path(path)
    meta = (path if path.is_dir() else path.parent) / "wan2_lora.json"
    try:
        component = json.loads(meta.read_text()).get("component") if meta.is_file() else None
    except (OSError, ValueError, AttributeError, RecursionError):
        component = None  # check_lora_file reports an unreadable wan2_lora.json
    return "transformer_2" if component == "transformer_2" else "transformer"


# What a wan2 / diffusers LoRA file may hold: float tensors under ``transformer.<module>.lora_[AB].weight``.
_KEY = re.compile(r"^transformer\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
# LoraConfig options that need tensors this loader does not check, or that rewrite the base weights on load.
_PLAIN_LORA = {
    "peft_type": ("LORA", None),
    "use_dora": (False, None),
    "lora_bias": (False, None),
    "modules_to_save": (None, []),
    "layer_replication": (None, []),
    "trainable_token_indices": (None, {}, []),
    "init_lora_weights": (True, False, "gaussian", None),
}


def _lora_weight_file(path: str | Path) -> Path:
    """The ``.safetensors`` file a LoRA path names (a folder holds ``pytorch_lora_weights.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NAME
    if not path.is_file():
        raise LoraFileError(f"lora: {str(path)!r} does not exist (or is not a file)")
    if path.suffix != ".safetensors":
        raise LoraFileError(f"lora: {str(path)!r} is not a .safetensors file (pickles are refused)")
    size = path.stat().st_size
    with path.open("rb") as fh:  # the header length, checked before any parser sees the file
        head = fh.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if n < 0:
        raise LoraFileError(
            f"lora: {str(path)!r} is {size} bytes: empty or truncated, not a safetensors file"
        )
    if n > _MAX_HEADER or n > size - 8:
        raise LoraFileError(
            f"lora: {str(path)!r} is not a safetensors file or is truncated: its header claims {n} bytes, "
            f"the file has {size}"
        )
    return path


def _metadata_configs(path: Path, file_meta: dict | None) -> list[tuple[str, dict]]:
    """The LoRA settings each metadata source states: the safetensors ``lora_adapter_metadata`` (what diffusers
    builds its LoraConfig from), ``adapter_config.json`` and ``wan2_lora.json`` next to the file."""
    sources = []
    raw = (file_meta or {}).get("lora_adapter_metadata")
    if raw:
        try:
            meta = json.loads(raw)
        except (ValueError, RecursionError) as err:
            raise LoraFileError(
                f"lora: {str(path)!r}: lora_adapter_metadata is not valid JSON ({err})"
            ) from None
        if not isinstance(meta, dict):
            raise LoraFileError(f"lora: {str(path)!r}: lora_adapter_metadata is not a JSON object")
        # diffusers keeps the "transformer." entries and builds LoraConfig(**them) (LoraConfig() when none)
        cfg = {k.removeprefix("transformer."): v for k, v in meta.items() if k.startswith("transformer.")}
        sources.append(("lora_adapter_metadata", cfg))
    for name, rank_key in (("adapter_config.json", "r"), ("wan2_lora.json", "rank")):
        f = path.parent / name
        if not f.is_file():
            continue
        try:
            cfg = json.loads(f.read_bytes())
        except (OSError, ValueError, RecursionError) as err:
            raise LoraFileError(
                f"lora: {str(path)!r}: {name} next to it is not valid JSON ({type(err).__name__})"
            ) from None
        if not isinstance(cfg, dict):
            raise LoraFileError(f"lora: {str(path)!r}: {name} next to it is not a JSON object")
        if rank_key in cfg or name == "adapter_config.json":
            sources.append((name, {"r": cfg.get(rank_key, 8), **{k: v for k, v in cfg.items() if k != "r"}}))
    return sources


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_config(path: Path, source: str, cfg: dict) -> None:
    """Refuse metadata diffusers / PEFT would turn into a traceback, a rewritten base or a non-finite scale."""
    where = f"lora: {str(path)!r}: {source}"
    r = cfg.get("r", 8)
    if not (_is_num(r) and r == int(r) and r >= 1):
        raise LoraFileError(f"{where}: r={r!r} is not a positive integer rank")
    alpha = cfg.get("lora_alpha", 8)
    if not _is_num(alpha):
        raise LoraFileError(f"{where}: lora_alpha={alpha!r} is not a finite number")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = cfg.get(key) or {}
        if not isinstance(pattern, dict) or not all(_is_num(v) for v in pattern.values()):
            raise LoraFileError(f"{where}: {key} must map module names to finite numbers")
    if source == "wan2_lora.json":
        return
    for key, allowed in _PLAIN_LORA.items():
        if key in cfg and cfg[key] not in allowed:
            raise LoraFileError(f"{where}: {key}={cfg[key]!r} is not a plain LoRA (allowed {list(allowed)})")
    if source == "lora_adapter_metadata":
        try:
            LoraConfig(**cfg)
        except Exception as err:  # noqa: BLE001  (unknown keys: TypeError; bad values: ValueError)
            msg = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise LoraFileError(f"{where}: not a valid LoraConfig ({msg})") from None


def _rank_from(cfg: dict, module: str) -> int:
    """The rank ``cfg`` gives ``module``: a matching ``rank_pattern`` entry (PEFT's suffix match), else ``r``."""
    for pattern, r in (cfg.get("rank_pattern") or {}).items():
        try:
            if re.fullmatch(rf"(.*\.)?{pattern.lstrip('^')}", module):
                return int(r)
        except re.error:
            continue
    return int(cfg.get("r", 8))


def inspect_lora_file(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Everything about a LoRA file that needs no model, checked before one loads (one line naming the file
    and key): readable header of a sane size, only ``transformer.<module>.lora_[AB].weight`` keys, float 2-D
    tensors, lora_A and lora_B of one rank per module, a rank and settings the metadata agrees with, finite
    values. Returns ``{key: shape}``."""
    path = _lora_weight_file(path)
    name = repr(str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            file_meta = f.metadata()
            slices = {k: f.get_slice(k) for k in f.keys()}
            shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
            dtypes = {k: s.get_dtype() for k, s in slices.items()}
    except Exception as err:  # noqa: BLE001  (safetensors raises several kinds)
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        raise LoraFileError(
            f"lora: {name} is not a readable safetensors file ({type(err).__name__}: {detail})"
        ) from None
    if not any(_KEY.match(k) for k in shapes):
        raise LoraFileError(f"lora: {name} holds no transformer.*.lora_A / lora_B weights: not a LoRA file")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key in sorted(shapes):
        m = _KEY.match(key)
        if m is None:
            raise LoraFileError(
                f"lora: {name}: key {key!r} is not a transformer.<module>.lora_A/lora_B.weight (diffusers LoRA)"
            )
        if dtypes[key] not in _FLOAT_DTYPES:
            raise LoraFileError(f"lora: {name}: {key} has dtype {dtypes[key]}, a LoRA weight is float")
        if len(shapes[key]) != 2:
            raise LoraFileError(f"lora: {name}: {key} has shape {shapes[key]}, a LoRA weight is a 2-D matrix")
        pairs.setdefault(m["module"], {})[m["ab"]] = shapes[key]
    configs = _metadata_configs(path, file_meta)
    for source, cfg in configs:
        _check_config(path, source, cfg)
    for module, ab in pairs.items():
        if "A" not in ab or "B" not in ab:
            have, lack = ("A", "B") if "A" in ab else ("B", "A")
            raise LoraFileError(
                f"lora: {name}: transformer.{module}.lora_{have}.weight has no lora_{lack}.weight: half an adapter"
            )
        rank = ab["A"][0]  # A (rank, in_features), B (out_features, rank)
        if ab["B"][1] != rank:
            raise LoraFileError(
                f"lora: {name}: transformer.{module}.lora_B.weight has rank {ab['B'][1]}, "
                f"its lora_A.weight rank {rank}"
            )
        for source, cfg in configs:
            said = _rank_from(cfg, module)
            if said != rank:
                raise LoraFileError(
                    f"lora: {name}: transformer.{module}.lora_A.weight has rank {rank}, {source} says {said}"
                )
    with safe_open(str(path), framework="pt") as f:  # values last: one tensor in memory at a time
        for key in sorted(shapes):
            if not bool(torch.isfinite(f.get_tensor(key)).all()):
                raise LoraFileError(f"lora: {name}: {key} holds NaN or Inf values; refused")
    return shapes


def check_lora_file(path: str | Path, transformer) -> dict[str, tuple[int, ...]]:
    """``inspect_lora_file``, then the fit to ``transformer``: every key names one of its Linear layers, with
    that layer's in_features (lora_A) and out_features (lora_B). Returns ``{key: shape}``."""
    shapes = inspect_lora_file(path)
    name = repr(str(_lora_weight_file(path)))
    modules = dict(transformer.named_modules())
    for key in sorted(shapes):
        m = _KEY.match(key)
        module, ab = m["module"], m["ab"]
        mod = modules.get(module) or modules.get(module + ".base_layer")
        base = getattr(mod, "base_layer", mod)
        if not isinstance(base, torch.nn.Linear):
            raise LoraFileError(
                f"lora: {name}: {key} targets {module!r}, which this base model does not have"
            )
        want = base.in_features if ab == "A" else base.out_features
        got = shapes[key][1] if ab == "A" else shapes[key][0]
        if got != want:
            raise LoraFileError(
                f"lora: {name} was made for a different base: {key} has shape {shapes[key]}, "
                f"this model's {module} needs {'in' if ab == 'A' else 'out'}_features={want}"
            )
    return shapes
