"""Plan a training run before launching it: parameters, memory per GPU, FLOPs per step, and whether it fits.

  python scripts/plan.py model=wan22_ti2v_5b objective=lora num_frames=121 height=480 width=832 batch_size=1 \\
      trainer.accelerator=gpu trainer.precision=bf16-mixed
  python scripts/plan.py model=wan22_ti2v_5b trainer.accelerator=gpu trainer.devices=8 +trainer.strategy=fsdp \\
      num_frames=121 height=704 width=1280 batch_size=1 --json out=plan.json

Arguments are Hydra overrides of ``configs/train.yaml`` (as for train.py; ``objective=lora`` or any ``lora=`` /
``lora.*`` override plans a LoRA run) plus the plan's own knobs:

  gpu_memory_gb=80   memory of one GPU, read as GiB      num_frames= height= width= batch_size=  (else from data)
  overhead_gb=2      CUDA context, NCCL, allocator slack gpu_tflops=989 mfu=0.4  (seconds per step estimate)
  --json             print the plan as JSON               out=FILE  also write the JSON there
  label=TEXT         name of the run in the report

Nothing is allocated: the model is built on the meta device. Formulas and their checks: docs/plan.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KNOBS = {
    "gpu_memory_gb": float,
    "overhead_gb": float,
    "num_frames": int,
    "height": int,
    "width": int,
    "batch_size": int,
    "gpu_tflops": float,
    "mfu": float,
    "out": str,
    "label": str,
}
KWARGS = {"gpu_memory_gb": "gpu_memory_gib", "overhead_gb": "overhead_gib", "num_frames": "frames"}


def split_args(argv: list[str]) -> tuple[dict, list[str], bool]:
    """(plan knobs, Hydra overrides, --json)."""
    knobs, overrides, as_json = {}, [], False
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg == "--json":
            as_json = True
        elif sep and key in KNOBS:
            try:
                knobs[key] = KNOBS[key](value)
            except ValueError:
                raise ValueError(
                    f"{key}: {value!r} is not a{'n' if KNOBS[key] is int else ''} {KNOBS[key].__name__}"
                ) from None
        else:
            overrides.append(arg)
    names = [a.lstrip("+~").partition("=")[0] for a in overrides]
    if any(n == "lora" or n.startswith("lora.") for n in names) and not any(
        n in ("objective", "experiment") for n in names
    ):
        overrides.append("objective=lora")
    return knobs, overrides, as_json


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import wan2.config_resolvers  # noqa: F401  (registers ${wan2.auto_precision:...} and friends)

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    try:
        knobs, overrides, as_json = split_args(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from train import check_group_overrides

    if (problem := check_group_overrides(overrides)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from wan2.backbones.stack import BackboneError
    from wan2.plan import PlanError, format_plan, plan_from_config

    try:
        cfg = compose(overrides)
        out = knobs.pop("out", None)
        kwargs = {KWARGS.get(k, k): v for k, v in knobs.items()}
        plan = plan_from_config(cfg, **kwargs)
    except (PlanError, BackboneError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as err:  # their messages span several lines
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        print(f"error: {first}", file=sys.stderr)
        return 2
    plan["command"] = " ".join(["python scripts/plan.py", *argv])
    text = json.dumps(plan, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text if as_json else format_plan(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
