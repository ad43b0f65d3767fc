"""Flow-matching training of the Wan transformer (pretraining or full fine-tuning).

The math is in ``wan2.diffusion``; this module wires data, text conditioning (with caption dropout for CFG),
EMA, validation by sampling held-out prompts and judging the motion, and the export.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch

from wan2.backbones.stack import WanBackbone
from wan2.compat import attached_trainer
from wan2.diffusion import (
    add_noise,
    bell_weight,
    draw_per_sample,
    rand_per_sample,
    randn_per_sample,
    sample_generators,
    sample_training_sigmas,
    velocity_target,
)
from wan2.diffusion.first_frame import first_frame_loss, paste_first_frame, token_timesteps
from wan2.diffusion.flow import NUM_TRAIN_TIMESTEPS
from wan2.lightning.compile import compile_for_training
from wan2.lightning.ema import EMA
from wan2.lightning.experts import expert_timesteps, experts_on, resolve_expert, routed_velocity
from wan2.lightning.flow_config import FlowMatchingConfig
from wan2.lightning.optim import adamw, warmup_cosine


def log_samples_to_loggers(loggers, sample_dir: Path, captions: list[str], step: int, limit: int = 8) -> None:
    """Contact sheet and the first ``limit`` mp4s to every logger that takes images / videos (W&B)."""
    for lg in loggers:
        if hasattr(lg, "log_image"):
            lg.log_image("samples/contact_sheet", [str(sample_dir / "contact_sheet.png")], step=step)
        videos = sorted(sample_dir.glob("*.mp4"))[:limit]
        if hasattr(lg, "log_video") and videos:
            lg.log_video(
                "samples/videos", [str(v) for v in videos], step=step, caption=captions[: len(videos)]
            )


class FlowMatchingModule(L.LightningModule):
    """Rectified-flow objective: predict u = eps - x0 at z_t = (1 - t) x0 + t eps."""

    Config = FlowMatchingConfig  # every setting, its default and its check

    def __init__(self, backbone: WanBackbone, cfg: FlowMatchingConfig | None = None, **settings):
        """``cfg``, or its fields as keywords (what Hydra's instantiate passes): one ``Config`` is built and
        checked from them, so no default here can disagree with the config."""
        super().__init__()
        cfg = self.cfg = self.Config.build(cfg, settings)
        self.backbone = backbone
        # Wan2.2 A14B: the expert(s) that train are submodules (checkpoints, EMA, device moves); an idle one is
        # frozen and left where it is (wan2.lightning.experts). One-transformer models: expert None.
        self.expert = resolve_expert(backbone, cfg.expert)
        self.transformer = backbone.transformer if self.expert in (None, "high", "both") else None
        self.transformer_2 = backbone.transformer_2 if self.expert in ("low", "both") else None
        for idle in (backbone.transformer, backbone.transformer_2):
            if idle is not None and idle is not self.transformer and idle is not self.transformer_2:
                idle.requires_grad_(False).eval()
        self.text_encoder = backbone.text_encoder
        self.save_hyperparameters(cfg.to_dict(), logger=False)  # wan2.tasks logs the config
        self.timestep_cfg = expert_timesteps(cfg.timesteps.to_dict(), self.expert, backbone.boundary_ratio)
        self.sample_cfg = cfg.sample.to_dict()
        if cfg.first_frame_p > 0:  # trained with per-token timesteps: the export continues a first frame
            backbone.expand_timesteps = True
        self.backbone.vae.requires_grad_(False).eval()
        self.text_encoder.requires_grad_(cfg.train_text_encoder)
        self.text_encoder.train(cfg.train_text_encoder)
        self.configure_trainable()
        self.ema = EMA(self._trainable(), cfg.ema_decay) if cfg.ema_decay > 0 else None
        self._empty_emb = None  # the embedding of "" for caption dropout with cached text (encoded once)
        self._compiled: dict[int, torch.nn.Module] = {}  # id(transformer) -> its compiled twin (``compiled``)

    def configure_trainable(self) -> None:
        """Hook: which transformer weights train (all here; adapters only in LoRAModule)."""

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        named = {
            f"{prefix}.{n}": p
            for prefix, m in self.trained_experts()
            for n, p in m.named_parameters()
            if p.requires_grad
        }
        if self.hparams.train_text_encoder:
            named |= {
                f"text_encoder.{n}": p for n, p in self.text_encoder.named_parameters() if p.requires_grad
            }
        return named

    # -- randomness per sample ------------------------------------------------------------------------
    def sample_rng(self, batch, stream: str) -> list[torch.Generator] | None:
        """One generator per sample keyed by (run seed, global step, dataset index, ``stream``), or None when
        the batch has no ``index`` (then the global RNG, which StepSeed reseeds per step and rank, draws).

        Keyed by sample, the draws do not depend on the world size: 1 process at batch 8 and 2 ranks at batch 4
        train on the same noise, so their losses and all-reduced gradients match (tests/test_distributed.py).
        """
        if "index" not in batch:
            return None
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # seed_everything's seed, as the data order uses
        return sample_generators(seed, self.global_step, torch.as_tensor(batch["index"]).tolist(), stream)

    def trained_experts(self) -> list[tuple[str, torch.nn.Module]]:
        """(name, transformer) of each transformer that trains: ``transformer`` and / or ``transformer_2``."""
        return [
            (n, m)
            for n, m in (("transformer", self.transformer), ("transformer_2", self.transformer_2))
            if m is not None
        ]

    def compiled(self, model: torch.nn.Module | None) -> torch.nn.Module | None:
        """``model``, or while training with ``objective.compile`` its ``torch.compile`` twin (made once, same
        weights, so the EMA swap and checkpoints see no difference); sampling and export run ``model`` eagerly."""
        if model is None or not (self.hparams.get("compile", False) and self.training):
            return model
        if id(model) not in self._compiled:
            self._compiled[id(model)] = compile_for_training(model)
        return self._compiled[id(model)]

    def velocity(
        self,
        zt: torch.Tensor,
        sigma: torch.Tensor,
        cond: torch.Tensor,
        first_frame: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, C, F', H', W') prediction at timestep 1000 sigma; when both A14B experts train, each sample goes to
        the expert of its sigma (``wan2.lightning.experts.routed_velocity``). ``first_frame`` (B,) bool: those
        samples' latent frame 0 is clean (timestep 0 on its tokens; per-token timesteps for the batch)."""
        timestep = None
        if first_frame is not None:
            timestep = token_timesteps(
                sigma * NUM_TRAIN_TIMESTEPS, zt.shape[-3:], self.backbone.patch_size, first_frame
            )  # (B, L)
        high, low = self.compiled(self.transformer), self.compiled(self.transformer_2)
        return routed_velocity(high, low, zt, sigma, cond, self.backbone.boundary_ratio, timestep)

    def first_frame_draw(self, batch, size: int) -> torch.Tensor | None:
        """(B,) bool: the samples conditioned on their first latent frame (share ``first_frame_p``), or None."""
        p = self.hparams.get("first_frame_p", 0.0)
        if p <= 0:
            return None
        gens = self.sample_rng(batch, "first_frame")
        u = rand_per_sample(gens) if gens is not None else torch.rand(size)  # (B,)
        return u < p

    # -- conditioning ---------------------------------------------------------------------------------
    def text_condition(self, batch) -> torch.Tensor:
        """(B, L, D) prompt embeddings; a ``caption_dropout`` share of captions becomes "" (for CFG)."""
        captions = list(batch["caption"])
        if self.training:
            gens = self.sample_rng(batch, "caption_dropout")
            u = rand_per_sample(gens) if gens is not None else torch.rand(len(captions))  # (B,)
            drop = u < self.hparams.caption_dropout
        else:
            drop = torch.zeros(len(captions), dtype=torch.bool)
        if "text_emb" in batch and not self.hparams.train_text_encoder:
            emb = batch["text_emb"]
            if self.hparams.caption_dropout > 0 and self.training:
                # "" encoded once (the text encoder is frozen here) and on every rank alike: under FSDP the
                # encoder is sharded, and a forward on only the ranks that dropped a caption would hang
                if self._empty_emb is None:
                    with torch.no_grad():
                        self._empty_emb = self.backbone.encode_prompts([""])
                emb = torch.where(drop.to(emb.device)[:, None, None], self._empty_emb.to(emb), emb)
            return emb
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        ids, mask = self.backbone.tokenize(captions)
        with torch.set_grad_enabled(self.hparams.train_text_encoder and self.training):
            return self.backbone.embed_tokens(ids.to(self.device), mask.to(self.device))

    def latents_of(self, batch) -> torch.Tensor:
        if "latents" in batch:
            return batch["latents"]
        with torch.no_grad():
            return self.backbone.encode_video(batch["video"])

    # -- training -------------------------------------------------------------------------------------
    def flow_loss(self, batch) -> torch.Tensor:
        x0 = self.latents_of(batch).float()  # (B, C, F', H', W')
        cond = self.text_condition(batch)
        noise_rng, sigma_rng = self.sample_rng(batch, "noise"), self.sample_rng(batch, "sigma")
        if noise_rng is None:
            noise = torch.randn_like(x0)
            sigma = sample_training_sigmas(x0.shape[0], **self.timestep_cfg)  # (B,)
        else:  # per sample, by dataset index: the same draws at any world size
            noise = randn_per_sample(x0.shape[1:], noise_rng).to(x0.device)  # (B, C, F', H', W')
            sigma = draw_per_sample(
                lambda g: sample_training_sigmas(1, generator=g, **self.timestep_cfg), sigma_rng
            )  # (B,)
        sigma = sigma.to(x0.device)
        zt = add_noise(x0, noise, sigma)
        first = self.first_frame_draw(batch, x0.shape[0])  # (B,) bool or None
        if first is not None:  # TI2V: the clean first latent frame, out of the loss
            first = first.to(x0.device)
            zt = paste_first_frame(zt, x0[:, :, :1], first)
        pred = self.velocity(zt, sigma, cond, first)
        per_sample = first_frame_loss(pred, velocity_target(x0, noise), first)  # (B,)
        if self.hparams.loss_weighting == "bell":
            per_sample = per_sample * bell_weight(sigma.cpu()).to(per_sample)
        return per_sample.mean()

    def training_step(self, batch, batch_idx):
        loss = self.flow_loss(batch)
        # sync_dist: the mean over all ranks, i.e. the loss of the global batch (equal batches per rank)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["caption"]), sync_dist=True)
        return loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # here, not in on_train_batch_end: checkpoint callbacks run before that hook. A step the
        # NonFiniteGuard skipped changed no weight, so the EMA does not move either.
        if self.ema is not None and not getattr(self, "skip_ema_update", False):
            self.ema.update()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # FSDP: the norm is over every rank's shard, which only the root FSDP module computes (Lightning's
        # precision plugin refuses algorithm "norm" there)
        from wan2.lightning.distributed import FSDP2Strategy, clip_grad_norm, is_fsdp

        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and is_fsdp(self.trainer.strategy):
            if isinstance(
                self.trainer.strategy, FSDP2Strategy
            ):  # DTensor gradients: the norm over all shards
                clip_grad_norm([p for g in optimizer.param_groups for p in g["params"]], gradient_clip_val)
            else:  # Lightning's FSDP1 FSDPStrategy
                self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def sharded_modules(self) -> list[torch.nn.Module]:
        """What ``trainer=fsdp`` shards per block: the transformer(s) that train."""
        return [m for _, m in self.trained_experts()]

    def configure_model(self) -> None:
        """``trainer=fsdp`` (``FSDP2Strategy``): shard the trained transformer(s) per ``WanTransformerBlock``.

        Lightning calls this once the process group and device mesh exist, before the optimizer is built and
        a checkpoint restored. The text encoder is sharded per ``UMT5Block`` (frozen or not); the small frozen
        VAE stays whole on every rank.
        """
        from wan2.backbones.wan_layout import wan_block_classes
        from wan2.lightning.distributed import FSDP2Strategy, shard_per_block

        trainer = attached_trainer(self)
        strategy = trainer.strategy if trainer is not None else None
        if not isinstance(strategy, FSDP2Strategy):
            return
        for m in self.sharded_modules():
            shard_per_block(m, wan_block_classes(), **strategy.fully_shard_kwargs())
        # the text encoder too, trained (its grads must be reduced) or frozen (umt5-xxl is 5.7 B parameters)
        from transformers.models.umt5.modeling_umt5 import UMT5Block

        shard_per_block(self.text_encoder, {UMT5Block}, **strategy.fully_shard_kwargs())
        if self.ema is not None:  # fully_shard replaced the parameters: follow the new ones
            if strategy.world_size > 1:
                raise RuntimeError(
                    f"objective.ema_decay: {self.ema.decay} needs whole weights, and trainer=fsdp shards them over "
                    f"{strategy.world_size} ranks; set objective.ema_decay=0 (trainer=ddp, or fsdp on 1 device, keep it)"
                )
            self.ema = EMA(self._trainable(), self.ema.decay)

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups: the trained transformer(s), and the text encoder when it trains."""
        groups = [
            {"params": [p for _, m in self.trained_experts() for p in m.parameters() if p.requires_grad]}
        ]
        if self.hparams.train_text_encoder:
            groups.append(
                {
                    "params": list(self.text_encoder.parameters()),
                    "lr": self.hparams.lr * self.hparams.text_lr_scale,
                }
            )
        return groups

    def configure_optimizers(self):
        opt = adamw(
            self.param_groups(),
            precision=str(self.trainer.precision),
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
            weight_decay=self.hparams.weight_decay,
        )
        total = max(1, int(self.trainer.max_steps if self.trainer.max_steps > 0 else 10_000))
        warm, floor = max(1, self.hparams.warmup_steps), self.hparams.min_lr_ratio

        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warm, total, floor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        # RNG state is not saved: wan2.lightning.reliability.StepSeed reseeds every training step
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint):
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])

    # -- validation: sample held-out prompts, judge the motion ----------------------------------------
    def ema_weights(self):
        import contextlib

        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    @torch.no_grad()
    def generate(self, captions: list[str], meta0: dict, seed: int, first_frames=None) -> torch.Tensor:
        """Videos (B, 3, F, H, W); ``first_frames`` (B, 3, H, W) in [-1, 1]: each continues its frame (TI2V)."""
        from wan2.sampling import encode_first_frame, sample_videos

        first = None if first_frames is None else encode_first_frame(self.backbone, first_frames)
        with experts_on(self.backbone, self.device):  # an idle A14B expert joins for sampling only
            return sample_videos(
                self.backbone,
                captions,
                num_frames=meta0["num_frames"],
                height=meta0["height"],
                width=meta0["width"],
                num_inference_steps=self.sample_cfg["num_inference_steps"],
                guidance_scale=self.sample_cfg["guidance_scale"],
                seed=seed,
                first_latents=first,
            )

    def validation_step(self, batch, batch_idx):
        from wan2.eval.judge import judge

        was = self.text_encoder.training
        self.text_encoder.eval()
        with self.ema_weights():
            # TI2V: validation continues each clip's real first frame (the board an app would send)
            boards = {}
            if self.hparams.get("first_frame_p", 0.0) > 0:
                boards["first_frames"] = batch["video"][:, :, 0]  # (B, 3, H, W)
            video = self.generate(
                batch["caption"], batch["meta"][0], seed=self.sample_cfg["seed"] + batch_idx, **boards
            )
        self.text_encoder.train(was and self.hparams.train_text_encoder)
        scores = judge(video, batch["meta"])  # rank_trajectory/*, colour/accuracy, flicker/score
        # "step": the optimizer step, as the samples below, QuickEval and the checkpoint (Lightning's own counter
        # for validation rows lags one behind it: metrics and samples of one validation sat one step apart)
        self.log_dict(
            {f"val/{k}": v for k, v in scores.items()} | {"step": float(self.global_step)},
            batch_size=len(batch["caption"]),
        )
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._save_samples(video, batch["caption"], batch["meta"])

    def _save_samples(self, video, captions, metas) -> None:
        from wan2.eval.report import save_samples

        out = Path(self.trainer.default_root_dir) / "samples" / f"step_{self.global_step:06d}"
        save_samples(video, captions, out, fps=metas[0].get("fps", 8))
        log_samples_to_loggers(self.loggers, out, captions, self.global_step)

    # -- export -----------------------------------------------------------------------------------------
    def export(self, out_dir: Path, datamodule=None) -> dict:
        """Write the EMA weights as a stock WanPipeline export; return held-out accuracy of the export."""
        from wan2.export import export_pipeline

        rj = datamodule.rj_cfg if datamodule is not None else None
        sampling = {
            "num_inference_steps": self.sample_cfg["num_inference_steps"],
            "guidance_scale": self.sample_cfg["guidance_scale"],
        }
        if rj is not None:
            sampling |= {
                "num_frames": rj.num_frames,
                "height": rj.height,
                "width": rj.width,
                "fps": rj.fps,
                "rows": rj.rows,
            }
        self.backbone.eval()
        with self.ema_weights():
            export_pipeline(self.backbone, out_dir, sampling=sampling)
        return {}
