"""The files a Wan stack is loaded from, checked before anything is instantiated (torch-free).

A diffusers folder is untrusted input: ``model_index.json`` names the classes diffusers will import and call,
component folders may carry custom code, and a safetensors header is parsed before any weight. ``vet_pipeline``
(a whole ``WanPipeline`` folder) and ``vet_component`` (one model folder, e.g. a trained VAE) allow only the
(library, class) pairs the Wan pipelines use, refuse custom code (``.py`` files, ``auto_map``), pickled weights
and malformed safetensors headers, and parse ``wan2.json`` into ``Wan2Json``. Every refusal is one
``BackboneError`` line naming the file (and the key); every loader in ``wan2.backbones.stack`` calls them first.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, fields
from pathlib import Path


class BackboneError(ValueError):
    """A model config or a pretrained directory that cannot give a Wan stack."""


# ----------------------------------------------------------------------------------------------- wan2.json

WAN2_JSON = "wan2.json"


def _int_ge(lo: int):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo), f"an int >= {lo}"


def _num_ge(lo: float, open_: bool = False):
    def ok(v) -> bool:
        good = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        return good and (v > lo if open_ else v >= lo)

    return ok, f"a number {'>' if open_ else '>='} {lo}"


@dataclass
class Wan2Json:
    """``wan2.json`` beside ``model_index.json`` of a wan2 export: how the model is meant to be called.

    Every field is optional (None: not recorded; readers fall back to stock WanPipeline defaults).
    """

    text_len: int | None = None  # prompt length the model was trained with (pass as max_sequence_length)
    num_inference_steps: int | None = None  # default sampling steps
    guidance_scale: float | None = (
        None  # default classifier-free guidance (1.0: none, e.g. a distilled student)
    )
    num_frames: int | None = None  # default clip length (t_stride k + 1)
    height: int | None = None  # default frame height in pixels
    width: int | None = None  # default frame width in pixels
    fps: float | None = None  # playback rate of the training clips
    rows: int | None = None  # RankJump leaderboard rows the model was trained on
    train_run: dict | None = None  # the training run that wrote it: {id (W&B run id), name, group, dir}
    source: str | None = field(default=None, repr=False)  # legacy: older LoRA exports recorded the base path

    CHECKS = {
        "text_len": _int_ge(1),
        "num_inference_steps": _int_ge(1),
        "guidance_scale": _num_ge(0),
        "num_frames": _int_ge(1),
        "height": _int_ge(1),
        "width": _int_ge(1),
        "fps": _num_ge(0, open_=True),
        "rows": _int_ge(1),
        "train_run": (
            lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
            "an object {id, name, group, dir}",
        ),
        "source": (lambda v: isinstance(v, str), "a string"),
    }

    @classmethod
    def from_dict(cls, data, where: str = WAN2_JSON) -> Wan2Json:
        """Check every key and value; ``where`` (the file) starts each one-line ``BackboneError``."""
        if not isinstance(data, dict):
            raise BackboneError(f"{where}: must hold a JSON object, not {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        for key, value in data.items():
            if key not in known:
                raise BackboneError(f"{where}: key {key!r} is not a wan2.json field (allowed: {known[:-1]})")
            ok, allowed = cls.CHECKS[key]
            if value is not None and not ok(value):
                raise BackboneError(f"{where}: key {key!r}: {value!r} must be {allowed} (or null)")
        return cls(**data)

    def to_dict(self) -> dict:
        """The recorded fields (None and the legacy ``source`` left out), in declaration order."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "source" and getattr(self, f.name) is not None
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def read_wan2_json(folder: str | Path) -> Wan2Json:
    """The folder's ``wan2.json`` checked (one-line ``BackboneError`` naming the file and key); an empty
    ``Wan2Json`` for a folder without one (an official Wan 2.2 release)."""
    f = Path(folder) / WAN2_JSON
    if not f.is_file():
        return Wan2Json()
    return Wan2Json.from_dict(_load_json(f, "wan2.json"), where=f"wan2.json: {str(f)!r}")


# ----------------------------------------------------------------------------------------------- allow-lists

