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


def export_pipeline(backbone, out_dir: str | Path, sampling: dict | None = None) -> Path:
    """A full WanPipeline (safetensors only) plus ``wan2.json`` with the call conventions of this model.

    Stock ``diffusers.DiffusionPipeline.from_pretrained(out_dir)`` loads it; ``wan2.json`` records
    ``text_len`` (pass it as ``max_sequence_length``) and the default steps / guidance / size.
    """

    from wan2.backbones.files import Wan2Json

    # checked before anything is written (typed fields, one-line errors); ``source`` is where a loaded
    # backbone came from (WanBackbone.extra), not a call convention: never written
    fields = {k: v for k, v in {"text_len": backbone.text_len, **(sampling or {})}.items() if k != "source"}
    meta = Wan2Json.from_dict(fields, where="export wan2.json")

    def write(d: Path) -> None:
        backbone.pipeline().save_pretrained(d, safe_serialization=True)
        (d / "wan2.json").write_text(meta.to_json())
        (d / "README.md").write_text(_model_card(backbone, meta.to_dict()))

    return atomic_dir(out_dir, write)


def _model_card(backbone, meta: dict) -> str:
    from wan2.sampling_config import SAMPLE_DEFAULTS

    meta = {**SAMPLE_DEFAULTS.to_dict(), **meta}
    t = backbone.vae.config.scale_factor_temporal
    frames = meta.get("num_frames", 17)
    return f"""# wan2 export

Load with stock diffusers:

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(".")
video = pipe("the green row climbs from #4 to #1", height={meta.get("height", 32)}, width={meta.get("width", 32)},
             num_frames={frames}, num_inference_steps={meta["num_inference_steps"]},
             guidance_scale={meta["guidance_scale"]}, max_sequence_length={backbone.text_len}).frames[0]
```

- `max_sequence_length={backbone.text_len}`: the prompt length this model was trained with.
- The VAE compresses time by {t}: ask for `num_frames` = {t}k+1.
"""


def record_train_run(export_dir: str | Path, run: dict) -> list[Path]:
    """Add ``train_run`` ({id, name, dir} of the training run) to every ``wan2.json`` (full / fused exports) and
    ``wan2_lora.json`` (LoRA exports) under ``export_dir``: an evaluation of the export logs it (atomic rewrites).
    Returns the files changed."""
    import json

    from wan2.backbones.files import Wan2Json, read_wan2_json

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
