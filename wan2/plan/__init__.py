"""Plan a training run before launching it: parameters, memory per GPU and FLOPs per step, by arithmetic.

Nothing here allocates a weight or touches Lightning: the model is read from its meta-device build (shapes only)
and every estimate is a plain formula of those shapes, the clip size, the batch, the precision and the parallel
layout. ``scripts/plan.py`` composes the Hydra config and prints the result; the formulas and what they leave out
are written down in ``docs/plan.md``, and ``tests/test_plan.py`` holds them against what a tiny model really
keeps alive on the CPU.

Memory per GPU, in bytes (``P``: parameters, ``t``: trainable parameters, ``N``: GPUs a parameter is sharded over):

- weights: ``P x param_bytes / N`` (fp32 under ``*-mixed``: the master copy) for the transformer, plus the frozen
  text encoder (sharded in FSDP's root unit, else replicated) and VAE;
- grads ``t x param_bytes / N``; AdamW moments ``2 t x param_bytes / N``; EMA shadow ``4 t`` (whole tensors);
- activations: what autograd keeps for the backward pass, counted tensor by tensor from
  ``WanTransformerBlock.forward`` (``block_activation_bytes``), plus the autocast bf16 copies of the weights
  that the backward pass needs, plus the largest backward transient; with gradient checkpointing the block
  inputs of every layer plus one recomputed block.

The ``memory`` group (``MemoryPlan``: frozen dtype, fp8, block swap, encoders off, activation offload, PCIe
bandwidth) changes these lines; docs/plan.md ("Memory presets") says how.

Modules: ``inputs`` (precision, parallel layout, transformer shapes, what trains, the clip), ``memory``,
``flops``, ``report`` (``make_plan`` / ``format_plan``) and ``from_config`` (a plan from a composed config).
"""

from wan2.plan.flops import flops_per_step
from wan2.plan.from_config import meta_stack, plan_from_config, plan_inputs
from wan2.plan.inputs import (
    FP32,
    Clip,
    GiB,
    MemoryPlan,
    Parallel,
    PlanError,
    Precision,
    Trainable,
    TransformerShape,
    describe_transformer,
    full_trainable,
    lora_trainable,
    parallel_from_trainer,
    precision,
)
from wan2.plan.memory import (
    Components,
    activation_memory,
    block_activation_bytes,
    block_cast_bytes,
    frozen_transformer_bytes,
    memory_per_gpu,
)
from wan2.plan.report import PlanInputs, format_plan, make_plan

__all__ = [
    "FP32",
    "Clip",
    "Components",
    "GiB",
    "MemoryPlan",
    "Parallel",
    "PlanError",
    "PlanInputs",
    "Precision",
    "Trainable",
    "TransformerShape",
    "activation_memory",
    "block_activation_bytes",
    "block_cast_bytes",
    "describe_transformer",
    "flops_per_step",
    "format_plan",
    "frozen_transformer_bytes",
    "full_trainable",
    "lora_trainable",
    "make_plan",
    "memory_per_gpu",
    "meta_stack",
    "parallel_from_trainer",
    "plan_from_config",
    "plan_inputs",
    "precision",
]
