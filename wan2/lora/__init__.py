"""LoRA adapters on the Wan transformer: target presets, diffusers-format save / checked load, fuse."""

from wan2.lora.adapters import (  # noqa: F401
    TARGET_PRESETS,
    LoraFileError,
    add_lora,
    check_lora_file,
    inspect_lora_file,
    lora_config,
    save_lora,
    target_regex,
)
