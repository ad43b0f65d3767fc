"""Train the in-domain RankJump video-text encoder (``wan2.metrics.indomain``) CLIP-style; export ``export/encoder``."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from wan2.data.datasets import frames_to_video
from wan2.lightning.data import RankJumpDataModule
from wan2.lightning.encoder_config import EncoderObjectiveConfig
from wan2.lightning.optim import adamw, warmup_cosine
from wan2.metrics.indomain import EncoderConfig, RankJumpEncoder, contrastive_loss, save_encoder

log = logging.getLogger("wan2")


def content_key(meta: dict) -> tuple:
    """What a caption pins down about a clip: clips with the same key are all positives for each other."""
    return (meta["event"], meta["old_rank"], meta["new_rank"], meta["colour"])


def same_content(metas: list[dict]) -> torch.Tensor:
    """(B, B) bool: clip i and caption j describe the same event, ranks and colour."""
    keys = [content_key(m) for m in metas]
    return torch.tensor([[a == b for b in keys] for a in keys])


class RenderedOnce(Dataset):
    """A RankJump dataset rendered once into memory (uint8): later epochs cost no rendering."""

    def __init__(self, dataset):
        clips = [dataset.rj[i] for i in range(len(dataset))]
        self.frames = torch.from_numpy(np.stack([c.frames for c in clips]))  # (N, F, H, W, 3) uint8
        self.captions = [c.caption for c in clips]
        self.metas = [c.meta for c in clips]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        return {"video": frames_to_video(self.frames[i]), "caption": self.captions[i], "meta": self.metas[i]}


class RenderedOnceDataModule(RankJumpDataModule):
    """``RankJumpDataModule`` whose clips are rendered once at setup (the encoder revisits them many epochs)."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        log.info("rendering %d train + %d val RankJump clips once", len(self.train_set), len(self.val_set))
        self.train_set, self.val_set = RenderedOnce(self.train_set), RenderedOnce(self.val_set)


class EncoderModule(L.LightningModule):
    """Symmetric InfoNCE between clip and caption embeddings; same-content pairs in a batch are all positives."""

    Config = EncoderObjectiveConfig  # every setting, its default and its check

    def __init__(self, backbone=None, cfg: EncoderObjectiveConfig | None = None, **settings):
        super().__init__()
        cfg = self.cfg = self.Config.build(cfg, settings)
        self.save_hyperparameters(
            cfg.to_dict(), logger=False
        )  # wan2.tasks logs the config  # the Wan stack train() builds is not used here
        self.encoder = RankJumpEncoder(EncoderConfig(**cfg.encoder.to_dict()))

    def _step(self, batch) -> dict:
        v = self.encoder.encode_video(batch["video"])  # (B, D)
        t = self.encoder.encode_text(batch["caption"])  # (B, D)
        same = same_content(batch["meta"]).to(v.device)  # (B, B)
        loss = contrastive_loss(v, t, self.encoder.logit_scale, same)
        sim = v @ t.T  # (B, B)
        hit_v = same.gather(1, sim.argmax(1, keepdim=True)).float().mean()  # video -> caption retrieval
        hit_t = same.gather(1, sim.argmax(0).unsqueeze(1)).float().mean()  # caption -> video retrieval
        return {"loss": loss, "acc": 0.5 * (hit_v + hit_t), "temperature": 1 / self.encoder.logit_scale.exp()}

    def training_step(self, batch, batch_idx):
        out = self._step(batch)
        self.log_dict(
            {f"train/{k}": v for k, v in out.items()}, prog_bar=True, batch_size=len(batch["caption"])
        )
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        out = self._step(batch)
        out |= self.degradation_scores(batch)
        self.log_dict(
            {f"val/{k}": v for k, v in out.items()}, batch_size=len(batch["caption"]), sync_dist=True
        )
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._save_samples(batch)

    @torch.no_grad()
    def degradation_scores(self, batch) -> dict:
        """Text-video score (100 cos) with the right caption, a rolled caption, and for frozen / shuffled clips."""
        video, caps = batch["video"], batch["caption"]  # (B, 3, F, H, W)
        t = self.encoder.encode_text(caps)  # (B, D)
        g = torch.Generator().manual_seed(0)
        variants = {
            "tv_match": video,
            "tv_frozen": video[:, :, :1].expand_as(video),
            "tv_shuffled": video[:, :, torch.randperm(video.shape[2], generator=g)],
        }
        out = {k: 100 * (self.encoder.encode_video(x) * t).sum(1).mean() for k, x in variants.items()}
        v = self.encoder.encode_video(video)
        out["tv_mismatch"] = 100 * (v * t.roll(1, 0)).sum(1).mean()
        return out

    @torch.no_grad()
    def _save_samples(self, batch, n: int = 4) -> None:
        """``samples/step_N``: clips with their captions and text-video scores (contact sheet, mp4s)."""
        from wan2.eval.report import save_samples

        video, caps = batch["video"][:n], batch["caption"][:n]
        scores = 100 * (self.encoder.encode_video(video) * self.encoder.encode_text(caps)).sum(1)
        captions = [f"{c}  (RJ-TV {s:.1f})" for c, s in zip(caps, scores.tolist())]
        out = Path(self.trainer.default_root_dir) / "samples" / f"step_{self.global_step:06d}"
        save_samples(video, captions, out, fps=batch["meta"][0].get("fps", 8))

    def export(self, out_dir, datamodule=None) -> dict:
        """Write ``export/encoder`` (safetensors + encoder.json) for ``wan2.metrics.indomain.load_encoder``."""
        rj = datamodule.rj_cfg if datamodule is not None else None
        info = {
            "global_step": int(self.global_step),
            "data": {"num_train": datamodule.hparams.num_train, "mix": dict(rj.mix)} if rj else {},
        }
        save_encoder(self.encoder, Path(out_dir) / "encoder", info=info)
        return {}

    def configure_optimizers(self):
        opt = adamw(
            [{"params": list(self.encoder.parameters())}],
            precision=str(self.trainer.precision),
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )
        warm, total = max(1, self.hparams.warmup_steps), max(1, int(self.trainer.max_steps))
        floor = self.hparams.min_lr_ratio

        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warm, total, floor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
