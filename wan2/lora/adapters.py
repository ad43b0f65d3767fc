"""PEFT LoRA on ``WanTransformer3DModel``, saved as diffusers ``pytorch_lora_weights.safetensors``.

Presets name where the adapter sits in each block:
- ``motion``: self-attention ``attn1`` only (attention across frames and positions: where motion lives);
- ``attention``: ``attn1`` + cross-attention ``attn2``;
- ``all``: attention + the feed-forward ``ffn``.
Anything else is taken as a user regex over module names (PEFT full-match).
"""

from __future__ import annotations

import json
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
    stock ``WanPipeline.load_lora_weights`` reads, plus ``adapter_config.json`` (PEFT) and ``wan2_lora.json``."""
    from diffusers import WanPipeline

    state = get_peft_model_state_dict(transformer)
    meta = config.to_dict()
    meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in meta.items()}

    def write(d: Path) -> None:
        WanPipeline.save_lora_weights(
            d, transformer_lora_layers=state, weight_name=WEIGHT_NAME, transformer_lora_adapter_metadata=meta
        )
        (d / "adapter_config.json").write_text(json.dumps(meta, indent=2, default=str))
        (d / "wan2_lora.json").write_text(json.dumps(extra or {}, indent=2))

    return atomic_dir(out_dir, write)


def lora_component(path: str | Path) -> str:
    """The pipeline component a LoRA file adapts: ``transformer_2`` for an A14B low-noise expert adapter (its
    ``wan2_lora.json`` says so; stock diffusers loads it with ``load_lora_weights(..., load_into_transformer_2=True)``),
    else ``transformer``."""
    path = Path(path)
    meta = (path if path.is_dir() else path.parent) / "wan2_lora.json"
    try:
        component = json.loads(meta.read_text()).get("component") if meta.is_file() else None
    except (OSError, ValueError, AttributeError):
        component = None
    return "transformer_2" if component == "transformer_2" else "transformer"


def check_lora_file(path: str | Path, transformer) -> dict[str, tuple[int, ...]]:
    """Refuse a file that is not a diffusers LoRA or whose shapes do not fit ``transformer`` (one-line errors)."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NAME
    if not path.is_file():
        raise LoraFileError(f"lora: {str(path)!r} does not exist")
    if path.suffix != ".safetensors":
        raise LoraFileError(f"lora: {str(path)!r} is not a .safetensors file (pickles are refused)")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # noqa: BLE001  (safetensors raises several kinds)
        raise LoraFileError(
            f"lora: {str(path)!r} is not a readable safetensors file ({type(err).__name__})"
        ) from err
    lora_keys = [k for k in shapes if re.search(r"\.lora_[AB]\.weight$", k)]
    if not lora_keys:
        raise LoraFileError(f"lora: {str(path)!r} holds no lora_A / lora_B weights: not a LoRA file")
    modules = dict(transformer.named_modules())
    for key in lora_keys:
        name = re.sub(r"^transformer\.", "", key).rsplit(".lora_", 1)[0]
        mod = modules.get(name) or modules.get(name + ".base_layer")
        base = getattr(mod, "base_layer", mod)
        if not isinstance(base, torch.nn.Linear):
            raise LoraFileError(f"lora: {str(path)!r} targets {name!r}, which this base model does not have")
        shape = shapes[key]
        want = base.in_features if ".lora_A." in key else base.out_features
        got = shape[1] if ".lora_A." in key else shape[0]
        if got != want:
            raise LoraFileError(
                f"lora: {str(path)!r} was made for a different base: {key} has shape {shape}, "
                f"this model's {name} needs {'in' if '.lora_A.' in key else 'out'}_features={want}"
            )
    return shapes
