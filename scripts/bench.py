"""Micro-benchmarks by section; prints ONE JSON object ``{section: results, "env": ...}`` to stdout.

  python scripts/bench.py --only data            # data loading and cached vs uncached training steps
  python scripts/bench.py --only data --quick --out bench.json
  python scripts/bench.py --only train --tiny     # smallest sizes: a smoke run (tests/test_bench.py)
  python scripts/bench.py --only memory --quick   # one LoRA step at the real widths, peak memory vs the plan
  python scripts/bench.py --only decode           # bucketed clips from a generated 1080p 30 s file: speed, peak RSS

Sections are registered in ``SECTIONS`` (name -> function(args) -> dict); add yours with ``@section``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {}
OPT_IN = {"memory", "decode"}  # heavy at full size on a small CPU: only with --only


def section(name: str):
    """Register ``fn(args) -> dict`` as the bench section ``name``."""

    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def _log(msg: str) -> None:
    """Progress to stderr (stdout holds only the JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- data


def bench_loader(num_clips: int = 64, batch_size: int = 8, num_workers: int = 0, cfg=None) -> dict:
    """Decoded clips/s from shards through ``VideoDataModule`` and from on-the-fly ``RankJump``."""
    from torch.utils.data import DataLoader

    from wan2.data.datasets import RankJumpVideoDataset, collate
    from wan2.data.rankjump import RankJumpConfig
    from wan2.data.shards import write_rankjump_shards
    from wan2.lightning.data import VideoDataModule

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
    n, batch, steps = (8, 2, 1) if args.tiny else (16, 4, 2) if args.quick else (64, 8, 3)
    return {
        "loader": bench_loader(num_clips=n, batch_size=min(8, n), num_workers=args.num_workers),
        "cache_step": bench_cache_step(batch_size=batch, steps=steps, device=args.device),
    }


# ----------------------------------------------------------------------------- decode (issue 19)


def write_long_video(path: Path, height: int, width: int, seconds: float, fps: int = 30) -> int:
    """Encode a moving test pattern frame by frame (never the whole clip in memory); returns the frame count."""
    import av
    import numpy as np

    n = int(round(seconds * fps))
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), (xx + yy) % 256], -1)
    base = base.astype(np.uint8)  # (H, W, 3)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "g": str(2 * fps)}  # a keyframe every 2 s
        for i in range(n):
            img = np.roll(base, 8 * i, axis=1)
            img[(i * 7) % height :: 97] = 255  # a moving line: frames differ everywhere
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return n


class _PeakRSS:
    """Highest current RSS (MiB) seen by a sampling thread while the ``with`` block runs."""

    def __enter__(self):
        import threading

        self.peak, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def bench_decode_case(path: Path, spec, frames_in_file: int, file_fps: int, label: str) -> dict:
    """Cut ``path`` into the clips ``spec`` plans (``stream_clips``): wall time, frames decoded and scaled per
    second, peak RSS (a sampling thread) above the RSS before."""
    import gc

    from wan2.data.clips import stream_clips
    from wan2.data.video import probe

    info = probe(path)
    bucket, starts = spec.plan(info.height, info.width, info.duration - 1 / info.fps + 0.5 / spec.fps)
    gc.collect()
    base = _rss_mb()
    stats: dict = {}
    with _PeakRSS() as rss:
        t0 = time.perf_counter()
        clips = stream_clips(path, starts, bucket.frames, spec.fps, bucket.height, bucket.width, stats=stats)
        clips = sum(1 for _, _, f in clips if f is not None)
        wall = time.perf_counter() - t0
    clip_mb = bucket.frames * bucket.height * bucket.width * 3 / 2**20
    _log(
        f"decode {label}: {clips} clips of {bucket.name} in {wall:.1f}s, peak RSS +{rss.peak - base:.0f} MiB"
    )
    return {
        "case": label,
        "bucket": bucket.name,
        "clips": clips,
        "clip_starts_s": starts,
        "wall_s": round(wall, 3),
        "frames_decoded": stats["decoded"],
        "frames_scaled": stats["converted"],
        "seeks": stats["seeks"],
        "decoded_frames_per_s": round(stats["decoded"] / wall, 1),
        "clip_frames_per_s": round(clips * bucket.frames / wall, 1),
        "file_seconds_per_s": round(frames_in_file / file_fps / wall, 3),  # the whole file's length / wall
        "rss_before_mb": round(base, 1),
        "peak_rss_mb": round(rss.peak, 1),
        "peak_rss_increase_mb": round(rss.peak - base, 1),
        "one_clip_uint8_mb": round(clip_mb, 1),
    }


