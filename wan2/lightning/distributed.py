"""What multi-device training needs beyond the trainer configs (``configs/trainer/ddp.yaml``, ``fsdp.yaml``).

- ``wan_block_classes``: FSDP's wrap policy, one sharded unit per diffusers ``WanTransformerBlock``;
- ``is_fsdp``: whether a ``trainer.strategy`` value selects FSDP (its checkpoints are sharded directories);
- ``SampleIndexLog``: which dataset indices each rank trained on, step by step (a data-order audit).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch


def wan_block_classes() -> set[type]:
    """``{WanTransformerBlock}``: FSDP's ``auto_wrap_policy`` (one sharded unit per diffusers transformer block)."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    return {WanTransformerBlock}


def is_fsdp(strategy) -> bool:
    """Whether a ``trainer.strategy`` value (a registry name, a ``_target_`` mapping or a strategy) is FSDP."""
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    if isinstance(strategy, Mapping):
        return str(strategy.get("_target_", "")).endswith("FSDPStrategy")
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


class SampleIndexLog(L.Callback):
    """Append ``{"rank", "epoch", "step", "index": [...]}`` per training batch to ``<dirpath>/rank<R>.jsonl``.

    Needs batches with ``index`` (RankJump and latent-cache data). Checks that every sample is seen once per
    epoch across ranks, and that N ranks see the global batch one process sees (tests/test_distributed.py):

        python train.py ... +callbacks.sample_log._target_=wan2.lightning.distributed.SampleIndexLog \\
            +callbacks.sample_log.dirpath=outputs/sample_log
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "index" not in batch:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        row = {
            "rank": trainer.global_rank,
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "index": torch.as_tensor(batch["index"]).tolist(),
        }
        with open(self.dirpath / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
