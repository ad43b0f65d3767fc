"""Distributed training (issue 9): DDP on 2 CPU processes (gloo) follows the 1-process run at equal global batch.

Noise, noise level and caption dropout are drawn per sample from generators keyed by (seed, step, dataset index)
(``wan2.diffusion.rng``), so the global batch of a step gets the same draws whatever the world size. The
end-to-end check drives ``train.py experiment=pretrain_tiny`` in subprocesses on 32 cached latents:

- 1 process at batch 8 for 6 steps (4 steps per epoch), a checkpoint every step;
- ``trainer=ddp trainer.accelerator=cpu trainer.devices=2`` at batch 4 per rank for 3 steps (mid-epoch);
- that DDP checkpoint resumed on 1 process at batch 8 up to step 6.

Losses and weights agree within float tolerance, and the ranks together see each sample once per epoch.

FSDP (``trainer=fsdp``: torch FSDP2 ``fully_shard`` per WanTransformerBlock through Lightning's
ModelParallelStrategy) runs on the CPU too, with gloo:

- ``trainer=fsdp trainer.devices=2`` at batch 4 per rank for 3 steps, fp32: the same loss curve and weights as
  the 1-process run, a sharded checkpoint directory, and an export gathered from the shards;
- that sharded checkpoint resumed by FSDP on 1 device (resharded 2 -> 1) up to step 6.

The bf16 GPU variant is ``test_fsdp_trains_and_resumes_from_a_sharded_checkpoint_on_one_gpu`` (``gpu`` marker).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

import wan2.config_resolvers  # noqa: F401
from tests.conftest import compose_cfg, model_cfg, run_train, train_env
from wan2.compat import saves_distributed_checkpoint
from wan2.config_check import STRATEGIES, ConfigError, check_train_config
from wan2.diffusion import randn_per_sample, sample_generators
from wan2.lightning.distributed import is_fsdp
from wan2.lightning.reliability import safe_torch_load

N, BATCH, STEPS, DDP_STEPS = 32, 8, 6, 3  # 4 steps per epoch at the global batch of 8


# ----------------------------------------------------------------------------- per-sample randomness
def test_per_sample_draws_do_not_depend_on_the_batch():
    """A sample's noise depends on (seed, step, index, stream) only: not on its batch or its neighbours."""
    whole = randn_per_sample((2, 3), sample_generators(0, 7, [4, 9, 1, 30]))  # (4, 2, 3)
    halves = [randn_per_sample((2, 3), sample_generators(0, 7, idx)) for idx in ([4, 1], [9, 30])]
    torch.testing.assert_close(whole[[0, 2]], halves[0], rtol=0, atol=0)
    torch.testing.assert_close(whole[[1, 3]], halves[1], rtol=0, atol=0)
    for other in (
        sample_generators(1, 7, [4]),
        sample_generators(0, 8, [4]),
        sample_generators(0, 7, [4], "sigma"),
    ):
        assert not torch.equal(randn_per_sample((2, 3), other)[0], whole[0])


def test_flow_loss_of_a_batch_is_the_mean_over_its_halves():
    """What 2 DDP ranks compute: the loss and gradient of batch 8 equal the mean over two batches of 4."""
    from wan2.backbones.stack import build_backbone
    from wan2.lightning.flow_module import FlowMatchingModule

    cfg = model_cfg("wan_tiny")
    cfg.transformer.num_layers = 2
    torch.manual_seed(0)
    module = FlowMatchingModule(
        build_backbone(cfg), caption_dropout=0.3, ema_decay=0.0, train_text_encoder=True
    )
    c, f, h, w = module.backbone.latent_shape(17, 32, 32)
    batch = {
        "latents": torch.randn(8, c, f, h, w, generator=torch.Generator().manual_seed(1)),
        "caption": [f"row {i} climbs from #{i + 2} to #1" for i in range(8)],
        "index": torch.arange(8) * 3,
    }

    def loss_and_grads(rows):
        module.zero_grad()
        loss = module.flow_loss(
            {k: v[rows] if torch.is_tensor(v) else [v[i] for i in rows] for k, v in batch.items()}
        )
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]

    full, full_grads = loss_and_grads(list(range(8)))
    (a, ga), (b, gb) = loss_and_grads([0, 2, 4, 6]), loss_and_grads([1, 3, 5, 7])
    torch.testing.assert_close((a + b) / 2, full, rtol=1e-5, atol=1e-6)
    for g, g0, g1 in zip(full_grads, ga, gb):
        torch.testing.assert_close((g0 + g1) / 2, g, rtol=1e-4, atol=1e-6)


