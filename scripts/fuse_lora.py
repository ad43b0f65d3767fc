"""Bake LoRA files into a base export: a plain diffusers WanPipeline with the adapters merged into the weights.

    python scripts/fuse_lora.py --base pretrained/wan_tiny_base --lora pretrained/lora_rankup --out outputs/fused_rankup

The result loads and samples like any export (no PEFT at inference) and can be distilled:
``python train.py experiment=distill_4step model.pretrained=outputs/fused_rankup`` (docs/results.md: distilling
the fused model keeps the LoRA's motion at 4 steps; applying the base's LoRA to a student does not).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="a wan2 export / diffusers WanPipeline folder")
    p.add_argument("--lora", required=True, nargs="+", help="LoRA files or folders (export/lora)")
    p.add_argument("--scale", type=float, default=1.0, help="LoRA scale baked in")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from wan2.backbones.stack import BackboneError
    from wan2.export import export_pipeline
    from wan2.inference import Wan2T2V
    from wan2.lora.adapters import LoraFileError

    try:
        model = Wan2T2V.from_pretrained(args.base, lora=args.lora, lora_scales=args.scale)
    except (BackboneError, LoraFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    components = ["transformer"] + (["transformer_2"] if model.backbone.transformer_2 is not None else [])
    model.pipe.fuse_lora(components=components, lora_scale=1.0)  # the scale is already set per adapter
    model.pipe.unload_lora_weights()  # removes the adapter layers; the merged weights stay
    sampling = {k: v for k, v in model.backbone.extra.items() if k != "source"}
    export_pipeline(model.backbone, args.out, sampling=sampling)
    print(f"fused {len(args.lora)} LoRA(s) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