DIFFUSERS_MODELS = {
    "transformer": {("diffusers", "WanTransformer3DModel")},
    "transformer_2": {("diffusers", "WanTransformer3DModel")},
    "vae": {("diffusers", "AutoencoderKLWan")},
}
# (library, class) each WanPipeline component may name in model_index.json; nothing else is imported
PIPELINE_COMPONENTS = {
    "tokenizer": {("transformers", "T5Tokenizer"), ("transformers", "T5TokenizerFast")},
    "text_encoder": {("transformers", "UMT5EncoderModel")},
    **DIFFUSERS_MODELS,
    "scheduler": {
        ("diffusers", "FlowMatchEulerDiscreteScheduler"),
        ("diffusers", "UniPCMultistepScheduler"),
        ("diffusers", "DPMSolverMultistepScheduler"),
    },
}
OPTIONAL_COMPONENTS = ("transformer_2",)  # may be [null, null]
PIPELINE_SETTINGS = {  # the non-component WanPipeline arguments model_index.json records
    "boundary_ratio": (
        lambda v: v is None or (_num_ge(0, True)[0](v) and v < 1),
        "null or a number in (0, 1)",
    ),
    "expand_timesteps": (lambda v: isinstance(v, bool), "true or false"),
}
WEIGHT_COMPONENTS = ("transformer", "transformer_2", "vae", "text_encoder")  # folders that must hold weights
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_HEADER = 100_000_000  # bytes; the safetensors library refuses larger headers too


