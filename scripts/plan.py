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
  memory=NAME        a memory preset (configs/memory/: default, 24gb, 80gb); memory=auto plans every preset and
                     picks the fastest one that fits gpu_memory_gb
  pcie_gbps=25       host <-> GPU bandwidth per direction, GB/s (block swap, activation offload)

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
    "pcie_gbps": float,
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


def presets() -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / "memory").glob("*.yaml"))


def pick_memory(overrides: list[str], kwargs: dict) -> dict:
    """``memory=auto``: the plan of every preset; the one returned is the fastest (seconds per step, with the
    configured checkpointing; on a tie the one without fp8, then with fewer swapped blocks) that fits
    ``gpu_memory_gb``, with every candidate under ``memory_candidates``."""
    from wan2.config_resolvers import compose
    from wan2.plan import PlanError, plan_from_config

    plans, refused = {}, {}
    for name in presets():
        try:
            plans[name] = plan_from_config(
                compose([*overrides, f"memory={name}"]), memory_name=name, **kwargs
            )
        except PlanError as err:  # e.g. a bf16 preset under trainer.precision=32-true
            refused[name] = str(err)
    summary = {
        n: {
            "total_gib": p["memory_gib"][p["configured"]]["total"],
            "seconds_per_step": p["seconds_per_step"][p["configured"]],
            "fits": p["fits"][p["configured"]],
        }
        for n, p in plans.items()
    }
    fitting = [n for n in plans if summary[n]["fits"]]
    if not fitting:
        gib = kwargs.get("gpu_memory_gib", 80.0)
        best = min(plans, key=lambda n: summary[n]["total_gib"]) if plans else None
        raise PlanError(
            f"memory=auto: no preset fits {gib:g} GiB ("
            + ", ".join(f"{n}: {s['total_gib']:.1f} GiB" for n, s in summary.items())
            + (f"; smallest: {best}" if best else "")
            + ")"
            + "".join(f"; {n}: {e}" for n, e in refused.items())
        )
    # ties (block swap overlaps with compute): the one without fp8 (its quality cost), then fewer swapped blocks
    pick = min(
        fitting,
        key=lambda n: (
            summary[n]["seconds_per_step"],
            plans[n]["memory"]["fp8"],
            plans[n]["memory"]["block_swap"],
        ),
    )
    plan = plans[pick]
    plan["memory_candidates"] = {**summary, **{n: {"refused": e} for n, e in refused.items()}}
    plan["notes"].insert(
        0,
        f"memory=auto picked memory={pick}: "
        + "; ".join(
            f"{n} {s['total_gib']:.1f} GiB {s['seconds_per_step']} s/step {'fits' if s['fits'] else 'does not fit'}"
            for n, s in summary.items()
        )
        + "".join(f"; {n} refused ({e})" for n, e in refused.items()),
    )
    return plan


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    try:
        knobs, overrides, as_json = split_args(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    auto = "memory=auto" in overrides  # not a preset: plan each of configs/memory/*.yaml
    overrides = [o for o in overrides if o != "memory=auto"]
    sys.path.insert(0, str(ROOT))
    from train import check_group_overrides

    if (problem := check_group_overrides(overrides)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from wan2.backbones.stack import BackboneError
    from wan2.config_resolvers import compose
    from wan2.plan import PlanError, format_plan, plan_from_config

    out = knobs.pop("out", None)
    kwargs = {KWARGS.get(k, k): v for k, v in knobs.items()}
    try:
        if auto:
            plan = pick_memory(overrides, kwargs)
        else:
            cfg = compose(overrides)
            name = next((o.partition("=")[2] for o in overrides if o.startswith("memory=")), "default")
            plan = plan_from_config(cfg, memory_name=name, **kwargs)
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
