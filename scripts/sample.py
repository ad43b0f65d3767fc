"""Sample held-out RankJump prompts from an export and judge the motion with the reader.

    python scripts/sample.py --export outputs/pretrain_tiny/latest/export --out outputs/demo/base --num 32

Writes ``contact_sheet.png``, one mp4 per video, ``captions.txt`` and ``scores.json`` (trajectory accuracy
overall and per event, colour accuracy) into ``--out``. ``--window-mix 1`` samples events ranked beyond the
board's rows (a window of the board); ``--boards`` continues each clip's own first frame (a TI2V export) and
adds the PSNR of the generated frame 0 against it (``frame0_psnr``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", required=True, help="a wan2 export (diffusers WanPipeline folder)")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=32, help="number of held-out prompts")
    p.add_argument("--split", default="heldout", help="RankJump split of the prompts")
    p.add_argument("--events", default="hold,rank_down,first_entry,rank_up", help="comma-separated events")
    p.add_argument("--steps", type=int, default=None, help="default: the export's wan2.json")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window-mix", type=float, default=0.0, help="share of events ranked beyond the board")
    p.add_argument("--boards", action="store_true", help="continue each clip's first frame (TI2V)")
    args = p.parse_args(argv)

    from wan2.backbones.stack import BackboneError, load_backbone
    from wan2.data.rankjump import RankJump, RankJumpConfig
    from wan2.eval.judge import judge
    from wan2.eval.report import save_samples
    from wan2.sampling import encode_first_frame, sample_videos
    from wan2.sampling_config import SAMPLE_DEFAULTS

    try:
        bb = load_backbone(args.export)
    except BackboneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    meta = bb.extra
    events = [e for e in args.events.split(",") if e]
    cfg = RankJumpConfig(
        height=meta.get("height", 32),
        width=meta.get("width", 32),
        num_frames=meta.get("num_frames", 17),
        rows=meta.get("rows", 5),
        mix={e: 1.0 for e in events},
        window_mix=args.window_mix,
    )
    clips = [RankJump(cfg, args.split, args.num)[i] for i in range(args.num)]
    steps = args.steps or meta.get("num_inference_steps", SAMPLE_DEFAULTS.num_inference_steps)
    guidance = (
        args.guidance
        if args.guidance is not None
        else meta.get("guidance_scale", SAMPLE_DEFAULTS.guidance_scale)
    )
    videos, start = [], time.time()
    for i in range(0, len(clips), args.batch):
        chunk = clips[i : i + args.batch]
        first = None
        if args.boards:  # the clip's own frame 0 (B, 3, H, W) in [-1, 1], as an app would send its board
            boards = torch.stack([torch.as_tensor(c.frames[0]) for c in chunk]).permute(0, 3, 1, 2)
            first = encode_first_frame(bb, boards.float() / 127.5 - 1.0)
        videos.append(
            sample_videos(
                bb,
                [c.caption for c in chunk],
                num_frames=cfg.num_frames,
                height=cfg.height,
                width=cfg.width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                seed=args.seed + i,
                first_latents=first,
            )
        )
        print(f"sampled {min(i + args.batch, len(clips))}/{len(clips)}", file=sys.stderr)
    video = torch.cat(videos)
    scores = judge(video, [c.meta for c in clips])
    if args.boards:  # PSNR (dB) of each generated frame 0 against its board, in uint8
        gen0 = ((video[:, :, 0].clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1)  # (B, H, W, 3)
        real0 = torch.stack([torch.as_tensor(c.frames[0]).float() for c in clips])
        mse = ((gen0 - real0) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        psnr = 10 * torch.log10(255.0**2 / mse)
        scores |= {
            "frame0_psnr": round(float(psnr.mean()), 2),
            "frame0_psnr_min": round(float(psnr.min()), 2),
        }
    scores |= {
        "boards": args.boards,
        "window_mix": args.window_mix,
        "num_videos": len(clips),
        "steps": steps,
        "guidance_scale": guidance,
        "split": args.split,
        "seconds_per_video": round((time.time() - start) / len(clips), 4),
        "export": str(args.export),
    }
    out = Path(args.out)
    save_samples(video, [c.caption for c in clips], out, fps=cfg.fps)
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    print(json.dumps(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
