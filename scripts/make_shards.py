"""Write WebDataset video shards from the RankJump generator or from a folder / index of videos.

  python scripts/make_shards.py --rankjump --split train --num 2000 --out data/rankjump \\
      --height 32 --width 32 --frames 17 --fps 8 --mix rank_up=0.02,rank_down=0.33,hold=0.3,first_entry=0.35
  python scripts/make_shards.py --videos my_clips/ --out data/mine --frames 17 --fps 8
  python scripts/make_shards.py --index clips.csv --out data/mine      # columns: path, caption
  python scripts/make_shards.py --videos my_clips/ --out data/mine --buckets --frames 17 --fps 8 \\
      --height 32 --width 32 --max-clips 8            # aspect / length buckets, several clips per video
  python scripts/make_shards.py --videos raw/ --out data/mine5b --buckets --model wan22_ti2v_5b \\
      --frames 81 --fps 16 --height 480 --width 832   # the 5B's buckets: sides multiples of 16 x 2 = 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def model_multiple(model: str) -> int:
    """VAE spatial stride x transformer patch size of ``configs/model/<model>.yaml`` (or a YAML path)."""
    from omegaconf import OmegaConf

    path = Path(model) if model.endswith((".yaml", ".yml")) else ROOT / "configs" / "model" / f"{model}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
        raise argparse.ArgumentTypeError(
            f"--model: no model config {str(path)!r} (allowed: {names} or a .yaml)"
        )
    cfg = OmegaConf.load(path)
    stride = int(OmegaConf.select(cfg, "vae.scale_factor_spatial", default=8))
    patch = OmegaConf.select(cfg, "transformer.patch_size", default=[1, 2, 2])
    return stride * int(patch[-1])


def main(argv: list[str] | None = None) -> int:
    from wan2.data.rankjump import parse_mix

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--rankjump", action="store_true", help="generate RankJump clips")
    src.add_argument("--videos", metavar="DIR", help="folder of videos with same-stem .txt captions")
    src.add_argument("--index", metavar="FILE", help=".csv or .jsonl with path and caption")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prefix", default=None, help="shard name prefix (default: the split, or 'shard')")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--split", default="train", help="RankJump split: train, val, test, heldout")
    p.add_argument("--num", type=int, default=1000, help="number of RankJump clips")
    p.add_argument(
        "--mix", type=parse_mix, default=None, help="RankJump event weights, e.g. rank_up=1,hold=1"
    )
    p.add_argument("--rows", type=int, default=5, help="RankJump rows on the board")
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--frames", type=int, default=17, help="frames per clip, 4k+1")
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--no-progress", action="store_true")
    b = p.add_argument_group("buckets (--videos / --index with --buckets)")
    b.add_argument(
        "--buckets",
        action="store_true",
        help="aspect and length buckets: --height x --width is the pixel budget, --frames the longest bucket",
    )
    b.add_argument(
        "--model", default="wan_tiny", help="model config whose VAE stride x patch the sides divide"
    )
    b.add_argument(
        "--multiple", type=int, default=None, help="bucket sides are multiples of this (overrides --model)"
    )
    b.add_argument("--max-aspect", type=float, default=3.0, help="widest bucket aspect ratio (and 1 / it)")
    b.add_argument("--min-frames", type=int, default=5, help="the shortest frame bucket is at least this")
    b.add_argument(
        "--clip-stride",
        type=float,
        default=None,
        help="seconds between clip starts (default: one clip length)",
    )
    b.add_argument("--max-clips", type=int, default=8, help="clips per video at most")
    b.add_argument(
        "--workers", type=int, default=1, help="processes cutting videos (the shards are the same)"
    )
    c = p.add_argument_group("captions")
    c.add_argument("--captions", metavar="FILE", help="with --videos: a .csv / .jsonl of captions by path")
    c.add_argument("--path-column", default="path", help="index column (JSONL field) holding the video path")
    c.add_argument(
        "--caption-column", default="caption", help="index column (JSONL field) holding the caption"
    )
    args = p.parse_args(argv)
    if args.frames < 1 or (args.frames - 1) % 4 != 0:
        p.error(f"--frames: {args.frames} is not 4k+1 (5, 9, 13, 17, ...)")

    if args.rankjump:
        from wan2.data.rankjump import RankJumpConfig
        from wan2.data.shards import write_rankjump_shards

        if args.prefix not in (None, args.split):
            p.error("--prefix: RankJump shards are named after --split")
        kw = {"mix": args.mix} if args.mix else {}
        if args.fps != int(args.fps):
            p.error("--fps: RankJump needs a whole number")
        try:
            cfg = RankJumpConfig(
                height=args.height,
                width=args.width,
                num_frames=args.frames,
                fps=int(args.fps),
                rows=args.rows,
                **kw,
            )
        except ValueError as err:
            p.error(str(err))
        m = write_rankjump_shards(
            args.out, args.split, args.num, cfg, shard_size=args.shard_size, progress=not args.no_progress
        )
        print(f"wrote {m['num_samples']} clips in {m['num_shards']} shards: {m['pattern']}")
        return 0

    from wan2.data.ingest import add_captions, ingest, read_index, scan_folder

    columns = {"path_column": args.path_column, "caption_column": args.caption_column}
    try:
        items = scan_folder(args.videos) if args.videos else read_index(args.index, **columns)
        if args.captions:
            if not args.videos:
                p.error("--captions: only with --videos (an --index holds its own captions)")
            items = add_captions(items, read_index(args.captions, **columns))
    except (OSError, ValueError) as err:
        p.error(str(err))
    if not items:
        p.error(f"no videos found in {args.videos or args.index}")
    if args.buckets:
        return _ingest_buckets(p, args, items)
    summary = ingest(
        items,
        args.out,
        prefix=args.prefix or "shard",
        shard_size=args.shard_size,
        num_frames=args.frames,
        fps=args.fps,
        height=args.height,
        width=args.width,
        progress=not args.no_progress,
    )
    print(summary.report())
    if summary.manifest.get("num_shards"):
        print(f"shards: {summary.manifest['pattern']}")
    return 0 if summary.written else 1


def _ingest_buckets(p: argparse.ArgumentParser, args, items) -> int:
    from wan2.data.buckets import BucketSpec
    from wan2.data.clips import ingest_buckets

    if args.prefix is not None:
        p.error("--prefix: bucketed shards are named after their bucket (FxHxW-NNNNNN.tar)")
    try:
        multiple = args.multiple if args.multiple is not None else model_multiple(args.model)
    except argparse.ArgumentTypeError as err:
        p.error(str(err))
    for name, v, low in (
        ("multiple", multiple, 1),
        ("max-clips", args.max_clips, 1),
        ("min-frames", args.min_frames, 1),
        ("workers", args.workers, 1),
    ):
        if v < low:
            p.error(f"--{name}: {v} is below {low}")
    if args.max_aspect < 1:
        p.error(f"--max-aspect: {args.max_aspect} is below 1")
    if args.clip_stride is not None and args.clip_stride <= 0:
        p.error(f"--clip-stride: {args.clip_stride} is not positive")
    if args.fps <= 0:
        p.error(f"--fps: {args.fps} is not positive")
    spec = BucketSpec.make(
        fps=args.fps,
        frames=args.frames,
        height=args.height,
        width=args.width,
        multiple=multiple,
        max_aspect=args.max_aspect,
        min_frames=args.min_frames,
        clip_stride=args.clip_stride,
        max_clips=args.max_clips,
    )
    summary = ingest_buckets(
        items, args.out, spec, shard_size=args.shard_size, progress=not args.no_progress, workers=args.workers
    )
    print(summary.report())
    if summary.written:
        print(f"shards: {args.out} (train with: data=shards data.train_shards={args.out})")
    return 0 if summary.written else 1


if __name__ == "__main__":
    sys.exit(main())