def test_ddp_sampler_splits_the_epoch_shuffle_between_ranks():
    """Lightning's DistributedSampler (same seed, per-epoch) deals out the 1-process order: rank r gets r::2."""
    from torch.utils.data import DistributedSampler

    from wan2.lightning.data import EpochShuffle

    data = list(range(N))
    for epoch in (0, 1, 5):
        single = EpochShuffle(data, seed=3)
        single.set_epoch(epoch)
        order = list(single)
        assert sorted(order) == data
        for rank in (0, 1):
            ddp = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3)
            ddp.set_epoch(epoch)
            assert list(ddp) == order[rank::2]


# ----------------------------------------------------------------------------- trainer configs
def test_trainer_configs_select_their_strategies():
    assert compose_cfg(["trainer=gpu"]).trainer.precision == "bf16-mixed"
    ddp = compose_cfg(["trainer=ddp", "trainer.num_nodes=2", "trainer.devices=8"]).trainer
    assert (ddp.strategy, ddp.num_nodes, ddp.devices, ddp.use_distributed_sampler) == ("ddp", 2, 8, True)
    fsdp = compose_cfg(["trainer=fsdp"]).trainer
    assert is_fsdp(fsdp.strategy) and not is_fsdp(ddp.strategy) and fsdp.precision == "bf16-mixed"
    strategy = hydra.utils.instantiate(fsdp.strategy)
    from wan2.lightning.distributed import FSDP2Strategy

    assert (
        isinstance(strategy, FSDP2Strategy) and is_fsdp(strategy) and saves_distributed_checkpoint(strategy)
    )
    assert (strategy.param_dtype, strategy.reduce_dtype, strategy.reshard_after_forward) == (
        "bf16",
        "fp32",
        True,
    )
    with pytest.raises(ValueError, match=r"^trainer\.strategy\.param_dtype: 'bf32' is not a dtype"):
        FSDP2Strategy(param_dtype="bf32")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["trainer=ddp", "trainer.strategy=dpp"], "trainer.strategy: 'dpp' is not one of"),
        (["trainer=ddp", "trainer.num_nodes=0"], "trainer.num_nodes: 0 must be an int >= 1"),
        (
            ["trainer=fsdp", "trainer.strategy.param_dtype=bf32"],
            "trainer.strategy.param_dtype: 'bf32' is not one of ['bf16', 'fp16', 'fp32'] (or null)",
        ),
        (
            ["trainer=fsdp", "trainer.devices=2", "objective.ema_decay=0.999"],
            "objective.ema_decay: 0.999 needs whole weights, and trainer=fsdp shards them over 2 ranks",
        ),
        (
            ["trainer=fsdp", "trainer.strategy._target_=FSDP"],
            "trainer.strategy._target_: 'FSDP' must be a strategy",
        ),
        (["model.gradient_checkpointing=yes"], "model.gradient_checkpointing: 'yes' must be true or false"),
    ],
)
def test_bad_distributed_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        check_train_config(compose_cfg(overrides))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_strategy_names_are_lightnings():
    from lightning.pytorch.strategies import StrategyRegistry

    assert set(STRATEGIES) - {"auto"} <= set(StrategyRegistry.available_strategies())
    for option in ("cpu", "gpu", "ddp", "fsdp"):
        check_train_config(compose_cfg([f"trainer={option}", "experiment=pretrain_tiny"]))


def test_ranks_share_rank_zeros_run_folder(monkeypatch):
    """Lightning starts rank 1 by running train.py again: its own ``${now:...}`` folder is replaced by rank 0's."""
    from wan2.tasks import RUN_DIR_ENV, _share_run_dir

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    rank0 = OmegaConf.create({"paths": {"output_dir": "outputs/x/2026-01-01_00-00-00"}})
    _share_run_dir(rank0)
    assert os.environ[RUN_DIR_ENV] == "outputs/x/2026-01-01_00-00-00"  # the launcher copies it to rank 1
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank1 = OmegaConf.create({"paths": {"output_dir": "outputs/x/2026-01-01_00-00-07"}})
    _share_run_dir(rank1)
    assert rank1.paths.output_dir == "outputs/x/2026-01-01_00-00-00"


