"""`make demo`: the whole chain on 2 CPU cores, each stage skipped when its output already exists.

Default: start from the tiny base shipped in ``pretrained/`` (trained here by ``experiment=vae_tiny`` and
``experiment=pretrain_tiny``; see pretrained/README.md) and sample held-out prompts.
``--from-scratch`` retrains the VAE and the base first (about 2 hours on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run(cmd: list[str]) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")})


def stage(name: str, done: Path, cmd: list[str]) -> None:
    if done.exists():
        print(f"[demo] {name}: {done.relative_to(ROOT)} exists, skipped", flush=True)
        return
    print(f"[demo] {name} ...", flush=True)
    run(cmd)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--from-scratch", action="store_true", help="train the VAE and the base here first")
    args = p.parse_args()
    outputs = ROOT / "outputs"
    if args.from_scratch:
        vae = outputs / "vae_tiny" / "latest" / "export" / "vae"
        base = outputs / "pretrain_tiny" / "latest" / "export"
        stage("1. VAE (experiment=vae_tiny)", vae, [PY, "train.py", "experiment=vae_tiny"])
        stage("2. base (experiment=pretrain_tiny)", base,
              [PY, "train.py", "experiment=pretrain_tiny", f"model.vae_pretrained={vae}"])
    else:
        vae = ROOT / "pretrained" / "vae_tiny"
        base = ROOT / "pretrained" / "wan_tiny_base"
        for d in (vae, base):
            if not d.is_dir():
                print(f"error: {d.relative_to(ROOT)} is missing; run `make demo from_scratch=1`", file=sys.stderr)
                return 2
    stage("3. sample held-out prompts from the base", outputs / "demo" / "base_samples" / "scores.json",
          [PY, "scripts/sample.py", "--export", str(base), "--out", str(outputs / "demo" / "base_samples"),
           "--num", "32", "--events", "hold,rank_down,first_entry"])
    print(f"\n[demo] done: look at {outputs / 'demo'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
