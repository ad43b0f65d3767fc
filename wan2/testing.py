"""Callbacks that exist for the tests (and for trying a failure by hand); no config of a real run uses them.

- ``FaultInjector``: poisons chosen steps (NaN inputs, an inf gradient) to check that a run survives them
  (tests/test_faults.py, docs/reliability.md);
- ``SampleIndexLog``: which dataset indices each rank trained on, step by step (a data-order audit,
  tests/test_distributed.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch


class FaultInjector(L.Callback):
    """Poison chosen steps to check that a run survives them (used by tests/test_faults.py).

    ``nan_input_steps``: every float tensor of the batch becomes NaN (a non-finite loss);
    ``nan_grad_steps``: one gradient becomes inf after backward (a non-finite gradient);
    ``rm_checkpoints_steps``: the checkpoint folder is deleted while the checkpoint of that step is being saved
    (after Lightning collected it, before the file is written);
    ``blowup_steps``: every weight is multiplied by 1e30 after that step's update (a diverged run whose huge
    but finite weights get checkpointed);
    ``hold_steps``: once that step's checkpoint is written, wait (up to ``hold_s``) until a stop is requested
    (SIGTERM / SIGUSR1) before the next batch: a test's signal then lands mid-training, never after the last
    step however slow the test is to send it.

        python train.py experiment=pretrain_tiny +callbacks.faults._target_=wan2.testing.FaultInjector \\
            +callbacks.faults.nan_input_steps=[10,11]
    """

    def __init__(
        self,
        nan_input_steps=(),
        nan_grad_steps=(),
        rm_checkpoints_steps=(),
        blowup_steps=(),
        hold_steps=(),
        hold_s: float = 120.0,
    ):
        self.nan_input_steps = {int(s) for s in nan_input_steps}
        self.hold_steps = {int(s) for s in hold_steps}
        self.hold_s = float(hold_s)
        self.nan_grad_steps = {int(s) for s in nan_grad_steps}
        self.rm_checkpoints_steps = {int(s) for s in rm_checkpoints_steps}
        self.blowup_steps = {int(s) for s in blowup_steps}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in self.blowup_steps:  # before ModelCheckpoint (it runs last) saves this step
            with torch.no_grad():
                for p in pl_module.parameters():
                    if p.requires_grad:
                        p.mul_(1e30)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.global_step in self.rm_checkpoints_steps and trainer.is_global_zero:
            import shutil

            self.rm_checkpoints_steps.discard(trainer.global_step)
            shutil.rmtree(trainer.checkpoint_callback.dirpath, ignore_errors=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.hold_steps:  # the previous step's checkpoint is on disk by now
            self.hold_steps.discard(trainer.global_step)
            deadline = time.monotonic() + self.hold_s
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.02)
        if trainer.global_step in self.nan_input_steps:
            for value in batch.values():
                if torch.is_tensor(value) and value.is_floating_point():
                    value.fill_(float("nan"))

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step in self.nan_grad_steps:
            p = next(p for p in pl_module.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("inf")


class SampleIndexLog(L.Callback):
    """Append ``{"rank", "epoch", "step", "index": [...]}`` per training batch to ``<dirpath>/rank<R>.jsonl``.

    Needs batches with ``index`` (RankJump and latent-cache data). Checks that every sample is seen once per
    epoch across ranks, and that N ranks see the global batch one process sees (tests/test_distributed.py):

        python train.py ... +callbacks.sample_log._target_=wan2.testing.SampleIndexLog \\
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
