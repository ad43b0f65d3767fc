"""Write WebDataset video shards from the RankJump generator or from a folder / index of videos.

  python scripts/make_shards.py --rankjump --split train --num 2000 --out data/rankjump \\
      --height 32 --width 32 --frames 17 --fps 8 --mix rank_up=0.02,rank_down=0.33,hold=0.3,first_entry=0.35
  python scripts/make_shards.py --videos my_clips/ --out data/mine --frames 17 --fps 8
  python scripts/make_shards.py --index clips.csv --out data/mine      # columns: path, caption
"""

from __future__ import annotations

import argparse
import sys


def parse_mix(text: str) -> dict[str, float]:
    """``rank_up=0.02,hold=0.3`` -> ``{"rank_up": 0.02, "hold": 0.3}``."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--mix: {part!r} is not event=weight")
        try:
            mix[name.strip()] = float(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"--mix: {value!r} is not a number") from err
    return mix


def main(argv: list[str] | None = None) -> int:
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

    from wan2.data.ingest import ingest, read_index, scan_folder

    items = scan_folder(args.videos) if args.videos else read_index(args.index)
    if not items:
        p.error(f"no videos found in {args.videos or args.index}")
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


if __name__ == "__main__":
    sys.exit(main())
