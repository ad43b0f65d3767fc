"""Micro-benchmarks by section; prints ONE JSON object ``{section: results, "env": ...}`` to stdout.

  python scripts/bench.py --only data            # data loading and cached vs uncached training steps
  python scripts/bench.py --only data --quick --out bench.json

Sections are registered in ``SECTIONS`` (name -> function(args) -> dict); add yours with ``@section``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {}


def section(name: str):
    """Register ``fn(args) -> dict`` as the bench section ``name``."""

    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- data


def bench_loader(num_clips: int = 64, batch_size: int = 8, num_workers: int = 0, cfg=None) -> dict:
    """Decoded clips/s from shards through ``VideoDataModule`` and from on-the-fly ``RankJump``."""
    from torch.utils.data import DataLoader

    from wan2.data.datamodule import VideoDataModule
    from wan2.data.datasets import RankJumpVideoDataset, collate
    from wan2.data.rankjump import RankJumpConfig
    from wan2.data.shards import write_rankjump_shards

    cfg = cfg or RankJumpConfig(mix={"rank_up": 1, "rank_down": 1, "hold": 1, "first_entry": 1})
    spec = {"num_frames": cfg.num_frames, "height": cfg.height, "width": cfg.width}

    def clips_per_s(loader) -> tuple[float, int]:
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += batch["video"].shape[0]  # (B, 3, F, H, W)
        return n / (time.perf_counter() - t0), n

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = write_rankjump_shards(tmp, "train", num_clips, cfg, shard_size=max(1, num_clips // 4))
        write_s = time.perf_counter() - t0
        dm = VideoDataModule(
            m["pattern"],
            batch_size=batch_size,
            num_workers=num_workers,
            shuffle_buffer=min(64, num_clips),
            **spec,
        )
        shard_rate, shard_n = clips_per_s(dm.train_dataloader())
    ds = RankJumpVideoDataset(cfg, "train", num_clips)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=collate, num_workers=num_workers)
    rj_rate, rj_n = clips_per_s(loader)
    return {
        "clip": [cfg.num_frames, cfg.height, cfg.width],
        "num_workers": num_workers,
        "shard_write_clips_per_s": num_clips / write_s,
        "shards_clips_per_s": shard_rate,
        "shards_clips": shard_n,
        "rankjump_clips_per_s": rj_rate,
        "rankjump_clips": rj_n,
    }


def bench_cache_step(
    batch_size: int = 8,
    steps: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    model_cfg: str | Path = ROOT / "configs/model/wan_tiny.yaml",
    cfg=None,
) -> dict:
    """Seconds per flow-matching step (loss + backward + AdamW) with cached latents vs encoding video."""
    import torch
    from omegaconf import OmegaConf

    from wan2.backbones.stack import build_backbone
    from wan2.data.datasets import RankJumpVideoDataset, collate
    from wan2.data.rankjump import RankJumpConfig
    from wan2.lightning.flow_module import FlowMatchingModule

    torch.manual_seed(0)
    mcfg = OmegaConf.load(model_cfg)
    backbone = build_backbone(mcfg)
    module = FlowMatchingModule(
        backbone, ema_decay=0.0, train_text_encoder=bool(mcfg.get("train_text_encoder"))
    )
    module.to(device).train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    cfg = cfg or RankJumpConfig()
    ds = RankJumpVideoDataset(cfg, "train", batch_size)
    batch = collate([ds[i] for i in range(batch_size)])
    video = batch["video"].to(device)  # (B, 3, F, H, W)
    with torch.no_grad():
        latents = backbone.encode_video(video)  # (B, C, F', H', W')
    cached = {"latents": latents, "caption": batch["caption"]}
    uncached = {"video": video, "caption": batch["caption"]}

    def sec_per_step(b: dict) -> float:
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                t0 = time.perf_counter()
            loss = module.flow_loss(b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        return (time.perf_counter() - t0) / steps

    with_cache = sec_per_step(cached)
    without_cache = sec_per_step(uncached)
    return {
        "batch_size": batch_size,
        "clip": [cfg.num_frames, cfg.height, cfg.width],
        "latent": list(latents.shape[1:]),
        "steps": steps,
        "device": device,
        "s_per_step_cached": with_cache,
        "s_per_step_uncached": without_cache,
        "speedup": without_cache / with_cache,
    }


@section("data")
def bench_data(args: argparse.Namespace) -> dict:
    """Loader throughput and the training-step time saved by the latent cache."""
    n, steps = (16, 2) if args.quick else (64, 3)
    return {
        "loader": bench_loader(num_clips=n, batch_size=8, num_workers=args.num_workers),
        "cache_step": bench_cache_step(batch_size=4 if args.quick else 8, steps=steps, device=args.device),
    }


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer steps")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for the loader benches")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        p.error(f"--only: unknown sections {unknown}; choose from {list(SECTIONS)}")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {}
    for name in names:
        t0 = time.perf_counter()
        result[name] = SECTIONS[name](args)
        result[name]["wall_s"] = time.perf_counter() - t0
    result["env"] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "quick": args.quick,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