@section("decode")
def bench_decode(args: argparse.Namespace) -> dict:
    """Bucketed clips from a long high-resolution file generated here (1080p, 30 s, 30 fps; ``--quick`` 720p
    10 s; ``--tiny`` 320x180 2 s): decode throughput and the peak RSS while decoding, against the size the whole
    file would take decoded. Cases: contiguous 81-frame clips of the 5B's 480p buckets (the whole file is
    decoded) and the same clips 10 s apart (``stream_clips`` seeks over the gaps)."""
    import av

    from wan2.data.buckets import BucketSpec

    h, w, secs, fps = (
        (180, 320, 2, 30) if args.tiny else (720, 1280, 10, 30) if args.quick else (1080, 1920, 30, 30)
    )
    frames = 17 if args.tiny else 81
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.mp4"
        t0 = time.perf_counter()
        n = write_long_video(path, h, w, secs, fps)
        _log(
            f"decode: wrote {n} frames {w}x{h} in {time.perf_counter() - t0:.0f}s ({path.stat().st_size / 2**20:.0f} MiB)"
        )
        # the decoder alone: every frame decoded, none converted
        with av.open(str(path)) as c:
            c.streams.video[0].thread_type = "AUTO"
            t0 = time.perf_counter()
            decoded = sum(1 for _ in c.decode(video=0))
            raw = time.perf_counter() - t0
        budget = (
            dict(height=480, width=832, multiple=32)
            if not args.tiny
            else dict(height=64, width=112, multiple=16)
        )
        span = (frames - 1) / 16
        cases = [
            bench_decode_case(path, BucketSpec.make(fps=16, frames=frames, **budget), n, fps, "contiguous"),
            bench_decode_case(
                path,
                BucketSpec.make(
                    fps=16, frames=frames, clip_stride=span + (10 if not args.tiny else 0.5), **budget
                ),
                n,
                fps,
                "sparse_seek",
            ),
        ]
        return {
            "file": {
                "height": h,
                "width": w,
                "seconds": secs,
                "fps": fps,
                "frames": n,
                "mb": round(path.stat().st_size / 2**20, 1),
            },
            "decode_only_frames_per_s": round(decoded / raw, 1),
            "whole_file_decoded_uint8_mb": round(n * h * w * 3 / 2**20, 1),
            "cases": cases,
            "max_rss_mb_process": round(_max_rss_mb(), 1),
        }


# ----------------------------------------------------------------------------- shared helpers


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def _rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; NaN elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _max_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _move_backbone(backbone, device: str):
    """Move every module of a WanBackbone to ``device`` (the dataclass has no ``.to``)."""
    for name in ("text_encoder", "vae", "transformer", "transformer_2"):
        m = getattr(backbone, name)
        if m is not None:
            m.to(device)
    return backbone


def bf16_autocast_supported(device: str = "cpu") -> bool:
    """Whether bf16 autocast runs natively here (CUDA bf16, or oneDNN bf16 kernels on the CPU)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# ----------------------------------------------------------------------------- train


def matmul_gflops(n: int, reps: int = 3, device: str = "cpu") -> float:
    """GFLOP/s of an n x n x n fp32 matmul, the median of ``reps`` runs after one warm-up: the MFU denominator.
    The median, not the best: this CPU's speed comes in bursts, and the steps it is compared with are medians."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up (oneDNN picks its kernel on the first call)
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / _median(times) / 1e9


def bench_adamw(params: list, reps: int = 10, device: str = "cpu") -> dict:
    """Median ms of one AdamW step over copies of ``params`` (random gradients), torch's default
    implementation vs ``foreach=True`` vs ``fused=True``, interleaved: what the optimizer alone costs per step."""
    import torch

    kinds = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    setups = {}
    for name, kw in kinds.items():
        ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for p in ps:
            p.grad = torch.randn_like(p)
        setups[name] = torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, **kw)
        setups[name].step()  # warm-up: creates the moments
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(reps):
        for name, opt in setups.items():
            _sync(device)
            t0 = time.perf_counter()
            opt.step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {f"{name}_ms": _median(ts) * 1e3 for name, ts in times.items()} | {"reps": reps}


