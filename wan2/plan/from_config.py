"""A plan from a composed ``train.yaml`` config: the model built on the meta device by ``wan2.backbones``,
what trains from the objective, the clip from the data config, precision and GPUs from the trainer."""

from __future__ import annotations

import dataclasses

from wan2.plan.inputs import (
    Clip,
    MemoryPlan,
    PlanError,
    Trainable,
    describe_transformer,
    full_trainable,
    lora_trainable,
    parallel_from_trainer,
    precision,
)
from wan2.plan.memory import Components
from wan2.plan.report import PlanInputs, make_plan


def _objective_kinds() -> dict[str, str]:
    """LightningModule class name -> ``full`` / ``lora`` / ``distill``: each objective declares it (``PLAN``)."""
    from wan2.objectives import plan_kinds

    return plan_kinds()


def _container(cfg, resolve: bool = True) -> dict:
    from omegaconf import OmegaConf

    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=resolve) if OmegaConf.is_config(cfg) else dict(cfg)


def meta_stack(model_cfg):
    """The model on the meta device (shapes, no weights), built by ``wan2.backbones.stack.build_backbone``: from
    the config's numbers, or from the component configs of ``model.pretrained`` (no weight file is read)."""
    from wan2.backbones.stack import build_backbone

    return build_backbone(
        _container(model_cfg), components=("text_encoder", "vae", "transformer"), device="meta"
    )


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def plan_from_config(cfg, **kwargs) -> dict:
    """``make_plan`` for a composed ``train.yaml`` config (model, objective, lora, data, trainer)."""
    return make_plan(plan_inputs(cfg, **kwargs))


