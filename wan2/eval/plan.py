"""The plan of an evaluation: the sides (models) to compare, their sampling settings, the work items and the
metrics to run. ``plan(cfg)`` does every check that needs no model, in the order a user fixes them, and raises
a one-line ``ConfigError`` naming the key before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wan2.config_check import ConfigError
from wan2.eval.config import video_rows
from wan2.eval.registry import DEFAULT_METRICS, METRICS, Metric, load_metrics, too_small
from wan2.eval.requests import prompt_items


@dataclass
class Side:
    """One model to evaluate: an export directory and optionally a LoRA file."""

    label: str
    ckpt: str
    lora: str | None = None
    lora_scale: float = 1.0
    # this side's own steps / guidance / nfe (its wan2.json unless the config sets them): a 4-step student is
    # compared at 4 steps against a 25-step CFG teacher, on the same prompts, seeds, frames and size
    sampling: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.ckpt + (f" + {self.lora}" if self.lora else "")

    def gen(self, gen: dict) -> dict:
        """The plan's generation settings with this side's sampling settings."""
        return {**gen, **self.sampling}


@dataclass
class Plan:
    """What ``run`` does: the mode, the sides, the work items, the metrics and notes for the report."""

    mode: str  # "generate", "videos" or "compare"
    sides: list[Side]
    items: list[dict]  # {prompt, seed, meta, real}; empty in videos mode (read in run)
    metrics: list[str]
    skipped: dict[str, str]  # metric -> why it is not run
    gen: dict  # num_frames, height, width, fps, num_inference_steps, guidance_scale, nfe
    source: str  # the prompt set or video folder
    notes: list[str] = field(
        default_factory=list
    )  # things the reader of an A/B should know (vae_mismatch_note)


def read_wan2_json(ckpt: str) -> dict:
    """An export's ``wan2.json`` (sampling settings, geometry) as a dict, {} when absent: the one place
    evaluation reads it, through the typed reader of wan2.backbones (a bad file or value: one line)."""
    from wan2.backbones.files import BackboneError
    from wan2.backbones.files import read_wan2_json as read_typed

    try:
        return read_typed(ckpt).to_dict()
    except BackboneError as err:
        raise ConfigError(f"ckpt: {err}") from None


def _check_export(key: str, path) -> str:
    if path in (None, ""):
        raise ConfigError(f"{key}: no export directory given")
    p = Path(str(path))
    if not p.is_dir():
        raise ConfigError(
            f"{key}: {str(path)!r} is not a directory (train a model or point at a diffusers export)"
        )
    if not (p / "model_index.json").is_file():
        raise ConfigError(f"{key}: {str(path)!r} has no model_index.json (not a diffusers export)")
    return str(p)


def _check_lora(key: str, path) -> str | None:
    if path in (None, ""):
        return None
    p = Path(str(path))
    f = p / "pytorch_lora_weights.safetensors" if p.is_dir() else p
    if not f.is_file():
        raise ConfigError(f"{key}: {str(path)!r} does not exist")
    if f.suffix != ".safetensors":
        raise ConfigError(f"{key}: {str(path)!r} is not a .safetensors file")
    return str(f)


def _sides(cfg) -> list[Side]:
    """[A] from ckpt (+ lora), or [A, B] from compare=[A, B] where each is EXPORT or EXPORT+LORA_FILE."""
    scale = float(cfg.get("lora_scale", 1.0))
    compare = cfg.get("compare")
    if compare in (None, "", []):
        return [
            Side("model", _check_export("ckpt", cfg.ckpt), _check_lora("lora", cfg.get("lora_path")), scale)
        ]
    entries = [str(x) for x in compare] if not isinstance(compare, str) else [compare]
    if len(entries) != 2:
        raise ConfigError(f"compare: expected two models [A, B], got {len(entries)}")
    if cfg.get("lora_path"):
        raise ConfigError("lora: with compare=, give each side's LoRA as EXPORT+LORA_FILE")
    sides = []
    for label, entry in zip("AB", entries):
        ckpt, lora = entry, None
        if "+" in entry and not Path(entry).is_dir():
            ckpt, lora = entry.split("+", 1)
        sides.append(
            Side(label, _check_export(f"compare.{label}", ckpt), _check_lora(f"compare.{label}", lora), scale)
        )
    return sides


def _gen_params(cfg, ckpt: str) -> dict:
    """Frames, size, steps and guidance: config value, else the export's wan2.json, else pipeline defaults."""
    from wan2.inference import PIPELINE_DEFAULTS  # stock WanPipeline values, for a folder without wan2.json

    meta = {**PIPELINE_DEFAULTS, "rows": 5, **read_wan2_json(ckpt)}
    gen = {
        k: meta[k]
        for k in ("num_frames", "height", "width", "fps", "num_inference_steps", "guidance_scale", "rows")
    }
    for k in ("num_frames", "height", "width", "num_inference_steps", "rows"):  # wan2.json values too
        if not (isinstance(gen[k], int) and not isinstance(gen[k], bool) and gen[k] >= 1):
            raise ConfigError(f"ckpt: {Path(ckpt) / 'wan2.json'}: {k} {gen[k]!r} is not an int >= 1")
    for k in ("fps", "guidance_scale"):
        if not (isinstance(gen[k], int | float) and not isinstance(gen[k], bool) and 0 < gen[k] < 1e6):
            raise ConfigError(f"ckpt: {Path(ckpt) / 'wan2.json'}: {k} {gen[k]!r} is not a positive number")
    for k in ("num_frames", "num_inference_steps", "guidance_scale"):
        if cfg.get(k) is not None:
            gen[k] = cfg[k]  # checked by wan2.eval.config
    steps, guidance = int(gen["num_inference_steps"]), float(gen["guidance_scale"])
    gen["nfe"] = steps * 2 if guidance > 1.0 else steps  # WanPipeline runs cond + uncond per step under CFG
    return gen