def _train_step(module, opt, batch: dict, autocast_bf16: bool, device: str) -> None:
    """One optimisation step as Lightning runs it: ``training_step``'s loss (under bf16-mixed autocast when
    asked), backward, gradient clipping at 1.0 (configs/trainer/cpu.yaml), AdamW, EMA."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mismatch dtype")  # rms_norm under bf16 autocast
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = module.flow_loss(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if module.ema is not None:
        module.ema.update()


# the self-time of these ops is matrix multiplication (GEMMs, also as Inductor's packed linears) or attention
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise", "mkl::")
ATTENTION_OPS = ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention")


def op_profile(step, steps: int = 3, top: int = 12) -> dict:
    """Where a step's time goes: self time per op (torch.profiler) over ``steps`` steps, per step, split into
    matmuls, attention and the rest (elementwise, norms, copies, Python and framework overhead)."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall_ms = (time.perf_counter() - t0) / steps * 1e3
    rows = sorted(
        ((e.key, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages()), key=lambda r: -r[1]
    )
    kind = {
        "matmul": lambda k: k.startswith(MATMUL_OPS),
        "attention": lambda k: k.startswith(ATTENTION_OPS),
    }
    ms = {name: sum(v for k, v in rows if test(k)) for name, test in kind.items()}
    ms["other"] = max(0.0, wall_ms - ms["matmul"] - ms["attention"])  # incl. time outside any op (Python)
    return {
        "wall_ms_per_step": wall_ms,
        "ms_per_step": ms,
        "share": {k: v / wall_ms for k, v in ms.items()},
        "outside_matmul_share": ms["other"] / wall_ms,
        "top_ops_ms_per_step": {k: round(v, 2) for k, v in rows[:top]},
    }


DEMO_EXPERIMENT = "lora_rankup"  # the demo's training stage (scripts/demo.py stage 4): what `train` measures


def bench_train(
    experiment: str = DEMO_EXPERIMENT,
    batch_size: int | None = None,
    steps: int = 10,  # rounds: this CPU's speed comes in bursts, medians need a few
    warmup: int = 1,
    matmul_n: int = 1024,
    compile_step: bool | None = None,
    device: str = "cpu",
) -> dict:
    """The training step of ``experiment`` as the trainer runs it vs a naive loop, round-robin.

    ``wan2``: the experiment's module and settings at the precision the trainer picks here: cached latents and
    text embeddings, fused AdamW, ``torch.compile`` when ``objective.compile`` (or ``compile_step``) says so.
    ``wan2_eager`` (when compiled): the same without compile. ``naive``: an eager fp32 loop that encodes video
    (VAE) and text (UMT5) every step, with torch's default AdamW. A fp32 matmul of ``matmul_n`` is timed in
    every round beside the steps (the MFU denominator); a profile by op says where the step's time goes.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from wan2.config_resolvers import compose
    from wan2.data.datasets import RankJumpVideoDataset, collate
    from wan2.data.rankjump import RankJumpConfig
    from wan2.lightning.optim import adamw
    from wan2.tasks import build_module

    trainer = "gpu" if device.startswith("cuda") else "cpu"
    cfg = compose([f"experiment={experiment}", f"trainer={trainer}", "logger=none"])
    precision = str(cfg.trainer.precision)  # ${wan2.auto_precision}, or what $WAN2_PRECISION forces
    batch_size = batch_size or int(cfg.data.batch_size)
    compiled = bool(cfg.objective.get("compile", False)) if compile_step is None else compile_step
    rss0 = _rss_mb()

    def module_with(compile_: bool):
        torch.manual_seed(0)
        cfg.objective.compile = compile_
        return build_module(cfg).to(device).train()

    wan2, naive = module_with(compiled), module_with(False)
    hp = wan2.hparams
    opt_kw = {"lr": hp.lr, "betas": tuple(hp.betas), "weight_decay": hp.weight_decay}
    backbone = wan2.backbone
    meta = backbone.extra
    rj = RankJumpConfig(
        num_frames=meta.get("num_frames", 17), height=meta.get("height", 32), width=meta.get("width", 32)
    )
    ds = RankJumpVideoDataset(rj, "train", batch_size)
    b = collate([ds[i] for i in range(batch_size)])
    video, captions, index = b["video"].to(device), b["caption"], torch.arange(batch_size)  # (B, 3, F, H, W)
    with torch.no_grad():
        cached = {  # what the latent cache (cache_text=true) feeds a step
            "latents": backbone.encode_video(video),
            "text_emb": backbone.encode_prompts(captions),
            "caption": captions,
            "index": index,
        }
    raw = {"video": video, "caption": captions, "index": index}
    bf16 = precision.startswith("bf16")
    # name -> (module, optimizer, batch, bf16 autocast)
    variants = {
        "wan2": (wan2, adamw(wan2.param_groups(), precision, **opt_kw), cached, bf16),
        "naive": (naive, torch.optim.AdamW(naive.param_groups(), **opt_kw), raw, False),
    }
    if compiled:
        variants["wan2_eager"] = (naive, adamw(naive.param_groups(), precision, **opt_kw), cached, bf16)
    bf16_ok = bf16_autocast_supported(device)
    if bf16_ok:  # the other precision, eager: is the trainer's choice the faster one here?
        variants["wan2_eager_bf16" if not bf16 else "wan2_eager_fp32"] = (
            naive,
            adamw(naive.param_groups(), "32-true" if bf16 else "bf16-mixed", **opt_kw),
            cached,
            not bf16,
        )

    # transformer FLOPs of one step (forward + backward), counted eagerly: the same for every variant
    with FlopCounterMode(display=False) as counter:
        _train_step(naive, variants["naive"][1], cached, False, device)
    tf_flops = sum(counter.get_flop_counts().get(type(backbone.transformer).__name__, {}).values())
    with FlopCounterMode(display=False) as counter:
        _train_step(naive, variants["naive"][1], raw, False, device)
    naive_flops = counter.get_total_flops()

    # warm-up each variant (the compiled one compiles here), then time them round-robin with a matmul probe
    # in every round, so that load from other processes hits each alike; medians are reported
    first_step_s, max_rss = {}, {"after_load": _max_rss_mb()}
    for name, (m, opt, batch, bf) in variants.items():
        for i in range(warmup):
            t0 = time.perf_counter()
            _train_step(m, opt, batch, bf, device)
            if i == 0:
                first_step_s[name] = time.perf_counter() - t0
        max_rss[f"after_{name}"] = _max_rss_mb()
    _log(f"train: timing {list(variants)} x {steps} rounds, batch {batch_size}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    probes: list[float] = []
    for _ in range(steps):
        for name, (m, opt, batch, bf) in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            _train_step(m, opt, batch, bf, device)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
        probes.append(matmul_gflops(matmul_n, device=device))
    sec = {name: _median(ts) for name, ts in times.items()}
    round_ratios = [n / w for n, w in zip(times["naive"], times["wan2"], strict=True)]
    peak = _median(probes)
    m, opt, batch, bf = variants["wan2"]
    profile = op_profile(lambda: _train_step(m, opt, batch, bf, device), steps=min(3, steps))
    attn_mm_s = (profile["ms_per_step"]["matmul"] + profile["ms_per_step"]["attention"]) / 1e3
    return {
        "experiment": experiment,
        "model": str(cfg.model.pretrained),
        "device": device,
        "batch_size": batch_size,
        "clip": [rj.num_frames, rj.height, rj.width],
        "latent": list(cached["latents"].shape[1:]),
        "trainable_params": sum(p.numel() for g in wan2.param_groups() for p in g["params"]),
        "trainer_precision": precision,
        "compiled": compiled,
        "steps_timed": steps,
        "s_per_step": sec,
        "first_step_s": first_step_s,  # the compiled variant's first step includes its compilation
        "samples_per_s": {n: batch_size / s for n, s in sec.items()},
        "speedup_vs_naive": {n: sec["naive"] / s for n, s in sec.items() if n != "naive"},
        "speedup": sec["naive"] / sec["wan2"],  # the trainer's step vs the naive loop: the goal is >= 3
        # the same ratio taken in each round (naive and wan2 ran back to back), and the rounds themselves: this
        # CPU's speed drifts during a run, and the naive loop (VAE convolutions) slows more than the step
        "speedup_per_round": {
            "median": _median(round_ratios),
            "min": min(round_ratios),
            "max": max(round_ratios),
        },
        "s_per_round": {n: [round(t, 4) for t in ts] for n, ts in times.items()},
        "bf16_autocast_supported": bf16_ok,
        "bf16_over_fp32_speed": (
            None
            if not bf16_ok
            else (sec["wan2_eager"] if compiled else sec["wan2"]) / sec["wan2_eager_bf16"]
            if not bf16
            else sec["wan2_eager_fp32"] / sec["wan2"]
        ),
        "transformer_gflop_per_step": tf_flops / 1e9,
        "naive_gflop_per_step_all_modules": naive_flops / 1e9,
        "matmul_peak_gflops": {"n": matmul_n, "median": peak, "max": max(probes), "probes": probes},
        "model_gflops": {n: tf_flops / s / 1e9 for n, s in sec.items()},
        "mfu": {n: tf_flops / s / 1e9 / peak for n, s in sec.items()},
        "profile": profile,
        # the MFU if everything but matmuls and attention took no time: the small GEMMs' own ceiling
        "mfu_ceiling_matmul_only": tf_flops / max(attn_mm_s, 1e-9) / 1e9 / peak,
        "adamw_step": bench_adamw([p for g in wan2.param_groups() for p in g["params"]], 3 * steps, device),
        "rss_mb": {"start": rss0, "end": _rss_mb()},
        "max_rss_mb": max_rss,
        "peak_rss_mb": _max_rss_mb(),
    }


@section("train")
def bench_train_section(args: argparse.Namespace) -> dict:
    """The demo's training step (LoRA, batch 8) as the trainer runs it vs a naive loop: speed-up, MFU against an
    interleaved matmul peak, profile by op, RSS. ``--quick`` / ``--tiny`` leave compilation out (it alone takes
    about a minute): their ``wan2`` step is eager."""
    if args.tiny:
        return bench_train(
            batch_size=1, steps=1, warmup=1, matmul_n=64, compile_step=False, device=args.device
        )
    if args.quick:
        return bench_train(steps=3, warmup=1, matmul_n=512, compile_step=False, device=args.device)
    return bench_train(device=args.device)


# ----------------------------------------------------------------------------- distill

# the larger random-weight size: the tiny stack with a wider, deeper transformer (dim 512, 8 layers, ~36 M
# parameters) at 64x64x17 (576 tokens), where the transformer, not the VAE, dominates sampling
LARGE_TRANSFORMER = {"num_layers": 8, "num_attention_heads": 8, "attention_head_dim": 64, "ffn_dim": 2048}
QUICK_TRANSFORMER = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 32, "ffn_dim": 256}


@contextlib.contextmanager
def timed_denoise_loop(backbone, device: str = "cpu"):
    """Time the denoising loop inside ``wan2.sampling`` (its ``euler_sample`` call) and count transformer
    forwards, without changing what is run; yields ``{"loop_s": [...], "nfe": [...]}`` (one entry per call)."""
    import wan2.sampling as sampling

    record: dict[str, list] = {"loop_s": [], "nfe": []}
    calls = [0]
    hooks = [
        m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for m in (backbone.transformer, backbone.transformer_2)
        if m is not None
    ]
    original = sampling.euler_sample

    def timed(*args, **kwargs):
        calls[0] = 0
        _sync(device)
        t0 = time.perf_counter()
        z = original(*args, **kwargs)
        _sync(device)
        record["loop_s"].append(time.perf_counter() - t0)
        record["nfe"].append(calls[0])
        return z

    sampling.euler_sample = timed
    try:
        yield record
    finally:
        sampling.euler_sample = original
        for h in hooks:
            h.remove()


def bench_sampling(
    backbone,
    *,
    num_frames: int,
    height: int,
    width: int,
    teacher_runs: int = 1,
    student_runs: int = 3,
    device: str = "cpu",
    prompt: str = "the green row climbs from #3 to #2",
    teacher: tuple[int, float] = (50, 5.0),
    student: tuple[int, float] = (4, 1.0),
) -> dict:
    """Seconds per video, end to end (``sample_videos``: text encode + denoise + VAE decode) and for the
    denoising loop alone, of the teacher (50 steps, CFG) and the student (4 steps, guidance 1.0)."""
    from wan2.sampling import sample_videos

    def run(steps: int, guidance: float) -> tuple[float, float, int]:
        _log(f"sampling {num_frames}x{height}x{width}: {steps} steps, guidance {guidance}")
        with timed_denoise_loop(backbone, device) as rec:
            _sync(device)
            t0 = time.perf_counter()
            sample_videos(
                backbone,
                [prompt],
                num_frames=num_frames,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                seed=0,
            )
            _sync(device)
            total = time.perf_counter() - t0
        return total, rec["loop_s"][0], rec["nfe"][0]

    run(*student)  # warm-up
    runs: dict[str, list[tuple[float, float, int]]] = {"teacher": [], "student": []}
    for i in range(max(teacher_runs, student_runs)):  # interleaved, so load from elsewhere hits both alike
        if i < student_runs:
            runs["student"].append(run(*student))
        if i < teacher_runs:
            runs["teacher"].append(run(*teacher))
    out: dict = {
        "clip": [num_frames, height, width],
        "transformer_params_m": sum(p.numel() for p in backbone.transformer.parameters()) / 1e6,
    }
    for name, (steps, guidance) in (("teacher", teacher), ("student", student)):
        rs = runs[name]
        out[name] = {
            "steps": steps,
            "guidance_scale": guidance,
            "nfe": rs[0][2],
            "runs": len(rs),
            "s_end_to_end": _median([r[0] for r in rs]),
            "s_loop": _median([r[1] for r in rs]),
        }
    t, s = out["teacher"], out["student"]
    out["speedup_loop"] = t["s_loop"] / s["s_loop"]
    out["speedup_end_to_end"] = t["s_end_to_end"] / s["s_end_to_end"]
    out["nfe_ratio"] = t["nfe"] / s["nfe"]
    out["loop_share_teacher"] = t["s_loop"] / t["s_end_to_end"]
    out["loop_share_student"] = s["s_loop"] / s["s_end_to_end"]
    return out


def large_backbone(transformer: dict, model_cfg: str | Path = ROOT / "configs/model/wan_tiny.yaml"):
    """A random-weight stack: the tiny config (VAE, UMT5, scheduler) with the given transformer sizes."""
    import torch
    from omegaconf import OmegaConf

    from wan2.backbones.stack import build_backbone

    torch.manual_seed(0)
    cfg = OmegaConf.load(model_cfg)
    cfg.transformer = OmegaConf.merge(cfg.transformer, transformer)
    return build_backbone(cfg).eval()


@section("distill")
def bench_distill(args: argparse.Namespace) -> dict:
    """Teacher (50 steps, CFG: 100 forwards) vs 4-step student (4 forwards), demo size and a larger size."""
    from wan2.backbones.stack import load_backbone

    quick = args.quick
    demo = _move_backbone(load_backbone(ROOT / "pretrained/wan_tiny_base"), args.device)
    meta = demo.extra
    tiny = {"num_frames": 5, "height": 16, "width": 16} if args.tiny else {}  # --tiny: the smallest clips
    out = {
        "demo": bench_sampling(
            demo,
            num_frames=tiny.get("num_frames", meta.get("num_frames", 17)),
            height=tiny.get("height", meta.get("height", 32)),
            width=tiny.get("width", meta.get("width", 32)),
            teacher_runs=1 if quick else 2,
            student_runs=1 if quick else 3,
            device=args.device,
        )
    }
    out["demo"]["model"] = "pretrained/wan_tiny_base"
    sizes = QUICK_TRANSFORMER if quick else LARGE_TRANSFORMER
    large = _move_backbone(large_backbone(sizes), args.device)
    hw = 32 if quick else 64
    out["large"] = bench_sampling(
        large,
        num_frames=tiny.get("num_frames", 17),
        height=tiny.get("height", hw),
        width=tiny.get("width", hw),
        teacher_runs=1,
        student_runs=1 if quick else 3,
        device=args.device,
    )
    out["large"]["model"] = {"random_weights": True, "transformer": sizes}
    return out


# ----------------------------------------------------------------------------- memory (issue 16, CPU part)
# mechanisms a CPU can show, measured on the TI2V-5B case: fp8 frozen Linears, no gradient checkpointing
MEMORY_VARIANTS = {
    "": {},
    "_fp8": {"fp8": True},
    "_no_ckpt": {"checkpointing": False},
    "_fp8_no_ckpt": {"fp8": True, "checkpointing": False},
}
MEMORY_CASES = {  # name: (model config, blocks kept, frames, height, width): real width, reduced depth
    "ti2v_5b_2blocks_480p": ("wan22_ti2v_5b", 2, 121, 480, 832),  # 12,090 tokens
    "a14b_1block_480p": ("wan22_t2v_a14b", 1, 81, 480, 832),  # 32,760 tokens
}


class _LiveBytes:
    """Bytes of every tensor storage created while active (a TorchDispatchMode), peak over the ops; the
    storages that existed before (weights, AdamW state, inputs) are counted once, outside.

    ``fake``: the ops run on FakeTensors (shapes, dtypes and the same allocations, no arithmetic), so a bf16
    step is measured on a CPU whose bf16 matmuls are ~200x slower than fp32; ``tests/test_memory.py`` checks
    that both ways count the same bytes."""

    def __init__(self, existing=(), fake: bool = False):
        from contextlib import ExitStack

        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                from torch.utils._pytree import tree_leaves

                out = func(*args, **(kwargs or {}))
                if not func.is_view:  # a view shares its input's storage (a FakeTensor view does not show it)
                    outer.track(tree_leaves(out))
                return out

        self.fake = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        self.live, self.cur, self.peak = {}, 0, 0
        self.known = {StorageWeakRef(t.untyped_storage()) for t in existing}  # views of these are not new

        class Both:  # the fake mode below the tracker: the tracker sees each op's (fake) outputs
            def __enter__(s):
                s.stack = ExitStack()
                if outer.fake is not None:
                    s.stack.enter_context(outer.fake)
                s.stack.enter_context(Mode())

            def __exit__(s, *exc):
                return s.stack.__exit__(*exc)

        self.mode = Both()

    def track(self, leaves) -> None:
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef

        for key in [k for k in self.live if k.expired()]:
            self.cur -= self.live.pop(key)
        for t in leaves:
            if isinstance(t, torch.Tensor):
                key = StorageWeakRef(t.untyped_storage())
                if key not in self.live and key not in self.known:
                    self.live[key] = t.untyped_storage().nbytes()
                    self.cur += self.live[key]
        self.peak = max(self.peak, self.cur)


def memory_case(
    model: str,
    blocks: int,
    frames: int,
    height: int,
    width: int,
    max_frames: int | None,
    bf16: bool,
    fp8: bool = False,
    checkpointing: bool = True,
    fake: bool = False,
    device: str = "cpu",
    block_swap: int = 0,
) -> dict:
    """One LoRA step (rank 4, attention, AdamW) of the real transformer width with ``blocks`` blocks on the CPU:
    tensor bytes measured against the plan's lines. ``bf16``: bf16 autocast with the frozen base stored in bf16
    (``memory=80gb``); else fp32 (a CPU without bf16 matmuls runs them ~200x slower). ``fp8``: the frozen block
    Linears stored in fp8 (``memory.fp8_frozen``); ``checkpointing``: gradient checkpointing; ``fake``: the
    step runs on FakeTensors (the same allocations without arithmetic, see ``_LiveBytes``). On ``device=cuda``
    the measure is ``torch.cuda.max_memory_allocated`` over the step (weights, AdamW state and inputs are on the
    GPU before it), and ``block_swap`` blocks stream from pinned CPU memory (``wan2.memory.block_swap``)."""
    import torch
    from omegaconf import OmegaConf

    from wan2.backbones.stack import build_backbone
    from wan2.lora import add_lora, lora_config, target_regex
    from wan2.memory.frozen import cast_frozen
    from wan2.plan import (
        Clip,
        Components,
        MemoryPlan,
        Parallel,
        describe_transformer,
        lora_trainable,
        memory_per_gpu,
        precision,
    )

    cfg = OmegaConf.load(ROOT / "configs" / "model" / f"{model}.yaml")
    cfg.transformer.num_layers = blocks
    if max_frames:  # fewer tokens on a small CPU: the same widths, a shorter clip
        frames = min(frames, max_frames)
    torch.manual_seed(0)
    t = build_backbone(cfg, components=("transformer",)).transformer
    shape = describe_transformer(t)
    train = lora_trainable(t, target_regex("attention"), 4)
    add_lora(t, lora_config(rank=4, targets="attention"))
    if bf16:
        cast_frozen(t, "bf16")
    if fp8:
        from wan2.memory.fp8 import store_frozen_linears_fp8

        store_frozen_linears_fp8(t)
    if checkpointing:  # the real model configs turn it on already (model.gradient_checkpointing)
        t.enable_gradient_checkpointing()
    else:
        t.disable_gradient_checkpointing()
    gpu = device.startswith("cuda")
    if gpu:
        from wan2.memory.block_swap import BlockSwap

        t.to(device)
        swap = BlockSwap.attach(t.blocks, block_swap, device) if block_swap else None  # noqa: F841 (hooks)
    elif block_swap:
        raise ValueError(
            "block_swap: measured on a CUDA device only (on the CPU host and device are one memory)"
        )
    vae = cfg.vae
    clip = Clip(
        frames,
        height,
        width,
        1,
        512,
        vae.scale_factor_temporal,
        vae.scale_factor_spatial,
        shape.in_channels,
        shape.patch,
    )
    prec, mem = (
        precision("bf16-mixed" if bf16 else "32-true"),
        MemoryPlan(
            "80gb",
            2 if bf16 else 4,
            fp8=fp8,
            block_swap=block_swap,
            text_encoder_resident=False,
            vae_resident=False,
        ),
    )
    plan = memory_per_gpu(
        shape, train, prec, clip, Parallel(), Components(shape.params), checkpointing, mem=mem
    )
    lines = plan["lines"]
    planned = lines["total"]  # overhead 0: the CPU has no CUDA context
    x0 = torch.randn(1, shape.in_channels, clip.latent_frames, *clip.latent_hw, device=device)
    cond = torch.randn(1, 512, int(t.config.text_dim), device=device)
    sigma = torch.rand(1, device=device)
    opt = torch.optim.AdamW([p for p in t.parameters() if p.requires_grad], lr=1e-4)
    for p in opt.param_groups[0]["params"]:  # AdamW state exists, as after a first step
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    resident = sum(p.nbytes for p in t.parameters()) + sum(
        v.nbytes for st in opt.state.values() for v in st.values() if torch.is_tensor(v)
    )
    state = [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
    live = _LiveBytes([*t.parameters(), *t.buffers(), *state, x0, cond, sigma], fake=fake)
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with contextlib.nullcontext() if gpu else live.mode:
        noise = torch.randn_like(x0)
        zt = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            pred = t(hidden_states=zt, timestep=sigma * 1000, encoder_hidden_states=cond, return_dict=False)[
                0
            ]
        torch.nn.functional.mse_loss(pred.float(), noise - x0).backward()  # grads stay: counted in the peak
    if gpu:
        torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() if gpu else resident + live.peak
    return {
        "model": model,
        "blocks": blocks,
        "clip": [frames, height, width],
        "tokens": clip.tokens,
        "precision": prec.name,
        "fp8": fp8,
        "checkpointing": checkpointing,
        "fake": fake,
        "device": device,
        "block_swap": block_swap,
        "width": shape.dim,
        "planned_gib": round(planned / 2**30, 3),
        "measured_gib": round(measured / 2**30, 3),
        "measured_bytes": int(measured),
        "planned_over_measured": round(planned / measured, 3),
        "planned_activations_gib": round(lines["activations"] / 2**30, 3),
        "step_s": round(time.perf_counter() - start, 1),
    }


@section("memory")
def bench_memory(args: argparse.Namespace) -> dict:
    """Peak memory of one LoRA step at the real models' width (reduced depth) against the plan (``memory=80gb``'s
    frozen bf16 base and checkpointing where bf16 matmuls are fast, else fp32). On the CPU: tensor bytes (host and
    device are one memory, so no offload; bf16 steps on FakeTensors where bf16 crawls). On ``--device cuda``:
    ``torch.cuda.max_memory_allocated``, and block swap too (``tests/memory/test_gpu_plan.py``). ``--quick``: 17
    frames (5 latent frames), ``--tiny``: 5 frames; the full size is heavy on a small CPU."""
    max_frames = 5 if args.tiny else 17 if args.quick else None
    bf16 = bf16_autocast_supported(args.device)
    gpu = args.device.startswith("cuda")
    cases = []

    def run(name: str, spec: tuple, **kw) -> None:
        _log(f"memory: {name} ...")
        model, blocks, *clip = spec
        blocks = kw.pop("blocks", blocks)
        cases.append(
            {
                "name": name,
                **memory_case(model, blocks, *clip, max_frames=max_frames, device=args.device, **kw),
            }
        )

    for name, spec in MEMORY_CASES.items():
        variants = MEMORY_VARIANTS if name == "ti2v_5b_2blocks_480p" else {"": {}}
        for suffix, kw in variants.items():
            if max_frames is None and not kw.get("checkpointing", True) and not gpu:
                continue  # 2 blocks' activations of the full clip without checkpointing: ~17 GB of host memory
            run(name + suffix, spec, bf16=bf16, **kw)
        if (
            not bf16
        ):  # the bf16 frozen base (memory=24gb / 80gb) on FakeTensors: the allocations, no arithmetic
            run(name + "_bf16_fake", spec, bf16=True, fake=True)
    if gpu:  # 4 of 6 blocks streamed from pinned CPU memory: the plan counts the two-block window on the GPU
        run(
            "ti2v_5b_6blocks_480p_swap4",
            MEMORY_CASES["ti2v_5b_2blocks_480p"],
            bf16=bf16,
            blocks=6,
            block_swap=4,
        )
    return {"cases": cases}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = ",".join(n for n in SECTIONS if n not in OPT_IN)
    p.add_argument(
        "--only", default=default, help=f"comma-separated sections of {list(SECTIONS)} (default: {default})"
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer steps")
    p.add_argument(
        "--tiny", action="store_true", help="the smallest sizes, 1 step (a smoke run; implies --quick)"
    )
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for the loader benches")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        p.error(f"--only: unknown sections {unknown}; choose from {list(SECTIONS)}")
    args.quick = args.quick or args.tiny
    from wan2.config_resolvers import forced_precision, register

    register()  # every config a section loads may hold ${wan2.auto_precision:...} / ${wan2.latest_export:...}
    try:
        forced_precision()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

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
        "tiny": args.tiny,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
