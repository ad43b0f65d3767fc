"""Flow-matching module: it learns a fixed batch, and a resumed run equals an uninterrupted one."""

import csv
from pathlib import Path

import torch

from tests.conftest import compose_cfg, model_cfg
from wan2.backbones.stack import build_backbone
from wan2.lightning.flow_module import FlowMatchingModule
from wan2.tasks import train


def test_loss_falls_on_fixed_batch():
    torch.manual_seed(0)
    backbone = build_backbone(model_cfg("wan_tiny"))
    module = FlowMatchingModule(backbone, caption_dropout=0.0, ema_decay=0.0, train_text_encoder=True)
    g = torch.Generator().manual_seed(1)
    c, f, h, w = backbone.latent_shape(17, 32, 32)
    batch = {
        "latents": torch.randn(2, c, f, h, w, generator=g),
        "caption": ["the green row climbs from #4 to #1", "leaderboard: red bar falls from #2 to #5"],
    }
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        torch.manual_seed(0)  # the same noise and timesteps every step: the loss can only fall by learning
        loss = module.flow_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = losses[0], losses[-1]
    print(f"flow loss on a fixed batch: {first:.3f} -> {last:.3f}")  # measured 2.371 -> 0.516
    assert last < 0.6 * first


def run(tmp: Path, name: str, steps: int, ckpt: Path | None = None) -> Path:
    """``train()`` on the default (flow matching, tiny, RankJump) config; checkpoints every 2 steps."""
    overrides = [
        "data.num_train=4",
        "data.num_val=2",
        "data.batch_size=2",  # 2 steps per epoch
        f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        "callbacks.checkpoint.every_n_train_steps=2",
        "callbacks.progress=null",
        "logger=csv",
        "export.enabled=false",
        f"paths.root_dir={tmp}",
        f"paths.outputs_dir={tmp}/outputs",
        f"paths.output_dir={tmp}/{name}",
    ]
    if ckpt is not None:
        overrides.append(f"ckpt_path={ckpt}")
    train(compose_cfg(overrides, root_dir=None))  # paths.root_dir: in the overrides
    return tmp / name


def logged_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "csv" / "metrics.csv") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss")]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_resume_equals_uninterrupted(tmp_path):
    whole = run(tmp_path, "whole", 6)
    first = run(tmp_path, "first", 4)
    resumed = run(tmp_path, "resumed", 6, ckpt=first / "checkpoints" / "last.ckpt")

    assert logged_steps(first) == [0, 1, 2, 3]
    assert logged_steps(resumed) == [4, 5]  # the global step continues from 4
    load = lambda d: torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)  # noqa: E731
    a, b, c = load(whole), load(first), load(resumed)
    assert (a["global_step"], b["global_step"], c["global_step"]) == (6, 4, 6)

    assert max_diff(a["state_dict"], b["state_dict"]) > 1e-5  # the last 2 steps changed the weights
    assert max_diff(a["state_dict"], c["state_dict"]) <= 1e-6
    sa, sc = a["optimizer_states"][0]["state"], c["optimizer_states"][0]["state"]
    assert sa.keys() == sc.keys() and all(int(sa[k]["step"]) == 6 for k in sa)
    for key in ("exp_avg", "exp_avg_sq"):  # Adam moments were restored, not restarted
        assert max_diff({k: v[key] for k, v in sa.items()}, {k: v[key] for k, v in sc.items()}) <= 1e-6
    assert a["lr_schedulers"] == c["lr_schedulers"]
    assert a["ema"]["num_updates"] == c["ema"]["num_updates"] == 6  # EMA restored and updated every step
    assert max_diff(a["ema"]["shadow"], c["ema"]["shadow"]) <= 1e-6
