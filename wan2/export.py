"""The one place that writes exports: diffusers-format directories and files, always atomically.

A directory is written under a temporary sibling name and swapped in with ``os.replace``; a kill at any
moment leaves either the previous export or the new one, never a half-written one under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from wan2.backbones.files import BackboneError, read_wan2_json


def atomic_dir(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` then move ``tmp_dir`` to ``target`` (replacing an older one)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; exports are meant to be shared
    try:
        write(tmp)
        _share(tmp)
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def swap_in(tmp: Path, target: Path) -> None:
    """Move the finished directory ``tmp`` to ``target`` in one step, replacing (and deleting) an older one."""
    if not target.exists():
        os.replace(tmp, target)
    elif _exchange(tmp, target):  # one syscall: the old and the new swap names
        shutil.rmtree(tmp, ignore_errors=True)
    else:  # no renameat2: a short window in which only the .old copy exists
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)


# What a killed atomic write leaves next to its target: ``.NAME.tmp-*`` (atomic_dir, atomic_write_text,
# AtomicCheckpointIO, link_or_copy), ``.NAME.old-*`` (swap_in without renameat2), ``NAME.ckpt.tmp``
# (FSDP2Strategy's sharded checkpoints).
LEFTOVER_PATTERNS = (".*.tmp-*", ".*.old-*", "*.ckpt.tmp")


def remove_leftovers(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete the leftovers of killed writes in ``folder`` (only those of target ``name`` when given); returns
    them. Call it where no other process is writing: at the start of a run in its own run folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted({p for pattern in LEFTOVER_PATTERNS for p in folder.glob(pattern)})
    if name is not None:
        found = [p for p in found if p.name.startswith((f".{name}.tmp-", f".{name}.old-", f"{name}.tmp"))]
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False where that is unavailable."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _share(root: Path) -> None:
    """Make an export readable by everyone (some writers leave 0600 temp files behind)."""
    for p in root.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.chmod(tmp, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def export_vae(vae, out_dir: str | Path) -> Path:
    """A trained VAE alone, as ``AutoencoderKLWan.from_pretrained`` reads it."""
    return atomic_dir(out_dir, lambda d: vae.save_pretrained(d, safe_serialization=True))


def export_pipeline(
    backbone, out_dir: str | Path, sampling: dict | None = None, card: dict | None = None
) -> Path:
    """A full WanPipeline (safetensors only) plus ``wan2.json`` with the call conventions of this model and a
    model card ``README.md`` (Hub metadata; ``card``: what ``card_info`` gathers about the training run).

    Stock ``diffusers.DiffusionPipeline.from_pretrained(out_dir)`` loads it; ``wan2.json`` records
    ``text_len`` (pass it as ``max_sequence_length``) and the default steps / guidance / size.
    """

    from wan2.backbones.files import Wan2Json

    # checked before anything is written (typed fields, one-line errors); ``source`` is where a loaded
    # backbone came from (WanBackbone.extra), not a call convention: never written
    fields = {k: v for k, v in {"text_len": backbone.text_len, **(sampling or {})}.items() if k != "source"}
    meta = Wan2Json.from_dict(fields, where="export wan2.json")
    card = {"base_model": backbone.extra.get("source"), **(card or {})}
    card["time_compression"] = backbone.vae.config.scale_factor_temporal

    def write(d: Path) -> None:
        backbone.pipeline().save_pretrained(d, safe_serialization=True)
        (d / "wan2.json").write_text(meta.to_json())
        (d / "README.md").write_text(model_card(meta.to_dict(), card))

    return atomic_dir(out_dir, write)


# ----------------------------------------------------------------------------------------------- model cards
# Hub model-card metadata: https://huggingface.co/docs/hub/model-cards (YAML front matter between --- lines)
DEFAULT_LICENSE = "apache-2.0"  # Wan2.2's license; the run's own value comes from ``export.license``


def _front_matter(base_model: str | None, tags: list[str], license: str | None) -> str:
    import yaml

    meta = {
        "library_name": "diffusers",
        "pipeline_tag": "text-to-video",
        "license": license or DEFAULT_LICENSE,
        "tags": list(dict.fromkeys(t for t in tags if t)),
    }
    if base_model:
        meta["base_model"] = str(base_model)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _training_lines(card: dict) -> str:
    """How it was trained and what it scored, as Markdown bullets (only what is known)."""
    lines = []
    if card.get("experiment"):
        lines.append(f"- Experiment: `{card['experiment']}` (objective `{card.get('objective') or '?'}`)")
    if card.get("steps") is not None:
        lines.append(f"- Training steps: {card['steps']}")
    if card.get("base_model"):
        lines.append(f"- Fine-tuned from: `{card['base_model']}`")
    if card.get("run_dir"):
        lines.append(f"- Run folder: `{card['run_dir']}` (config in `.hydra/config.yaml`)")
    metrics = {k: v for k, v in (card.get("metrics") or {}).items() if isinstance(v, (int, float))}
    if metrics:
        lines.append("\n| metric | value |\n|---|---|")
        lines += [f"| `{k}` | {v:.6g} |" for k, v in sorted(metrics.items())]
    return "\n".join(lines) if lines else "- No training record (exported directly, not by `train.py`)."


def _tags(card: dict, *extra: str) -> list[str]:
    return ["wan2", "wan", "text-to-video", *extra, card.get("objective")]


def _call(meta: dict, text_len: int | None) -> str:
    """The stock-diffusers call at this model's exported size, steps and guidance (laid out as ruff formats
    it: ``make lint`` formats the Python blocks of Markdown files too)."""
    from wan2.sampling_config import SAMPLE_DEFAULTS

    meta = {**SAMPLE_DEFAULTS.to_dict(), **{k: v for k, v in meta.items() if v is not None}}
    args = [
        '"the green row climbs from #4 to #1"',
        f"height={meta.get('height', 32)}",
        f"width={meta.get('width', 32)}",
        f"num_frames={meta.get('num_frames', 17)}",
        f"num_inference_steps={meta['num_inference_steps']}",
        f"guidance_scale={meta['guidance_scale']}",
    ] + ([f"max_sequence_length={text_len}"] if text_len else [])
    lines = "".join(f"    {a},\n" for a in args)
    return (
        f'video = pipe(\n{lines}).frames[0]\nexport_to_video(video, "video.mp4", fps={meta.get("fps") or 8})'
    )


def model_card(meta: dict, card: dict | None = None) -> str:
    """README.md of a full export: Hub front matter, what it is, how it was trained, how to load it."""
    card = card or {}
    text_len = meta.get("text_len")
    t = card.get("time_compression") or 4
    return f"""{_front_matter(card.get("base_model"), _tags(card), card.get("license"))}