def _load_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise BackboneError(f"{what}: {str(path)!r} cannot be read ({type(err).__name__})") from None
    except (ValueError, RecursionError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BackboneError(f"{what}: {str(path)!r} is not valid JSON ({msg})") from None


def _pairs(allowed: set) -> list:
    return sorted([list(p) for p in allowed])


# ----------------------------------------------------------------------------------------------- checks


def check_safetensors(path: Path, key: str) -> None:
    """A safetensors file whose header fits the file: 8-byte little-endian length N, N <= file size - 8, a JSON
    object of tensors whose data offsets lie inside the file. Reads the header only, never a weight."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BackboneError(f"{key}: {str(path)!r} is not a safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise BackboneError(
                f"{key}: {str(path)!r} has a corrupt safetensors header (declares {n} header bytes, "
                f"the file has {size})"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BackboneError(f"{key}: {str(path)!r} has a corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise BackboneError(f"{key}: {str(path)!r} has a corrupt safetensors header (not a JSON object)")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = (
            isinstance(info, dict)
            and isinstance(info.get("dtype"), str)
            and isinstance(info.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"])
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"])
        )
        if not ok or not 0 <= info["data_offsets"][0] <= info["data_offsets"][1] <= data:
            raise BackboneError(
                f"{key}: {str(path)!r} has a corrupt safetensors header (tensor {str(name)[:80]!r} "
                "is malformed or lies outside the file)"
            )


def _no_custom_code(folder: Path, key: str) -> None:
    """Custom code is refused: a ``.py`` file anywhere in the folder."""
    code = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))
    if code:
        raise BackboneError(
            f"{key}: {str(folder)!r} holds custom code {code[:3]}; wan2 loads only the stock diffusers / "
            "transformers Wan classes"
        )


def _check_weights(folder: Path, key: str) -> None:
    """Weights load only from safetensors (pickles are refused) and every header is checked."""
    tensors = sorted(folder.glob("*.safetensors"))
    if not tensors:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise BackboneError(
                f"{key}: {str(folder)!r} holds pickled weights {pickles[:3]} and no .safetensors; "
                "wan2 loads safetensors only (convert them with diffusers' save_pretrained)"
            )
        raise BackboneError(f"{key}: {str(folder)!r} holds no .safetensors weights")
    for index in sorted(folder.glob("*.safetensors.index.json")):
        weight_map = _load_json(index, key)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict):
            raise BackboneError(
                f"{key}: {str(index)!r} has no weight_map object (not a sharded-weights index)"
            )
        for shard in set(weight_map.values()):
            if not (isinstance(shard, str) and Path(shard).name == shard and (folder / shard).is_file()):
                raise BackboneError(
                    f"{key}: {str(index)!r} names shard {shard!r}, which is not a file of the folder"
                )
    for f in tensors:
        check_safetensors(f, key)


def _check_config(folder: Path, component: str, pair: tuple, key: str) -> None:
    """The component's own config names the class model_index.json names; no ``auto_map`` (custom code)."""
    library, cls = pair
    if component == "scheduler":
        name = "scheduler_config.json"
    elif component == "tokenizer":
        name = "tokenizer_config.json"
    else:
        name = "config.json"
    f = folder / name
    if not f.is_file():
        if component == "tokenizer" and any(
            (folder / n).is_file() for n in ("tokenizer.json", "spiece.model")
        ):
            return
        raise BackboneError(f"{key}: {str(folder)!r} has no {name}")
    config = _load_json(f, key)
    if not isinstance(config, dict):
        raise BackboneError(f"{key}: {str(f)!r} must hold a JSON object")
    if "auto_map" in config:
        raise BackboneError(f"{key}: {str(f)!r} has auto_map (custom code); wan2 loads only stock classes")
    if library == "diffusers":
        if config.get("_class_name") != cls:
            raise BackboneError(
                f"{key}: {str(f)!r} has _class_name {config.get('_class_name')!r}, model_index.json says {cls!r}"
            )
    elif component == "tokenizer":
        tok = config.get("tokenizer_class")
        if tok is not None and tok not in ("T5Tokenizer", "T5TokenizerFast"):
            raise BackboneError(
                f"{key}: {str(f)!r} has tokenizer_class {tok!r} (allowed: T5Tokenizer, T5TokenizerFast)"
            )
    else:
        arch = config.get("architectures") or [cls]
        if arch != [cls] or config.get("model_type", "umt5") != "umt5":
            raise BackboneError(
                f"{key}: {str(f)!r} describes {arch} ({config.get('model_type')!r}), not a UMT5EncoderModel"
            )


def vet_component(
    folder: str | Path, component: str, key: str, pair: tuple | None = None, weights: bool = True
):
    """One component folder (``vae``, ``transformer``, ...): its config names an allowed class, no custom code,
    and (``weights``) safetensors weights with sound headers. ``pair``: the (library, class) expected; by
    default the one allowed diffusers class of ``component``. Returns the parsed config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BackboneError(f"{key}: {str(folder)!r} is missing (no {component} folder)")
    if pair is None:
        (pair,) = DIFFUSERS_MODELS[component]
    _no_custom_code(folder, key)
    _check_config(folder, component, pair, key)
    if weights and component in WEIGHT_COMPONENTS:
        _check_weights(folder, key)


def vet_pipeline(path: str | Path, key: str = "model.pretrained", weights: bool = True) -> dict:
    """Check a local diffusers ``WanPipeline`` folder before diffusers reads it; returns ``model_index.json``.

    ``weights=False`` checks configs only (meta-device builds read no weight: a folder of configs is enough).
    """
    path = Path(path)
    if not path.is_dir():
        raise BackboneError(f"{key}: {str(path)!r} is not a directory")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise BackboneError(f"{key}: {str(path)!r} has no model_index.json (not a diffusers export)")
    index = _load_json(index_file, key)
    if not isinstance(index, dict):
        raise BackboneError(f"{key}: {str(index_file)!r} must hold a JSON object")
    kind = index.get("_class_name")
    if kind != "WanPipeline":
        raise BackboneError(f"{key}: {str(path)!r} holds a {kind!r}, expected a WanPipeline")
    if "auto_map" in index or "custom_pipeline" in index:
        raise BackboneError(f"{key}: {str(index_file)!r} asks for custom code; wan2 loads only stock classes")
    _no_custom_code(path, key)
    pairs = {}
    for name, value in index.items():
        if name.startswith("_"):
            continue
        if name in PIPELINE_SETTINGS:
            ok, allowed = PIPELINE_SETTINGS[name]
            if not ok(value):
                raise BackboneError(f"{key}: {str(index_file)!r} key {name!r}: {value!r} must be {allowed}")
            continue
        if name not in PIPELINE_COMPONENTS:
            raise BackboneError(
                f"{key}: {str(index_file)!r} key {name!r} is not a WanPipeline component "
                f"(allowed: {sorted(PIPELINE_COMPONENTS) + sorted(PIPELINE_SETTINGS)})"
            )
        if name in OPTIONAL_COMPONENTS and value in ([None, None], None):
            continue
        pair = tuple(value) if isinstance(value, list) and len(value) == 2 else None
        if pair not in PIPELINE_COMPONENTS[name]:
            raise BackboneError(
                f"{key}: {str(index_file)!r} names {name} = {json.dumps(value)[:80]}, not an allowed class "
                f"(allowed: {_pairs(PIPELINE_COMPONENTS[name])})"
            )
        pairs[name] = pair
    missing = [c for c in PIPELINE_COMPONENTS if c not in OPTIONAL_COMPONENTS and c not in pairs]
    if missing:
        raise BackboneError(
            f"{key}: {str(index_file)!r} names no {missing[0]} (a WanPipeline needs {missing})"
        )
    for name, pair in pairs.items():
        vet_component(path / name, name, f"{key} ({name})", pair=pair, weights=weights)
    read_wan2_json(path)
    return index