# ----------------------------------------------------------------------------- DDP end to end
def overrides(
    out: Path,
    data: Path,
    batch: int,
    steps: int,
    *extra: str,
    deterministic: bool = True,
    precision: str | None = "32-true",
) -> list[str]:
    """The runs compared here at fp32 tolerances all pin ``precision`` (not ``${wan2.auto_precision}``, which
    ``$WAN2_PRECISION`` may force to bf16-mixed); None keeps the trainer config's own."""
    return [
        "experiment=pretrain_tiny",
        f"paths.output_dir={out}",
        f"paths.data_dir={data}",
        f"data.num_train={N}",
        f"data.batch_size={batch}",
        f"trainer.max_steps={steps}",
        "trainer.max_time=null",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        "objective.warmup_steps=4",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.checkpoint.save_top_k=-1",
        "callbacks.progress=null",
        "+callbacks.sample_log._target_=wan2.testing.SampleIndexLog",
        f"+callbacks.sample_log.dirpath={out}/sample_log",
        "logger=csv",
        "export.enabled=false",
        "threads=1",
        f"trainer.deterministic={str(deterministic).lower()}",  # False on CUDA: some kernels have no such mode
        *([f"trainer.precision={precision}"] if precision else []),
        *extra,
    ]


FSDP_CPU = (  # trainer=fsdp on 2 CPU processes (gloo), fp32 so that it follows the 1-process run closely
    "trainer=fsdp",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.strategy.param_dtype=null",
    "objective.ema_decay=0",  # the EMA keeps whole weights: refused when sharded over several ranks
)


def run(args: list[str]) -> None:
    """``python train.py ARGS`` (Lightning starts the other DDP ranks by running it again)."""
    env = train_env()
    env.pop("WAN2_RUN_DIR", None)  # set by the in-process runs; rank 0 passes its own to its ranks
    r = run_train(args, env=env)
    assert r.returncode == 0, failure_summary(r.stderr)


def failure_summary(stderr: str) -> str:
    """Every rank's error lines (the first failure may be far above the tail), then the tail."""
    lines = stderr.splitlines()
    errors = [ln for ln in lines if "Error" in ln or "error:" in ln or "terminated with code" in ln]
    return "\n".join(["error lines:", *errors[:40], "tail:", *lines[-40:]])


def run_here(args: list[str]) -> None:
    """``train()`` in this process: the 1-process runs, without a second start-up of torch and Lightning."""
    from wan2.tasks import train

    train(compose_cfg(args))


def losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def seen(run_dir: Path) -> list[dict]:
    return [
        json.loads(line) for p in sorted((run_dir / "sample_log").glob("rank*.jsonl")) for line in p.open()
    ]


def step_ckpt(run_dir: Path, step: int) -> dict:
    return safe_torch_load(next((run_dir / "checkpoints").glob(f"epoch=*-step={step}.ckpt")))


