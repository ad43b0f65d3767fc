"""LoRA fine-tuning: flow matching on a frozen base with PEFT adapters on the transformer(s)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wan2.compat import forget_peft_adapters
from wan2.lightning.flow_module import FlowMatchingModule
from wan2.lightning.lora_config import LoRAObjectiveConfig
from wan2.lora import add_lora, lora_config, save_lora
from wan2.memory.fp8 import restore_linears

# where each transformer's adapter is exported, named after the pipeline component it loads into
LORA_DIRS = {"transformer": "lora", "transformer_2": "lora_2"}


class LoRAModule(FlowMatchingModule):
    """Adapters only: base transformer(s), text encoder and VAE stay frozen; export is a diffusers LoRA file per
    trained transformer.

    ``expert`` (Wan2.2 A14B, see ``wan2.lightning.experts``): ``high`` adapts ``transformer`` (sigma >= boundary),
    ``low`` adapts ``transformer_2`` (sigma < boundary), ``both`` puts one adapter of the same spec on each and
    routes every sample to its expert; null: the single transformer of a one-expert model (``both`` on A14B).
    """

    Config = LoRAObjectiveConfig

    def __init__(self, backbone, cfg: LoRAObjectiveConfig | None = None, **settings):
        cfg = dataclasses.replace(self.Config.build(cfg, settings), train_text_encoder=False)
        self.lora_spec = cfg.lora  # read by configure_trainable, which the base __init__ calls
        super().__init__(backbone, cfg)

    def configure_trainable(self) -> None:
        self.peft_configs, self.num_params = {}, {}
        for name, model in self.trained_experts():
            self.peft_configs[name] = lora_config(self.lora_spec)
            trainable = add_lora(model, self.peft_configs[name])
            base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
            self.num_params[name] = (trainable, base)
        self.num_trainable = sum(t for t, _ in self.num_params.values())
        self.num_base = sum(b for _, b in self.num_params.values())

    def on_fit_start(self) -> None:
        share = 100.0 * self.num_trainable / self.num_base
        where = " + ".join(self.num_params)
        self.print(
            f"LoRA {self.lora_spec.targets} rank {self.lora_spec.rank} on {where}: {self.num_trainable:,} "
            f"trainable parameters = {share:.2f}% of the adapted transformer weights ({self.num_base:,})"
        )

    def export(self, out_dir: Path, datamodule=None) -> dict:
        """EMA adapters as diffusers LoRA files: ``export/lora/pytorch_lora_weights.safetensors`` for ``transformer``
        (the single model, or the A14B high-noise expert) and ``export/lora_2/`` for ``transformer_2`` (the A14B
        low-noise expert). Stock diffusers loads them with::

            pipe.load_lora_weights("export/lora")                                  # -> pipe.transformer
            pipe.load_lora_weights("export/lora_2", load_into_transformer_2=True)  # -> pipe.transformer_2

        ``fuse=True`` adds ``export/fused``: the whole pipeline with the adapters merged."""
        self.backbone.eval()
        with self.ema_weights():
            for name, model in self.trained_experts():
                trainable, base = self.num_params[name]
                extra = {
                    "targets": self.lora_spec.targets,
                    "rank": self.lora_spec.rank,
                    "expert": self.expert,
                    "component": name,
                    "load_into_transformer_2": name == "transformer_2",
                    "trainable_params": trainable,
                    "transformer_params": base,
                    "base": self.backbone.extra.get("source"),
                }
                save_lora(model, out_dir / LORA_DIRS[name], self.peft_configs[name], extra=extra)
            if self.hparams.fuse:
                self._export_fused(out_dir / "fused", datamodule)
        return {
            "lora/trainable_params": self.num_trainable,
            "lora/trainable_share": self.num_trainable / self.num_base,
        }

    def _export_fused(self, out_dir: Path, datamodule) -> None:
        """Merge each adapter into a copy of its transformer and export the whole pipeline (both experts)."""
        import copy

        from wan2.export import export_pipeline

        bb = copy.copy(self.backbone)
        for name, model in self.trained_experts():
            setattr(bb, name, _merge_peft(copy.deepcopy(model)))
        export_pipeline(bb, out_dir, sampling=dict(self.backbone.extra))


def _merge_peft(module):
    """Replace every PEFT LoRA layer by its merged base layer (weights W + scale * B A)."""
    from peft.tuners.lora import LoraLayer

    restore_linears(module)  # fp8-stored base layers (memory.fp8_frozen) back to nn.Linear: merge writes W
    for name, sub in list(module.named_modules()):
        if isinstance(sub, LoraLayer):
            sub.merge()
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, sub.get_base_layer())
    if hasattr(module, "peft_config"):
        forget_peft_adapters(module)
    return module
