"""Generate rank-event videos: one mp4 per prompt or per JSONL event, written atomically into --out.

    python scripts/generate.py --model EXPORT --events events.jsonl --out videos/ [--profile fast]
    python scripts/generate.py --model EXPORT --prompt "the green row climbs from #3 to #2" --out videos/
    python scripts/generate.py --ab EXPORT_A EXPORT_B --rollout 0.1 --events events.jsonl --out videos/

A bad event line is reported and skipped; videos already written stay. ``--out/manifest.jsonl`` has one row
per video (path, variant, model, prompt, seconds, steps, seed, line); user names only with --include-user.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _read_meta(model_dir: str) -> dict:
    """The export's wan2.json ({} for a directory without one), read before loading the model."""
    f = Path(model_dir) / "wan2.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def read_items(args) -> tuple[list[dict], list[str]]:
    """Work items ``{line, prompt, seed, user_id, user}`` and the error lines of skipped input."""
    from wan2.prompts import event_to_prompt

    if args.prompt:
        return [
            {"line": i + 1, "prompt": p, "seed": args.seed + i, "user_id": None, "user": None}
            for i, p in enumerate(args.prompt)
        ], []
    rows = min(_read_meta(d).get("rows", 5) for d in (args.ab or [args.model]))
    items, errors = [], []
    for n, text in enumerate(Path(args.events).read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            event = json.loads(text)
            prompt = event_to_prompt(event, tone=args.tone, style=args.style, rows=rows)
            user_id = event.get("user_id", event.get("user"))
            if args.ab and user_id is None:
                raise ValueError("user_id: missing (--ab routes by user_id, or user)")
        except (ValueError, AttributeError) as err:  # json.JSONDecodeError is a ValueError
            errors.append(f"line {n}: skipped: {str(err).splitlines()[0]}")
            continue
        items.append(
            {
                "line": n,
                "prompt": prompt,
                "seed": args.seed + n - 1,
                "user_id": user_id,
                "user": event.get("user"),
            }
        )
    return items, errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a text prompt (repeatable)")
    src.add_argument("--events", help="JSONL file, one leaderboard event per line")
    models = p.add_mutually_exclusive_group(required=True)
    models.add_argument("--model", help="a wan2 export or a Wan 2.2 diffusers directory")
    models.add_argument("--ab", nargs=2, metavar=("A_DIR", "B_DIR"), help="route users between two models")
    p.add_argument("--rollout", type=float, default=0.1, help="with --ab: the fraction of users sent to B")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--profile", choices=("fast", "standard"), default="standard")
    p.add_argument("--steps", type=int, default=None, help="override the profile's inference steps")
    p.add_argument("--batch", type=int, default=4, help="videos per pipeline call")
    p.add_argument("--seed", type=int, default=0, help="line N uses seed + N - 1")
    p.add_argument("--lora", action="append", default=[], help="a LoRA file or folder (repeatable)")
    p.add_argument(
        "--lora-scale",
        type=float,
        action="append",
        default=None,
        help="one scale for all LoRAs, or one per --lora",
    )
    p.add_argument("--tone", default=None, help="event tone (wan2.prompts.TONES)")
    p.add_argument("--style", default=None, help="style words appended to event prompts")
    p.add_argument("--include-user", action="store_true", help="record user names in manifest.jsonl")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None)
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be >= 1")
    if args.ab and not args.events:
        p.error("--ab needs --events (each event's user_id picks the variant)")

    from tqdm import tqdm

    from wan2.backbones.stack import BackboneError
    from wan2.export import atomic_write_text
    from wan2.inference import Wan2T2V, assign_variant, save_video
    from wan2.lora.adapters import LoraFileError

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("wan2").setLevel(logging.INFO)  # frame-count notes
    items, errors = read_items(args)
    for e in errors:
        print(e, file=sys.stderr)
    variants = {"A": args.ab[0], "B": args.ab[1]} if args.ab else {None: args.model}
    for it in items:
        it["variant"] = assign_variant(str(it["user_id"]), args.rollout) if args.ab else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], len(errors)
    scales = args.lora_scale if args.lora_scale is None or len(args.lora_scale) > 1 else args.lora_scale[0]
    bar = tqdm(total=len(items), unit="video", file=sys.stderr)
    for variant, model_dir in variants.items():
        todo = [it for it in items if it["variant"] == variant]
        if not todo:
            continue
        try:
            model = Wan2T2V.from_pretrained(
                model_dir, device=args.device, dtype=args.dtype, lora=args.lora or None, lora_scales=scales
            )
        except (BackboneError, LoraFileError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        kwargs = model.profile(args.profile)
        if args.steps is not None:
            kwargs["num_inference_steps"] = args.steps
        for i in range(0, len(todo), args.batch):
            chunk = todo[i : i + args.batch]
            try:
                videos = model.generate(
                    [it["prompt"] for it in chunk], seed=[it["seed"] for it in chunk], **kwargs
                )
            except (ValueError, RuntimeError) as err:
                failed += len(chunk)
                for it in chunk:
                    tqdm.write(f"line {it['line']}: failed: {str(err).splitlines()[0]}", file=sys.stderr)
                bar.update(len(chunk))
                continue
            for it, video in zip(chunk, videos):
                path = save_video(video, out / f"{it['line']:05d}.mp4")
                row = {
                    "path": str(path),
                    "variant": variant,
                    "model": str(model_dir),
                    "prompt": video.prompt,
                    "seconds": round(video.seconds, 3),
                    "steps": video.steps,
                    "seed": video.seed,
                    "line": it["line"],
                    "num_frames": video.num_frames,
                }
                if args.include_user:
                    row["user"] = it["user"]
                rows.append(row)
                tqdm.write(f"{path}  {video.seconds:.2f}s  {video.steps} steps")
            rows.sort(key=lambda r: r["line"])
            atomic_write_text(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            bar.update(len(chunk))
        del model
    bar.close()
    print(f"wrote {len(rows)} videos to {out}, skipped {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
