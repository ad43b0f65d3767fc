"""Encode clips once into a latent cache (``wan2.data.cache``) so that training steps skip the VAE.

  python scripts/precompute.py --vae pretrained/vae_tiny --split train --num 6000 --out data/cache/rj-train
  python scripts/precompute.py --pipeline outputs/export --with-text --split train --num 6000 --out data/cache/rj-t
  python scripts/precompute.py --vae pretrained/vae_tiny --shards 'data/mine/shard-*.tar' --out data/cache/mine
  python scripts/precompute.py --pipeline DIR --with-text --shards data/mine_buckets --out data/cache/mine_buckets
      # a bucketed folder (make_shards.py --buckets): one cache per bucket, data/cache/mine_buckets/<FxHxW>;
      # train from them with data=shards data.train_shards=data/mine_buckets data.cache_dir=data/cache/mine_buckets

An existing cache made by the same encoders from the same data is kept as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


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
    from wan2.data.rankjump import parse_mix

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
    from wan2.data.buckets import is_bucket_folder, read_bucket_manifest

    out = Path(args.out)
    bucketed = bool(args.shards) and is_bucket_folder(args.shards)
    if bucketed:
        try:
            caches = [out / name for name in read_bucket_manifest(args.shards)["buckets"]]
        except ValueError as err:
            p.error(f"--shards: {err}")
    else:
        caches = [out]
    for c in caches:
        if c.exists() and not (c / "index.json").is_file() and (not c.is_dir() or any(c.iterdir())):
            p.error(f"--out: {str(c)!r} exists and is not a latent cache; it would be replaced")

    import torch

    from wan2.data.cache import build_latent_cache, cache_mismatch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if bucketed:
        return _bucket_caches(args, load_encoders(args.vae, args.pipeline, device))
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


def _bucket_caches(args, backbone) -> int:
    """One latent cache per bucket of a bucketed shard folder: ``--out/<FxHxW>`` (what ``data.cache_dir`` reads)."""
    from wan2.data.bucket_reader import BucketSamples, bucket_cache_info, index_folder
    from wan2.data.cache import build_latent_cache, cache_mismatch
    from wan2.data.shards import BadSampleCounter

    counter = BadSampleCounter(name="buckets")
    for name, bucket in index_folder(args.shards, counter).items():
        path, info = Path(args.out) / name, bucket_cache_info(args.shards, name)
        why = cache_mismatch(path, backbone, with_text=args.with_text, info=info)
        if why is None:
            print(f"cache {path} is up to date (same encoders, same data): nothing to do")
            continue
        if why != "no cache":
            print(f"rebuilding {path}: {why}")
        build_latent_cache(
            backbone,
            BucketSamples(bucket, counter),
            path,
            batch_size=args.batch_size,
            with_text=args.with_text,
            info=info,
            desc=f"encoding {name}",
        )
        n = len(json.loads((path / "index.json").read_text())["keys"])
        print(
            f"wrote {n} clips of bucket {name} to {path}"
            + (" with text embeddings" if args.with_text else "")
        )
    if counter.bad:
        print(f"skipped bad samples: {counter.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