def _weights_path(cfg, m: Metric):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, m.weights_key) if m.weights_key else None


def _weights_present(path, kind: str) -> bool:
    return path not in (None, "") and (
        Path(str(path)).is_dir() if kind == "dir" else Path(str(path)).is_file()
    )


def _metric_names(cfg) -> tuple[list[str], dict[str, str], bool]:
    """Metrics to run, notes on the ones left out, and whether the list was given (explicit) or automatic."""
    names = (cfg.get("metrics") or {}).get("names")
    skipped = {}
    if names is None:
        chosen = list(DEFAULT_METRICS)
        for m in METRICS.values():
            if m.weights_key is None or m.name in chosen:
                continue
            path = _weights_path(cfg, m)
            if _weights_present(path, m.weights_kind):
                chosen.append(m.name)
            elif path in (None, ""):
                skipped[m.name] = f"{m.weights_key} is not set"
            elif m.optional_weights:
                skipped[m.name] = f"{m.weights_key}: {str(path)!r} not found ({m.hint})"
            else:
                raise ConfigError(f"{m.weights_key}: {str(path)!r} not found ({m.name} needs {m.hint})")
        return chosen, skipped, False
    names = [names] if isinstance(names, str) else [str(x) for x in names]
    unknown = [x for x in names if x not in METRICS]
    if unknown or not names:
        raise ConfigError(f"metrics: {unknown or names} not in {sorted(METRICS)}")
    for x in names:
        m = METRICS[x]
        if m.weights_key and not _weights_present(_weights_path(cfg, m), m.weights_kind):
            what = _weights_path(cfg, m)
            raise ConfigError(
                f"{m.weights_key}: {str(what)!r} not found ({x} needs {m.hint})"
                if what not in (None, "")
                else f"{m.weights_key}: not set ({x} needs {m.hint})"
            )
    return list(dict.fromkeys(names)), skipped, True


def plan(cfg) -> Plan:
    """All cheap checks, in the order a user fixes them; raises a one-line ``ConfigError``."""
    load_metrics()
    metrics, skipped, explicit = _metric_names(cfg)
    if cfg.get("videos"):
        if cfg.get("compare"):
            raise ConfigError("videos: give videos= or compare=, not both")
        d = Path(str(cfg.videos))
        video_rows(d)  # the folder, its mp4s and every manifest row (wan2.eval.config)
        if "nfe_time" in metrics:
            if explicit:
                raise ConfigError("metrics: nfe_time measures generation; videos= generates nothing")
            metrics.remove("nfe_time")
            skipped["nfe_time"] = "videos= mode: nothing generated here"
        return Plan("videos", [], [], metrics, skipped, {}, str(d))
    sides = _sides(cfg)
    gen = _gen_params(cfg, sides[0].ckpt)
    for side in sides:
        own = _gen_params(cfg, side.ckpt)
        side.sampling = {k: own[k] for k in ("num_inference_steps", "guidance_scale", "nfe")}
    items, source = prompt_items(cfg, gen)
    for name in list(metrics):
        why = too_small(METRICS[name], len(items), int(gen["num_frames"]))
        if why and (explicit or METRICS[name].weights_key is None):
            raise ConfigError(why)
        if why:  # a weights metric the user did not ask for: left out with a note
            metrics.remove(name)
            skipped[name] = why
    if len(sides) == 2 and len(items) < 2:
        raise ConfigError(f"num_videos: {len(items)} video(s); a paired bootstrap CI needs at least 2")
    notes = [n for n in [vae_mismatch_note(sides)] if n]
    return Plan(
        "compare" if len(sides) == 2 else "generate", sides, items, metrics, skipped, gen, source, notes
    )


def vae_fingerprint(ckpt: str) -> str:
    """sha256 of an export's VAE weights (``vae/*.safetensors``): which decoder turns its latents into pixels."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((Path(ckpt) / "vae").glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def vae_mismatch_note(sides: list[Side]) -> str | None:
    """A/B sides that decode with different VAEs: their FD / FVD gap is partly the decoder's, not the denoiser's."""
    if len(sides) != 2 or vae_fingerprint(sides[0].ckpt) == vae_fingerprint(sides[1].ckpt):
        return None
    return (
        "A and B decode with different VAEs (vae/ weights differ): differences in RJ-FD, FVD and the reader's "
        "scores include the decoder's, not only the denoiser's"
    )