def assert_close_weights(a: dict, b: dict) -> float:
    """The weights and EMA agree within float tolerance; returns the largest absolute difference."""
    worst = 0.0
    for key in ("state_dict", "ema"):
        ta = a[key] if key == "state_dict" else a[key]["shadow"]
        tb = b[key] if key == "state_dict" else b[key]["shadow"]
        assert ta.keys() == tb.keys()
        for k in ta:
            torch.testing.assert_close(
                ta[k], tb[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=f"{key}/{k}": f"{k}: {m}"
            )
            worst = max(worst, float((ta[k].float() - tb[k].float()).abs().max()))
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    data = root / "data"
    run_here(overrides(root / "single", data, BATCH, STEPS))  # also builds the latent cache
    run(
        overrides(
            root / "ddp",
            data,
            BATCH // 2,
            DDP_STEPS,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
        )
    )
    run_here(
        overrides(
            root / "resumed", data, BATCH, STEPS, f"ckpt_path={root / 'ddp' / 'checkpoints' / 'last.ckpt'}"
        )
    )
    # FSDP: 2 ranks (with the export gathered from the shards), then the sharded checkpoint on 1 rank
    run(
        [
            *overrides(root / "fsdp", data, BATCH // 2, DDP_STEPS, *FSDP_CPU, "trainer.devices=2"),
            "export.enabled=true",
        ]
    )
    (root / "fsdp" / "csv").rename(root / "fsdp" / "csv_2ranks")  # the resumed run writes its own csv
    run(overrides(root / "fsdp", data, BATCH, STEPS, *FSDP_CPU, "trainer.devices=1", "ckpt_path=last"))
    return root


def compare(ref: dict[int, float], other: dict[int, float], steps) -> tuple[float, float]:
    """Per-step losses agree (rtol 1e-4); returns (max abs, max rel) difference."""
    assert set(steps) <= other.keys() and set(steps) <= ref.keys(), (sorted(other), sorted(ref))
    diff = [abs(other[s] - ref[s]) for s in steps]
    rel = [d / abs(ref[s]) for d, s in zip(diff, steps)]
    assert max(rel) < 1e-4, {s: (ref[s], other[s]) for s in steps}
    return max(diff), max(rel)


def test_ddp_follows_the_single_process_loss_curve(runs):
    single, ddp = losses(runs / "single"), losses(runs / "ddp")
    assert sorted(ddp) == list(range(DDP_STEPS))
    abs_diff, rel_diff = compare(single, ddp, range(DDP_STEPS))
    print(
        f"DDP 2x{BATCH // 2} vs 1x{BATCH}, steps 0-{DDP_STEPS - 1}: max |dloss| {abs_diff:.2e} (rel {rel_diff:.2e})"
    )
    print("losses:", [(single[s], ddp[s]) for s in range(DDP_STEPS)])
    ddp_state = safe_torch_load(runs / "ddp" / "checkpoints" / "last.ckpt")
    assert ddp_state["global_step"] == DDP_STEPS
    worst = assert_close_weights(ddp_state, step_ckpt(runs / "single", DDP_STEPS))
    print(f"weights and EMA after {DDP_STEPS} steps: max |dw| {worst:.2e}")


def test_ddp_checkpoint_resumes_on_one_process(runs):
    """The DDP run stopped mid-epoch; 1 process at the same global batch takes over from its checkpoint."""
    ddp_state = safe_torch_load(runs / "ddp" / "checkpoints" / "last.ckpt")
    loader_state = ddp_state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"batches_done": DDP_STEPS}]  # the DDP loader kept its resumable position
    single, resumed = losses(runs / "single"), losses(runs / "resumed")
    assert sorted(resumed) == list(range(DDP_STEPS, STEPS))
    abs_diff, rel_diff = compare(single, resumed, range(DDP_STEPS, STEPS))
    print(
        f"resumed on 1 process, steps {DDP_STEPS}-{STEPS - 1}: max |dloss| {abs_diff:.2e} (rel {rel_diff:.2e})"
    )
    final = safe_torch_load(runs / "resumed" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == STEPS
    worst = assert_close_weights(final, safe_torch_load(runs / "single" / "checkpoints" / "last.ckpt"))
    print(f"weights and EMA after {STEPS} steps: max |dw| {worst:.2e}")


def test_ranks_split_each_global_batch_and_see_every_sample_once(runs):
    single = {r["step"]: r["index"] for r in seen(runs / "single")}
    ddp = seen(runs / "ddp")
    assert {r["rank"] for r in ddp} == {0, 1} and all(len(r["index"]) == BATCH // 2 for r in ddp)
    for step in range(DDP_STEPS):  # rank r takes every 2nd sample of the 1-process batch
        rows = {r["rank"]: r["index"] for r in ddp if r["step"] == step}
        assert sorted(rows[0] + rows[1]) == sorted(single[step])
        assert set(rows[0]).isdisjoint(rows[1])
    resumed = seen(runs / "resumed")
    epoch0 = [i for r in ddp + resumed if r["epoch"] == 0 for i in r["index"]]
    assert sorted(epoch0) == list(range(N))  # 2 ranks for 3 steps, then 1 process: each sample exactly once
    for r in resumed:
        assert r["index"] == single[r["step"]]
    for epoch in (0, 1):  # the 1-process run: each sample once per (complete) epoch
        idx = [i for r in seen(runs / "single") if r["epoch"] == epoch for i in r["index"]]
        assert len(idx) == len(set(idx)) and (epoch == 1 or sorted(idx) == list(range(N)))


# ----------------------------------------------------------------------------- FSDP (CPU, gloo)
def test_fsdp_follows_the_single_process_run_and_resumes_resharded(runs):
    """FSDP2 over 2 CPU ranks at batch 4 = 1 process at batch 8 (losses and weights); its sharded checkpoint
    resumes on 1 rank (DCP reshards 2 -> 1) and continues the 1-process curve."""
    from safetensors.torch import load_file

    single = losses(runs / "single")
    fsdp = {}
    for csv_dir in ("csv_2ranks", "csv"):
        with open(runs / "fsdp" / csv_dir / "metrics.csv") as f:
            fsdp |= {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert sorted(fsdp) == list(range(STEPS))
    abs_diff, rel_diff = compare(single, fsdp, range(STEPS))
    print(
        f"FSDP 2x{BATCH // 2} (steps 0-2), resumed on 1 rank (3-5) vs 1x{BATCH}: max |dloss| {abs_diff:.2e} "
        f"(rel {rel_diff:.2e})"
    )
    last = runs / "fsdp" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / "meta.pt").is_file() and not last.with_name("last.ckpt.tmp").exists()
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp"]  # rewritten by the 1-rank run
    assert safe_torch_load(last / "meta.pt")["global_step"] == STEPS
    step3 = runs / "fsdp" / "checkpoints" / f"epoch=0-step={DDP_STEPS}.ckpt"
    assert sorted(p.name for p in step3.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one per rank
    # the export after the 2-rank run holds the whole (gathered) weights: those of the 1-process run at step 3
    exported = load_file(runs / "fsdp" / "export" / "transformer" / "diffusion_pytorch_model.safetensors")
    ref = {
        k.removeprefix("transformer."): v
        for k, v in step_ckpt(runs / "single", DDP_STEPS)["state_dict"].items()
        if k.startswith("transformer.")
    }
    assert exported.keys() == ref.keys()
    worst = max(float((exported[k].float() - ref[k].float()).abs().max()) for k in ref)
    assert worst < 1e-5, worst
    print(f"FSDP export after {DDP_STEPS} steps vs the 1-process weights: max |dw| {worst:.2e}")
    rows = seen(runs / "fsdp")  # 2 ranks for 3 steps, then 1 rank: each sample once in epoch 0
    assert {r["rank"] for r in rows if r["step"] < DDP_STEPS} == {0, 1}
    assert sorted(i for r in rows if r["epoch"] == 0 for i in r["index"]) == list(range(N))


@pytest.mark.slow  # ~40 s on 2 cores; the phases on one process: tests/test_experiments.py
def test_distillation_runs_every_phase_under_fsdp(tmp_path):
    """experiment=distill_4step on 2 CPU ranks: cfg, three halving rounds (the teacher reloaded from the sharded
    student each round) and distribution matching (a sharded fake denoiser), then the gathered 4-step export."""
    out = tmp_path / "distill"
    run(
        [
            "experiment=distill_4step",
            f"paths.output_dir={out}",
            f"paths.data_dir={tmp_path / 'data'}",
            "data.num_train=16",
            "data.batch_size=2",
            "objective.cfg_steps=1",
            "objective.round_steps=1",
            "objective.dm_steps=1",
            "trainer.max_steps=5",
            "trainer.limit_val_batches=0",
            "logger=csv",
            "callbacks.progress=null",
            "threads=1",
            *FSDP_CPU,
            "trainer.devices=2",
        ]
    )
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 5
    meta = json.loads((out / "export" / "wan2.json").read_text())
    assert (meta["num_inference_steps"], meta["guidance_scale"]) == (4, 1.0)
    assert sorted(p.name for p in (out / "checkpoints" / "last.ckpt").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]


# ----------------------------------------------------------------------------- FSDP (GPU)
@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (the bf16 NCCL path; the CPU runs FSDP above)"
)
def test_fsdp_trains_and_resumes_from_a_sharded_checkpoint_on_one_gpu(tmp_path):
    """``trainer=fsdp`` (bf16-mixed, one unit per WanTransformerBlock) on 1 GPU: 2 steps, a sharded checkpoint
    directory, then 1 more step resumed from it."""
    data = tmp_path / "data"
    fsdp = ("trainer=fsdp", "trainer.devices=1")

    run(overrides(tmp_path / "fsdp", data, 4, 2, *fsdp, deterministic=False, precision=None))
    last = tmp_path / "fsdp" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / "meta.pt").is_file() and any(last.glob("*.distcp"))
    meta = safe_torch_load(last / "meta.pt")
    assert meta["global_step"] == 2 and "ema" in meta
    run(
        overrides(tmp_path / "fsdp", data, 4, 3, *fsdp, "ckpt_path=last", deterministic=False, precision=None)
    )
    assert safe_torch_load(last / "meta.pt")["global_step"] == 3
    assert max(losses(tmp_path / "fsdp")) == 2  # the resumed run logged step 2 (the CSV restarts per run)