def plan_inputs(
    cfg,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int | None = None,
    gpu_memory_gib: float = 80.0,
    overhead_gib: float = 2.0,
    gpu_tflops: float = 989.0,
    mfu: float = 0.4,
    label: str = "",
    stack=None,
    pcie_gbps: float = 25.0,
    memory_name: str = "",
) -> PlanInputs:
    """What a composed config asks for: the model read off its meta build, trainable weights from the objective
    (``lora`` for LoRAModule), clip and batch from the data config (or the arguments), precision and GPUs from
    the trainer."""
    from omegaconf import OmegaConf

    notes = []
    objective = _container(cfg.objective, resolve=False)
    target = str(objective.get("_target_", "")).rsplit(".", 1)[-1]
    kinds = _objective_kinds()
    kind = kinds.get(target)
    if kind is None:
        raise PlanError(
            f"objective: {target or '?'} trains no Wan transformer; plan one of "
            f"{sorted(kinds)} (objective=flow_matching | lora | distill)"
        )
    obj = _container(cfg.objective)
    stack = stack if stack is not None else meta_stack(cfg.model)
    # Wan2.2 A14B (wan2/lightning/experts.py): objective.expert high / low trains one expert and leaves the other
    # off the GPU; both (the default, null) trains the two, each sample going to the expert of its sigma
    experts = {"high": stack.transformer, "low": stack.transformer_2}
    expert = obj.get("expert")
    if stack.transformer_2 is None:
        if expert not in (None, "high"):
            raise PlanError(
                f"objective.expert: {expert!r} needs a two-expert model (Wan2.2 A14B); this one has "
                "one transformer (allowed: null or 'high')"
            )
        trained, idle = ["high"], {}
    else:
        expert = expert or "both"
        if expert not in ("high", "low", "both"):
            raise PlanError(f"objective.expert: {expert!r} is not one of ['high', 'low', 'both'] (or null)")
        trained = ["high", "low"] if expert == "both" else [expert]
        idle = {
            f"{'transformer' if k == 'high' else 'transformer_2'} (idle)": _numel(experts[k])
            for k in experts
            if k not in trained
        }
        notes.append(
            f"two experts, objective.expert={expert}: "
            + (
                f"the {expert}-noise expert trains, the other stays off the GPU"
                if len(trained) == 1
                else "both train (each sample goes to one), both on the GPU"
            )
        )
    transformer = experts[trained[0]]
    shape = describe_transformer(transformer)
    if kind == "lora":
        from wan2.lora.adapters import target_regex
        from wan2.lora.config import LoRAConfig

        try:
            lora = LoRAConfig.build(_container(cfg.lora))  # defaults and checks: LoRAConfig
            pattern = target_regex(str(lora.targets))
        except ValueError as err:  # ConfigError included
            raise PlanError(str(err)) from None
        one = lora_trainable(transformer, pattern, int(lora.rank))
        k = len(trained)
        train = Trainable(
            "lora",
            k * one.params,
            k * one.tensors,
            one.rank,
            one.roles,
            one.token_params,
            one.text_params,
            experts=k,
        )
    else:
        train = full_trainable(shape, experts=len(trained))
    te_trains = kind != "lora" and bool(obj.get("train_text_encoder", False))

    data = _container(cfg.data)
    rj = data.get("rankjump") or {}

    def pick(value, key):
        v = value if value is not None else data.get(key, rj.get(key))
        if v is None:
            raise PlanError(f"data: no {key} in the data config; pass {key}=N")
        return int(v)

    from wan2.data.buckets import largest_bucket

    if (big := largest_bucket(data.get("train_shards"))) is not None:  # a bucketed folder: its largest clip
        frames, height, width = frames or big.frames, height or big.height, width or big.width
    frames = pick(frames, "num_frames")
    height, width = pick(height, "height"), pick(width, "width")
    batch = pick(batch_size, "batch_size")
    vae = stack.vae
    if vae is None:
        raise PlanError("model: no VAE config (model.vae or model.pretrained/vae) to size the latents")
    clip = Clip(
        frames,
        height,
        width,
        batch,
        int(stack.text_len),
        int(vae.config.scale_factor_temporal),
        int(vae.config.scale_factor_spatial),
        int(transformer.config.in_channels),
        shape.patch,
    )

    trainer = _container(cfg.trainer, resolve=False)
    raw_precision = str(trainer.get("precision", "32-true"))
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    if "auto_precision" in raw_precision and accelerator in ("gpu", "cuda", "auto"):
        prec = precision("bf16-mixed")
        notes.append(
            "trainer.precision is ${wan2.auto_precision}: planned as bf16-mixed (what it picks on a bf16 GPU)"
        )
    else:
        prec = precision(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    par = parallel_from_trainer(
        {
            **_container(cfg.trainer, resolve=False),
            "devices": OmegaConf.select(cfg, "trainer.devices", default=1),
            "num_nodes": OmegaConf.select(cfg, "trainer.num_nodes", default=1),
        }
    )
    if accelerator == "cpu":
        notes.append("trainer.accelerator is cpu: 'GPU' below means this host's memory")

    comps = Components(
        transformer=len(trained) * shape.params,
        text_encoder=_numel(stack.text_encoder),
        vae=_numel(vae),
        idle=idle,
        teacher=shape.params if kind == "distill" else 0,
    )
    ema = float(obj.get("ema_decay", 0) or 0) > 0
    if ema:
        notes.append(
            "objective.ema_decay > 0: the fp32 EMA shadow of the trainable weights is counted whole on every GPU "
            "(wan2/lightning/ema.py keeps full tensors; objective.ema_decay=0 drops it)"
        )
    text_cached = bool(data.get("cache_text", False))
    latents_cached = bool(data.get("cache_dir"))  # data=rankjump_latents, or data=shards with a cache_dir
    mem, checkpointing = memory_plan(cfg, prec, par, text_cached, latents_cached, pcie_gbps, notes)
    if memory_name:
        mem = dataclasses.replace(mem, name=memory_name)
    notes.append(
        (
            "the text encoder trains (weights, grads, AdamW counted; its activations are not) and the VAE is frozen: "
            if te_trains
            else "text encoder and VAE are frozen: weights only, "
        )
        + (
            "the text encoder sharded in FSDP's root unit and gathered in the compute dtype for the step, "
            if par.fsdp
            else "replicated on every GPU, "
        )
        + f"{prec.param} bytes / parameter at rest"
        + ("; text embeddings come from the cache" if text_cached else "")
        + (
            f" (memory: the frozen text encoder and transformer weights at {mem.frozen_bytes} bytes, the VAE at "
            f"{prec.param})"
            if mem.frozen_bytes < prec.param
            else ""
        )
    )
    return PlanInputs(
        shape=shape,
        train=train,
        prec=prec,
        clip=clip,
        par=par,
        comps=comps,
        ema=ema,
        text_encoder_trains=te_trains,
        text_cached=text_cached,
        teacher_forwards=2 if kind == "distill" else 0,
        gpu_memory_gib=gpu_memory_gib,
        overhead_gib=overhead_gib,
        gpu_tflops=gpu_tflops,
        mfu=mfu,
        label=label or f"{_container(cfg.model).get('name', 'model')} {kind}",
        notes=notes,
        checkpointing=checkpointing,
        memory=mem,
    )


def memory_plan(cfg, prec, par, text_cached: bool, latents_cached: bool, pcie_gbps: float, notes: list):
    """(``MemoryPlan``, checkpointing) from the ``memory`` group (``wan2.memory.config.MemoryConfig``)."""
    from omegaconf import OmegaConf

    from wan2.memory.config import MemoryConfig

    try:
        m = MemoryConfig.build(_container(cfg.get("memory")), at="memory")
        frozen = m.frozen(prec.name, fsdp=par.fsdp)
    except ValueError as err:  # ConfigError: one line naming the key
        raise PlanError(str(err)) from None
    auto = m.encoders_on_device == "auto"
    mem = MemoryPlan(
        name=_memory_choice(cfg),
        frozen_bytes=2 if frozen == "bf16" else 4,
        fp8=m.fp8_frozen,
        block_swap=m.block_swap,
        text_encoder_resident=not (auto and text_cached),
        vae_resident=not (auto and latents_cached),
        activation_offload=m.activation_offload,
        pcie_gbps=pcie_gbps,
    )
    if auto and not (text_cached and latents_cached):
        notes.append(
            "memory.encoders_on_device=auto takes the text encoder / VAE off the GPU only with cached text "
            "embeddings / latents (data=rankjump_latents data.cache_text=true, or a precomputed cache)"
        )
    if m.fp8_frozen:
        notes.append(
            "memory.fp8_frozen: block Linear weights at 1 byte + an fp32 scale per output row; each layer "
            "dequantizes its weight for its matmul only (one transient copy of the largest, none kept for backward)"
        )
    model_ckpt = bool(OmegaConf.select(cfg, "model.gradient_checkpointing", default=False))
    return mem, m.checkpointing(model_ckpt)


def _memory_choice(cfg) -> str:
    """The ``memory=`` preset Hydra picked, when the config knows it (else ``memory``)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.select(cfg, "hydra.runtime.choices.memory", default=None) or "custom")
