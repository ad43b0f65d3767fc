"""LoRA fine-tuning: flow matching on a frozen base with PEFT adapters on the transformer."""

from __future__ import annotations

from pathlib import Path

from wan2.lightning.flow_module import FlowMatchingModule
from wan2.lora import add_lora, lora_config, save_lora


class LoRAModule(FlowMatchingModule):
    """Adapters only: base transformer, text encoder and VAE stay frozen; export is a diffusers LoRA file.

    ``expert`` picks the Wan2.2 A14B expert to adapt: ``high`` (transformer, sigma >= boundary) or ``low``
    (transformer_2, sigma < boundary); single-transformer models use ``high``.
    """

    def __init__(self, backbone, lora: dict | None = None, expert: str = "high", fuse: bool = False, **kwargs):
        self.lora_spec = {"rank": 16, "alpha": None, "dropout": 0.0, "targets": "motion", "init": True, **(lora or {})}
        self.expert = expert
        kwargs["train_text_encoder"] = False
        if expert not in ("high", "low"):
            raise ValueError(f"objective.expert: {expert!r} is not one of high, low")
        if backbone.boundary_ratio is not None:
            ts = dict(kwargs.get("timesteps") or {})
            b = float(backbone.boundary_ratio)
            ts |= {"sigma_min": b, "sigma_max": 1.0} if expert == "high" else {"sigma_min": 0.0, "sigma_max": b}
            kwargs["timesteps"] = ts
            if expert == "low":
                backbone.transformer, backbone.transformer_2 = backbone.transformer_2, backbone.transformer
        super().__init__(backbone, **kwargs)
        self.save_hyperparameters(ignore=["backbone"])

    def configure_trainable(self) -> None:
        self.peft_config = lora_config(**self.lora_spec)
        self.num_trainable = add_lora(self.transformer, self.peft_config)
        self.num_base = sum(p.numel() for n, p in self.transformer.named_parameters() if "lora_" not in n)

    def on_fit_start(self) -> None:
        share = 100.0 * self.num_trainable / self.num_base
        self.print(f"LoRA {self.lora_spec['targets']} rank {self.lora_spec['rank']}: {self.num_trainable:,} trainable "
                   f"parameters = {share:.2f}% of the transformer ({self.num_base:,})")

    def export(self, out_dir: Path, datamodule=None) -> dict:
        """``export/lora/pytorch_lora_weights.safetensors`` (EMA weights); ``fuse=True`` adds ``export/fused``."""
        extra = {"targets": self.lora_spec["targets"], "rank": self.lora_spec["rank"], "expert": self.expert,
                 "trainable_params": self.num_trainable, "transformer_params": self.num_base,
                 "base": self.backbone.extra.get("source")}
        self.backbone.eval()
        with self.ema_weights():
            save_lora(self.transformer, out_dir / "lora", self.peft_config, extra=extra)
            if self.hparams.fuse:
                self._export_fused(out_dir / "fused", datamodule)
        return {"lora/trainable_params": self.num_trainable,
                "lora/trainable_share": self.num_trainable / self.num_base}

    def _export_fused(self, out_dir: Path, datamodule) -> None:
        """Merge the adapter into a copy of the transformer and export the whole pipeline."""
        import copy

        from wan2.export import export_pipeline

        fused = _merge_peft(copy.deepcopy(self.transformer))
        bb = copy.copy(self.backbone)
        bb.transformer = fused
        export_pipeline(bb, out_dir, sampling=dict(self.backbone.extra))


def _merge_peft(module):
    """Replace every PEFT LoRA layer by its merged base layer (weights W + scale * B A)."""
    from peft.tuners.lora import LoraLayer

    for name, sub in list(module.named_modules()):
        if isinstance(sub, LoraLayer):
            sub.merge()
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, sub.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config
        module._hf_peft_config_loaded = False
    return module
