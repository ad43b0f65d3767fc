"""The plan itself: ``PlanInputs`` -> ``make_plan`` (a JSON-able dict) -> ``format_plan`` (a report)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from wan2.plan.flops import flops_per_step
from wan2.plan.inputs import Clip, GiB, MemoryPlan, Parallel, Precision, Trainable, TransformerShape
from wan2.plan.memory import Components, memory_per_gpu


@dataclass
class PlanInputs:
    shape: TransformerShape
    train: Trainable
    prec: Precision
    clip: Clip
    par: Parallel
    comps: Components
    ema: bool = False
    text_encoder_trains: bool = False
    text_cached: bool = False
    teacher_forwards: int = 0
    gpu_memory_gib: float = 80.0
    overhead_gib: float = 2.0
    gpu_tflops: float = 989.0  # dense bf16 peak of an H100 SXM
    mfu: float = 0.4
    label: str = ""
    notes: list = field(default_factory=list)
    checkpointing: bool = (
        False  # what the config runs (memory / model.gradient_checkpointing); both are planned
    )
    memory: MemoryPlan | None = None  # the memory group (None: today's defaults, frozen weights as stored)


def make_plan(inp: PlanInputs) -> dict:
    """The whole plan as a JSON-able dict: params, memory per GPU with and without checkpointing, FLOPs."""
    clip, shape, train = inp.clip, inp.shape, inp.train
    out = {
        "label": inp.label,
        "params": {
            "transformer": inp.comps.transformer,
            "text_encoder": inp.comps.text_encoder,
            "vae": inp.comps.vae,
            **({"teacher": inp.comps.teacher} if inp.comps.teacher else {}),
            **inp.comps.idle,
        },
        "trainable": {
            "kind": train.kind,
            "params": train.params + (inp.comps.text_encoder if inp.text_encoder_trains else 0),
            "share_of_transformer": train.params / inp.comps.transformer,
            **({"rank": train.rank, "roles": sorted(train.roles)} if train.kind == "lora" else {}),
        },
        "workload": {
            "frames": clip.frames,
            "height": clip.height,
            "width": clip.width,
            "batch_per_gpu": clip.batch,
            "latent": [clip.latent_channels, clip.latent_frames, *clip.latent_hw],
            "tokens_per_sample": clip.tokens,
            "text_len": clip.text_len,
        },
        "precision": asdict(inp.prec),
        "parallel": asdict(inp.par),
        "gpu_memory_gib": inp.gpu_memory_gib,
        "configured": "checkpointing" if inp.checkpointing else "no_checkpointing",
        "memory": asdict(inp.memory) if inp.memory is not None else None,
        "memory_gib": {},
        "fits": {},
        "flops": {},
        "seconds_per_step": {},
        "pcie_gb_per_step": {},
        "assumptions": {
            "gpu_tflops": inp.gpu_tflops,
            "mfu": inp.mfu,
            "overhead_gib": inp.overhead_gib,
            "attention": "flash / memory-efficient SDPA (no S x S matrix kept)",
        },
        "notes": list(inp.notes),
    }
    te_flops = 0 if inp.text_cached else inp.comps.text_encoder
    for ckpt in (False, True):
        key = "checkpointing" if ckpt else "no_checkpointing"
        mem = memory_per_gpu(
            shape,
            train,
            inp.prec,
            clip,
            inp.par,
            inp.comps,
            ckpt,
            ema=inp.ema,
            text_encoder_trains=inp.text_encoder_trains,
            overhead_gib=inp.overhead_gib,
            mem=inp.memory,
        )
        out["memory_gib"][key] = {k: round(v / GiB, 2) for k, v in mem["lines"].items()}
        out["memory_gib"][key]["activation_detail"] = {
            k: round(v / GiB, 2) for k, v in mem["activation_detail"].items()
        }
        out["fits"][key] = mem["lines"]["total"] <= inp.gpu_memory_gib * GiB
        fl = flops_per_step(shape, train, clip, ckpt, te_flops, inp.teacher_forwards)
        out["flops"][key] = {k: float(f"{v:.4g}") for k, v in fl.items()}
        out["flops"][key]["global_step_total"] = float(f"{fl['total'] * inp.par.world:.4g}")
        # block swap streams on a side stream one block ahead: overlapped with compute; activation offload's
        # copies are made in autograd's pack / unpack hooks: added
        compute = fl["total"] / (inp.gpu_tflops * 1e12 * inp.mfu)
        bw = (inp.memory.pcie_gbps if inp.memory is not None else 25.0) * 1e9
        tr = mem["transfer"]
        out["seconds_per_step"][key] = round(
            max(compute, tr["swap_h2d"] / bw) + 2 * tr["offload_each_way"] / bw, 2
        )
        out["pcie_gb_per_step"][key] = {k: round(v / 1e9, 2) for k, v in tr.items()}
    return out


def format_plan(plan: dict) -> str:
    """A human-readable report of ``make_plan``'s dict."""
    w = plan["workload"]
    par = plan["parallel"]
    lines = [
        f"plan: {plan['label']}" if plan["label"] else "plan",
        f"  clip {w['frames']} x {w['height']} x {w['width']}, batch {w['batch_per_gpu']} per GPU -> latent "
        f"{'x'.join(map(str, w['latent']))} -> {w['tokens_per_sample']:,} tokens per sample "
        f"(+ {w['text_len']} text tokens)",
        f"  precision {plan['precision']['name']}, {par['strategy']} on {par['world']} GPU(s)"
        + (f" ({par['sharding']} over {par['shard']})" if par["strategy"] == "fsdp" else ""),
        "  parameters:",
    ]
    for k, v in plan["params"].items():
        lines.append(f"    {k:<28}{_count(v):>12}")
    t = plan["trainable"]
    lines.append(
        f"    {'trainable (' + t['kind'] + ')':<28}{_count(t['params']):>12} = "
        f"{100 * t['share_of_transformer']:.2f}% of the transformer"
        + (f" (rank {t['rank']} on {', '.join(t['roles'])})" if t["kind"] == "lora" else "")
    )
    a, c = plan["memory_gib"]["no_checkpointing"], plan["memory_gib"]["checkpointing"]
    lines.append(f"  memory per GPU (GiB){'':<11}{'no ckpt':>10}{'ckpt':>10}")
    for k in a:
        if k == "activation_detail" or (not a[k] and not c[k]):
            continue
        lines.append(f"    {k:<28}{a[k]:>10.2f}{c[k]:>10.2f}")
    for key, name in (("no_checkpointing", "without"), ("checkpointing", "with")):
        fl = plan["flops"][key]
        mark = "*" if plan.get("configured") == key else " "
        lines.append(
            f"{mark} {name} gradient checkpointing: {fl['total'] / 1e12:,.1f} TFLOP per GPU per step "
            f"(~{plan['seconds_per_step'][key]} s at {plan['assumptions']['mfu']:.0%} of "
            f"{plan['assumptions']['gpu_tflops']:.0f} TFLOP/s); fits in {plan['gpu_memory_gib']:g} GiB: "
            f"{'yes' if plan['fits'][key] else 'no'} ({plan['memory_gib'][key]['total']:.1f} GiB)"
        )
    lines.append(
        "  (* what the config runs: memory.gradient_checkpointing, else model.gradient_checkpointing)"
    )
    m = plan.get("memory")
    if m:
        lines.append(
            f"  memory={m['name']}: frozen weights {m['frozen_bytes']} B"
            + (", fp8 block Linears" if m["fp8"] else "")
            + (f", {m['block_swap']} blocks swapped" if m["block_swap"] else "")
            + ("" if m["text_encoder_resident"] else ", text encoder off the GPU")
            + ("" if m["vae_resident"] else ", VAE off the GPU")
            + (", activations offloaded" if m["activation_offload"] else "")
            + f"; PCIe {m['pcie_gbps']:g} GB/s, per step (ckpt): "
            + ", ".join(f"{k} {v:g} GB" for k, v in plan["pcie_gb_per_step"]["checkpointing"].items())
        )
    for note in plan["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _count(n: int) -> str:
    """A parameter count as 5.000 B / 13.11 M / 86.0 k."""
    for unit, scale, digits in (("B", 1e9, 3), ("M", 1e6, 2), ("k", 1e3, 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return str(n)
