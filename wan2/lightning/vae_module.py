"""Train the Wan VAE (AutoencoderKLWan) on RankJump clips: weighted reconstruction + KL."""

from __future__ import annotations

import lightning as L
import torch

from wan2.backbones.stack import WanBackbone
from wan2.lightning.optim import adamw
from wan2.lightning.vae_config import VAEConfig


def highlight_weight(video: torch.Tensor, boost: float, first_frame: float) -> torch.Tensor:
    """Per-pixel loss weight (B, 1, F, H, W): saturated pixels (the highlight) and the first frame count more.

    Plain MSE lets the small coloured row fade to gray; the causal VAE encodes frame 0 alone and drops it
    unless up-weighted (feasibility notes).
    """
    x = (video + 1) * 0.5  # (B, 3, F, H, W) in [0, 1]
    sat = x.amax(1, keepdim=True) - x.amin(1, keepdim=True)  # (B, 1, F, H, W)
    w = 1.0 + boost * (sat > 0.3).float()
    w[:, :, 0] *= first_frame
    return w


class VAEModule(L.LightningModule):
    """Reconstruction (weighted L1 + MSE) plus a small KL on the diagonal Gaussian posterior."""

    Config = VAEConfig  # every setting, its default and its check

    def __init__(self, backbone: WanBackbone, cfg: VAEConfig | None = None, **settings):
        super().__init__()
        cfg = self.cfg = self.Config.build(cfg, settings)
        self.backbone = backbone
        self.vae = backbone.vae
        if (
            cfg.freeze_encoder
        ):  # decoder-only fine-tuning keeps the latent space (and every cache / base on it)
            for m in (self.vae.encoder, self.vae.quant_conv):
                m.requires_grad_(False)
        self.save_hyperparameters(cfg.to_dict(), logger=False)  # wan2.tasks logs the config

    def forward(self, video: torch.Tensor):
        post = self.vae.encode(video).latent_dist
        z = post.sample()
        recon = self.vae.decode(z, return_dict=False)[0]
        return recon, post

    def _losses(self, video: torch.Tensor) -> dict:
        recon, post = self(video)
        w = highlight_weight(video, self.hparams.highlight_boost, self.hparams.first_frame_weight)
        err = recon - video
        rec = (w * (err.abs() + err.pow(2))).mean()
        kl = post.kl().mean() / video[0].numel()
        psnr = -10 * torch.log10(((recon.clamp(-1, 1) - video) / 2).pow(2).mean().clamp_min(1e-10))
        return {"loss": rec + self.hparams.kl_weight * kl, "rec": rec, "kl": kl, "psnr": psnr}

    def training_step(self, batch, batch_idx):
        out = self._losses(batch["video"])
        self.log_dict(
            {f"train/{k}": v for k, v in out.items()}, prog_bar=True, batch_size=len(batch["video"])
        )
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        out = self._losses(batch["video"]) | self.judge_reconstructions(batch)
        self.log_dict(  # "step": the optimizer step (as FlowMatchingModule's validation)
            {f"val/{k}": v for k, v in out.items()} | {"step": float(self.global_step)},
            batch_size=len(batch["video"]),
            sync_dist=True,
        )
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._save_samples(batch)

    @torch.no_grad()
    def _save_samples(self, batch, n: int = 4) -> None:
        """``samples/step_N``: clips and their reconstructions (contact sheet rows: originals, then recons)."""
        from pathlib import Path

        from wan2.eval.report import save_samples

        video = batch["video"][:n]
        recon = self.vae.decode(self.vae.encode(video).latent_dist.mode(), return_dict=False)[0].clamp(-1, 1)
        caps = batch["caption"][:n]
        captions = [f"original: {c}" for c in caps] + [f"reconstruction: {c}" for c in caps]
        out = Path(self.trainer.default_root_dir) / "samples" / f"step_{self.global_step:06d}"
        save_samples(torch.cat([video, recon]), captions, out, fps=batch["meta"][0].get("fps", 8))

    @torch.no_grad()
    def judge_reconstructions(self, batch) -> dict[str, float]:
        """The one judge (``wan2.eval.judge``) on VAE round trips: does the reader still find each clip's
        trajectory and colour? The same keys on every rank (no per-event keys: the log is ``sync_dist``)."""
        from wan2.eval.judge import judge

        z = self.vae.encode(batch["video"]).latent_dist.mode()
        recon = self.vae.decode(z, return_dict=False)[0]  # (B, 3, F, H, W)
        return judge(recon, batch["meta"], per_event=False)

    def export(self, out_dir, datamodule=None) -> dict:
        """Fit the latent statistics on training clips, then write ``export/vae`` (diffusers format)."""
        from wan2.export import export_vae

        if not self.hparams.freeze_encoder:  # a frozen encoder keeps the statistics the base was trained on
            self.fit_latent_stats(datamodule.train_dataloader())
        export_vae(self.vae, out_dir / "vae")
        return {}

    def configure_optimizers(self):
        opt = adamw(
            [{"params": [p for p in self.vae.parameters() if p.requires_grad]}],
            precision=str(self.trainer.precision),
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )
        warm = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def fit_latent_stats(self, loader, max_batches: int = 20) -> None:
        """Per-channel mean / std of the posterior mode over some batches, into the VAE config.

        WanPipeline normalises latents with these, so the denoiser sees roughly unit-variance inputs.
        """
        zs = []
        self.vae.eval()
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            zs.append(self.vae.encode(batch["video"].to(self.device)).latent_dist.mode().float())
        z = torch.cat(zs)  # (N, C, F', H', W')
        mean = z.mean(dim=(0, 2, 3, 4))
        std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
        self.vae.register_to_config(
            latents_mean=[round(v, 6) for v in mean.tolist()], latents_std=[round(v, 6) for v in std.tolist()]
        )