# wan2 export{": " + card["experiment"] if card.get("experiment") else ""}

A Wan 2.x text-to-video pipeline (diffusers `WanPipeline` format, safetensors) written by wan2's
`wan2/export.py`; `wan2.json` records its call conventions.

## Training

{_training_lines(card)}

## Load with stock diffusers

```python
from diffusers import DiffusionPipeline
from diffusers.utils import export_to_video

pipe = DiffusionPipeline.from_pretrained("PATH/TO/THIS/FOLDER")
{_call(meta, text_len)}
```

- `max_sequence_length={text_len}`: the prompt length this model was trained with.
- `export_to_video` needs OpenCV or imageio (`pip install opencv-python`).
- Ask for `num_frames` = {t}k+1 (the VAE compresses time by {t}).
"""


def record_train_run(export_dir: str | Path, run: dict) -> list[Path]:
    """Add ``train_run`` ({id, name, dir} of the training run) to every ``wan2.json`` (full / fused exports) and
    ``wan2_lora.json`` (LoRA exports) under ``export_dir``: an evaluation of the export logs it (atomic rewrites).
    Returns the files changed."""
    import json

    from wan2.backbones.files import Wan2Json

    root = Path(export_dir)
    changed = []
    for f in sorted([*root.glob("wan2.json"), *root.glob("*/wan2.json")]):
        meta = read_wan2_json(f.parent)
        meta.train_run = Wan2Json.from_dict({"train_run": run}, where=str(f)).train_run
        changed.append(atomic_write_text(f, meta.to_json()))
    for f in sorted(root.glob("*/wan2_lora.json")):
        extra = json.loads(f.read_text() or "{}")
        changed.append(atomic_write_text(f, json.dumps({**extra, "train_run": run}, indent=2)))
    return changed


def lora_card(lora_meta: dict, base_meta: dict | None = None, card: dict | None = None) -> str:
    """README.md of a LoRA export: front matter with the base model, and the load_lora_weights recipe."""
    card = {**(card or {}), "base_model": lora_meta.get("base") or (card or {}).get("base_model")}
    base = card["base_model"] or "PATH/TO/THE/BASE/EXPORT"
    into2 = ", load_into_transformer_2=True" if lora_meta.get("load_into_transformer_2") else ""
    expert = lora_meta.get("expert")
    where = f" on the {expert}-noise expert" if expert in ("high", "low") else ""
    base_meta = base_meta or {}
    return f"""{_front_matter(card["base_model"], _tags(card, "lora"), card.get("license"))}
