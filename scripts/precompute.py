"""Encode clips once into a latent cache (``wan2.data.cache``) so that training steps skip the VAE.

  python scripts/precompute.py --vae pretrained/vae_tiny --split train --num 6000 --out data/cache/rj-train
  python scripts/precompute.py --pipeline outputs/export --with-text --split train --num 6000 --out data/cache/rj-t
  python scripts/precompute.py --vae pretrained/vae_tiny --shards 'data/mine/shard-*.tar' --out data/cache/mine

An existing cache made by the same encoders from the same data is kept as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


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


def load_encoders(vae_dir: str | None, pipeline_dir: str | None, device: str):
    """A ``WanBackbone`` holding the VAE (and, from a pipeline, the text encoder) on ``device``."""
    from wan2.backbones.stack import WanBackbone, load_backbone, load_vae

    if pipeline_dir:
        bb = load_backbone(pipeline_dir)
        bb.transformer = bb.transformer_2 = None  # not needed to encode
    else:
        bb = WanBackbone(
            tokenizer=None, text_encoder=None, vae=load_vae(vae_dir), transformer=None, scheduler=None
        )
    bb.vae.to(device).eval()
    if bb.text_encoder is not None:
        bb.text_encoder.to(device).eval()
    return bb


def shard_info(pattern: str) -> dict:
    """What identifies a set of shards: the files with their sizes and modification times."""
    from webdataset.shardlists import expand_urls

    from wan2.data.shards import expand_shards

    urls = expand_shards(pattern)
    stats = []
    for f in expand_urls(urls) if isinstance(urls, str) else urls:
        st = os.stat(f) if os.path.exists(f) else None
        stats.append([os.path.abspath(f), st.st_size if st else None, int(st.st_mtime) if st else None])
    return {"source": "shards", "files": stats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    enc = p.add_mutually_exclusive_group(required=True)
    enc.add_argument("--vae", metavar="DIR", help="a diffusers AutoencoderKLWan folder")
    enc.add_argument("--pipeline", metavar="DIR", help="a full WanPipeline export (VAE and text encoder)")
    p.add_argument("--with-text", action="store_true", help="also cache text embeddings (needs --pipeline)")
    p.add_argument("--out", required=True, help="cache folder to write")
    p.add_argument(
        "--shards", metavar="PATTERN", help="encode these shards instead of generated RankJump clips"
    )
    p.add_argument("--split", default="train", help="RankJump split: train, val, test, heldout")
    p.add_argument("--num", type=int, default=1000, help="number of RankJump clips")
    p.add_argument(
        "--mix", type=parse_mix, default=None, help="RankJump event weights, e.g. rank_up=1,hold=1"
    )
    p.add_argument("--rows", type=int, default=5, help="RankJump rows on the board")
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--frames", type=int, default=17, help="frames per clip, 4k+1")
    p.add_argument("--fps", type=int, default=8, help="RankJump frame rate")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = p.parse_args(argv)
    if args.with_text and not args.pipeline:
        p.error("--with-text: text embeddings need a text encoder; give --pipeline DIR instead of --vae")
    if args.frames < 1 or (args.frames - 1) % 4 != 0:
        p.error(f"--frames: {args.frames} is not 4k+1 (5, 9, 13, 17, ...)")
    for name in ("vae", "pipeline"):
        path = getattr(args, name)
        if path and not Path(path).is_dir():
            p.error(f"--{name}: {path!r} is not a directory")
    out = Path(args.out)
    if out.exists() and not (out / "index.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        p.error(f"--out: {str(out)!r} exists and is not a latent cache; it would be replaced")

    import torch

    from wan2.data.cache import build_latent_cache, cache_mismatch

    if args.shards:
        from wan2.data.shards import shard_dataset

        info = shard_info(args.shards)
        info.update(num_frames=args.frames, height=args.height, width=args.width)
        dataset = shard_dataset(args.shards, num_frames=args.frames, height=args.height, width=args.width)
    else:
        from wan2.data.datasets import RankJumpVideoDataset
        from wan2.data.rankjump import RankJumpConfig

        try:
            cfg = RankJumpConfig(
                height=args.height,
                width=args.width,
                num_frames=args.frames,
                fps=args.fps,
                rows=args.rows,
                **({"mix": args.mix} if args.mix else {}),
            )
            dataset = RankJumpVideoDataset(cfg, args.split, args.num)
        except ValueError as err:
            p.error(str(err))
        info = {"source": "rankjump", "split": args.split, "num": args.num, "config": asdict(cfg)}

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = load_encoders(args.vae, args.pipeline, device)
    why = cache_mismatch(out, backbone, with_text=args.with_text, info=info)
    if why is None:
        print(f"cache {out} is up to date (same encoders, same data): nothing to do")
        return 0
    if why != "no cache":
        print(f"rebuilding {out}: {why}")
    build_latent_cache(
        backbone, dataset, out, batch_size=args.batch_size, with_text=args.with_text, info=info
    )
    counter = getattr(dataset, "counter", None)
    if counter is not None and counter.bad:
        print(f"skipped bad samples: {counter.summary()}")
    n = len(json.loads((out / "index.json").read_text())["keys"])
    print(f"wrote {n} clips to {out}" + (" with text embeddings" if args.with_text else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
