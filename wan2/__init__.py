"""wan2: train, fine-tune, distil, evaluate and export Wan 2.x text-to-video models.

``from wan2 import Wan2T2V`` loads the generation API on first use, so ``import wan2`` stays light.
"""

_LAZY = {
    "Wan2T2V": "wan2.inference",
    "GeneratedVideo": "wan2.inference",
    "save_video": "wan2.inference",
    "assign_variant": "wan2.rollout",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wan2' has no attribute {name!r}")