# wan2 LoRA{": " + card["experiment"] if card.get("experiment") else ""}

A LoRA adapter (rank {lora_meta.get("rank", "?")}, targets `{lora_meta.get("targets", "?")}`{where}) for the
`{lora_meta.get("component", "transformer")}` of the base pipeline `{base}`, in the diffusers
`pytorch_lora_weights.safetensors` format (`adapter_config.json`: PEFT; `wan2_lora.json`: wan2's record).

## Training

{_training_lines(card)}

## Load with stock diffusers

```python
from diffusers import DiffusionPipeline
from diffusers.utils import export_to_video

pipe = DiffusionPipeline.from_pretrained("{base}")
pipe.load_lora_weights("PATH/TO/THIS/FOLDER", weight_name="pytorch_lora_weights.safetensors"{into2})
{_call(base_meta, base_meta.get("text_len"))}
```

`export_to_video` needs OpenCV or imageio (`pip install opencv-python`).
"""


def card_info(cfg, module, metrics: dict, run_dir: Path) -> dict:
    """What a training run tells its model cards: experiment, objective, steps, base, license, metrics."""
    objective = getattr(getattr(module, "Config", None), "NAME", None)
    return {
        "experiment": cfg.get("name"),
        "objective": objective,
        "steps": metrics.get("global_step"),
        "base_model": (cfg.get("model") or {}).get("pretrained"),
        "license": (cfg.get("export") or {}).get("license"),
        "run_dir": str(run_dir),
        "metrics": {k: v for k, v in metrics.items() if "/" in k},
    }


def write_model_cards(export_dir: str | Path, card: dict) -> list[Path]:
    """Rewrite README.md of every full export and LoRA export in ``export_dir`` (itself and its subfolders)
    with what the training run knows (``card``: experiment, objective, steps, license, metrics); returns them."""
    export_dir = Path(export_dir)
    written = []
    for d in (
        [export_dir, *sorted(p for p in export_dir.glob("*") if p.is_dir())] if export_dir.is_dir() else []
    ):
        if (d / "model_index.json").is_file() and (d / "wan2.json").is_file():
            meta = read_wan2_json(d).to_dict()
            t = _read_json(d / "vae" / "config.json").get("scale_factor_temporal")
            written.append(
                atomic_write_text(d / "README.md", model_card(meta, {**card, "time_compression": t}))
            )
        elif (d / "pytorch_lora_weights.safetensors").is_file():
            lora_meta = _read_json(d / "wan2_lora.json")
            try:
                base_meta = read_wan2_json(lora_meta["base"]).to_dict() if lora_meta.get("base") else {}
            except (BackboneError, OSError):  # a base moved or broken since: the card says less
                base_meta = {}
            written.append(atomic_write_text(d / "README.md", lora_card(lora_meta, base_meta, card)))
    return written


def _read_json(path: Path) -> dict:
    """A small JSON object file, or {} when absent / unreadable (a card is written with what is known)."""
    import json

    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
