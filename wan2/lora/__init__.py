"""LoRA adapters on the Wan transformer: target presets, diffusers-format save / checked load, fuse.

Names load on first use, so ``wan2.lora.config`` (the settings, torch-free) imports without PEFT or torch."""

_LAZY = {
    "TARGET_PRESETS": "wan2.backbones.wan_layout",
    "LoRAConfig": "wan2.lora.config",
    "LoraFileError": "wan2.lora.adapters",
    "add_lora": "wan2.lora.adapters",
    "check_lora_file": "wan2.lora.adapters",
    "inspect_lora_file": "wan2.lora.adapters",
    "lora_config": "wan2.lora.adapters",
    "save_lora": "wan2.lora.adapters",
    "target_regex": "wan2.lora.adapters",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wan2.lora' has no attribute {name!r}")
