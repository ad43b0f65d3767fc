"""In-loop quick evaluation: the cheap metrics (RankJump reader, VBench flicker) on a few prompts every N steps.

Validation (``FlowMatchingModule.validation_step``) already samples and judges the validation set on every rank;
this callback is the lighter, more frequent probe. It runs on global rank 0 only and is barrier-free: no
collective, no ``self.log`` sync; the other ranks do nothing here (they go on to the next step and only meet
rank 0 again at the next gradient all-reduce, as with any rank-0-only work).
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time

import lightning as L
import torch


class QuickEval(L.Callback):
    """Every ``every_n_steps`` optimizer steps (rank 0): sample ``num_prompts`` RankJump prompts of ``split``
    with ``num_inference_steps`` steps and log the one judge's keys (``wan2.eval.judge``) under ``quick_eval/``:
    ``quick_eval/rank_trajectory/accuracy``, ``quick_eval/colour/accuracy``, ``quick_eval/flicker/score``, ..."""

    def __init__(
        self,
        every_n_steps: int = 200,
        num_prompts: int = 4,
        num_inference_steps: int = 10,
        guidance_scale: float | None = None,
        split: str = "heldout",
        seed: int = 0,
    ):
        self.every_n_steps, self.num_prompts, self.split, self.seed = every_n_steps, num_prompts, split, seed
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step  # once per optimizer step, also with gradient accumulation
        from wan2.lightning.distributed import FSDP2Strategy

        # FSDP2: every rank samples (each forward gathers shards from all ranks); rank 0 logs
        sharded = isinstance(trainer.strategy, FSDP2Strategy)
        if not hasattr(pl_module, "backbone") or not (trainer.is_global_zero or sharded):
            return
        metrics = self.evaluate(pl_module, getattr(trainer.datamodule, "rj_cfg", None))
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    @torch.no_grad()
    def evaluate(self, pl_module, rj_cfg=None) -> dict[str, float]:
        """Sample the prompts with the module's (EMA) weights in eval mode, then restore every train flag."""
        from wan2.data.rankjump import RankJump, RankJumpConfig
        from wan2.eval.judge import judge
        from wan2.sampling import sample_videos
        from wan2.sampling_config import SAMPLE_DEFAULTS

        rj = RankJump(rj_cfg or RankJumpConfig(), self.split, self.num_prompts)
        clips = [rj[i] for i in range(self.num_prompts)]
        guidance = self.guidance_scale
        if guidance is None:
            guidance = getattr(pl_module, "sample_cfg", {}).get(
                "guidance_scale", SAMPLE_DEFAULTS.guidance_scale
            )
        flags = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        ema = getattr(pl_module, "ema_weights", None)
        try:
            with ema() if ema is not None else contextlib.nullcontext():
                video = sample_videos(
                    pl_module.backbone,
                    [c.caption for c in clips],
                    num_frames=rj.cfg.num_frames,
                    height=rj.cfg.height,
                    width=rj.cfg.width,
                    num_inference_steps=self.num_inference_steps,
                    guidance_scale=guidance,
                    seed=self.seed,
                )  # (B, 3, F, H, W) in [-1, 1]
        finally:
            for m, was in flags.items():
                m.training = was
        return {f"quick_eval/{k}": v for k, v in judge(video, [c.meta for c in clips]).items()}


class TextProgress(L.Callback):
    """One plain line every ``every_n_steps`` optimizer steps (rank 0) when stdout is not a terminal (CI, SLURM
    logs), where a progress bar prints nothing useful: ``step 40/800 loss 0.1234 2.31 it/s ETA 0:05:29``."""

    def __init__(self, every_n_steps: int = 50, only_without_terminal: bool = True):
        self.every_n_steps, self.only_without_terminal = every_n_steps, only_without_terminal
        self._start: tuple[float, int] | None = None  # (time, step) of the first batch of this fit
        self._last_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        if not trainer.is_global_zero or (self.only_without_terminal and sys.stdout.isatty()):
            return
        start_time, start_step = self._start or (time.perf_counter(), step)
        rate = (step - start_step) / max(time.perf_counter() - start_time, 1e-9)  # optimizer steps per second
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        parts = [f"step {step}/{trainer.max_steps}" if trainer.max_steps > 0 else f"step {step}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        parts.append(f"{rate:.2f} it/s")
        if trainer.max_steps > 0 and rate > 0:
            parts.append(f"ETA {datetime.timedelta(seconds=round((trainer.max_steps - step) / rate))}")
        print(" ".join(parts), flush=True)
