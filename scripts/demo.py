"""`make demo`: the whole chain on 2 CPU cores, each stage skipped when its output already exists.

Default: start from the tiny base shipped in ``pretrained/`` (trained here by ``experiment=vae_tiny``,
``experiment=vae_tiny_decoder`` and ``experiment=pretrain_tiny``; see pretrained/README.md), sample held-out
prompts, train the rank-up LoRA, distil a 4-step student and evaluate them (about 25 minutes on 2 cores).
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
    subprocess.run(
        cmd, cwd=ROOT, check=True, env={**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    )


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
        vae0 = outputs / "vae_tiny" / "latest" / "export" / "vae"
        vae = outputs / "vae_tiny_decoder" / "latest" / "export" / "vae"
        base = outputs / "pretrain_tiny" / "latest" / "export"
        stage("1. VAE (experiment=vae_tiny)", vae0, [PY, "train.py", "experiment=vae_tiny"])
        stage(
            "1b. VAE decoder (experiment=vae_tiny_decoder)",
            vae,
            [PY, "train.py", "experiment=vae_tiny_decoder", f"model.vae_pretrained={vae0}"],
        )
        stage(
            "2. base (experiment=pretrain_tiny)",
            base,
            [PY, "train.py", "experiment=pretrain_tiny", f"model.vae_pretrained={vae}"],
        )
    else:
        vae = ROOT / "pretrained" / "vae_tiny"
        base = ROOT / "pretrained" / "wan_tiny_base"
        for d in (vae, base):
            if not d.is_dir():
                print(
                    f"error: {d.relative_to(ROOT)} is missing; run `make demo from_scratch=1`",
                    file=sys.stderr,
                )
                return 2
    stage(
        "3. sample held-out prompts from the base",
        outputs / "demo" / "base_samples" / "scores.json",
        [
            PY,
            "scripts/sample.py",
            "--export",
            str(base),
            "--out",
            str(outputs / "demo" / "base_samples"),
            "--num",
            "32",
            "--events",
            "hold,rank_down,first_entry",
        ],
    )
    lora_run = outputs / "demo" / "lora_rankup"
    stage(
        "4. rank-up LoRA (experiment=lora_rankup)",
        lora_run / "export" / "lora" / "pytorch_lora_weights.safetensors",
        [
            PY,
            "train.py",
            "experiment=lora_rankup",
            f"model.pretrained={base}",
            f"paths.output_dir={lora_run}",
            "logger=csv",
        ],
    )
    student_run = outputs / "demo" / "distill_4step"
    stage(
        "5. 4-step student (experiment=distill_4step)",
        student_run / "export" / "wan2.json",
        [
            PY,
            "train.py",
            "experiment=distill_4step",
            f"model.pretrained={base}",
            f"paths.output_dir={student_run}",
            "objective.cfg_steps=100",
            "objective.round_steps=100",
            "trainer.max_steps=400",
            "logger=csv",
        ],
    )
    lora = lora_run / "export" / "lora" / "pytorch_lora_weights.safetensors"
    stage(
        "6. evaluate base vs base + LoRA on held-out rank-up prompts",
        outputs / "demo" / "eval_lora" / "report.json",
        [
            PY,
            "evaluate.py",
            f"compare=[{base},{base}+{lora}]",
            "events=[rank_up]",
            "num_videos=32",
            f"out={outputs / 'demo' / 'eval_lora'}",
            "logger=none",
        ],
    )
    stage(
        "7. evaluate the base (its steps, CFG) vs the 4-step student",
        outputs / "demo" / "eval_student" / "report.json",
        [
            PY,
            "evaluate.py",
            f"compare=[{base},{student_run / 'export'}]",
            "num_videos=32",
            f"out={outputs / 'demo' / 'eval_student'}",
            "logger=none",
        ],
    )
    print(
        f"\n[demo] done: open {outputs / 'demo' / 'eval_lora' / 'report.html'} and "
        f"{outputs / 'demo' / 'eval_student' / 'report.html'}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
