"""Latent + text-embedding cache: encode clips with the VAE (and captions with a frozen text encoder) once.

A cache directory holds ``latents.safetensors`` (and ``text.safetensors``) plus ``index.json`` with the
encoder fingerprint (a hash of the encoder config and weights), a content hash per clip and the size and
sha256 of each tensor file. Training reads it when present; a cache made by another encoder is refused
(``StaleCacheError``), never silently used; a truncated or damaged one (sizes, checksums, the safetensors
header) is rebuilt by ``cache_mismatch``'s callers or refused (``CorruptCacheError``), never read.
Any world size can read it: it is a plain map-style dataset.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from wan2.data.datasets import collate
from wan2.export import atomic_dir, remove_leftovers


class StaleCacheError(ValueError):
    """The cache was made by a different encoder (or different data) than the one asked for."""


class CorruptCacheError(StaleCacheError):
    """A cache file is truncated or damaged (its size, checksum or header disagrees with index.json)."""


TENSOR_FILES = ("latents.safetensors", "text.safetensors")


def file_digest(path: Path) -> dict:
    """``{"bytes", "sha256"}`` of a file, read in 16 MiB pieces (about a second per GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (its header says how long it must be), or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"{path.name} is truncated (header of {n} bytes, file of {size})"
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"{path.name} has a damaged header"
    if size != 8 + n + end:
        return f"{path.name} is truncated or damaged ({size} bytes, its header says {8 + n + end})"
    return None


_verified: dict[tuple, None] = {}  # (path, size, mtime) of files whose checksum matched in this process


def cache_files_problem(cache_dir: str | Path, index: dict, with_text: bool = False) -> str | None:
    """None when every tensor file of the cache is whole (the sizes and sha256 in ``index.json`` when it has
    them, the safetensors header always), else what is wrong with which file."""
    cache_dir = Path(cache_dir)
    recorded = index.get("files") or {}
    for name in TENSOR_FILES[: 2 if with_text else 1]:
        path = cache_dir / name
        if not path.is_file():
            return f"{name} is missing"
        want = recorded.get(name)
        st = path.stat()
        if want is not None and st.st_size != want.get("bytes"):
            return f"{name} is truncated or damaged ({st.st_size} bytes, index.json says {want.get('bytes')})"
        if (problem := _safetensors_problem(path)) is not None:
            return problem
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if want is not None and key not in _verified:
            if file_digest(path)["sha256"] != want.get("sha256"):
                return f"{name} is damaged (its sha256 differs from index.json)"
            _verified[key] = None
    return None


def read_index(cache_dir: str | Path) -> dict | None:
    """``index.json`` of a cache, or None when it is missing or not valid JSON (e.g. cut short)."""
    try:
        index = json.loads((Path(cache_dir) / "index.json").read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


# Config entries that say where or how a module was loaded, not what it computes.
_CONFIG_IGNORE = {"architectures", "dtype", "torch_dtype", "transformers_version"}


_fingerprints: dict[int, tuple[tuple, str]] = {}  # id(module) -> (its tensors' identity, fingerprint)


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the module's config and every weight's bytes: changes when anything that encodes changes.

    Bookkeeping entries (``_name_or_path``, versions, dtype) are left out, so the same weights loaded from
    another path give the same fingerprint. Remembered per module while its tensors stay the same objects,
    unmodified (storage, dtype, in-place version): a bucketed folder checks one cache per bucket, and hashing a
    multi-billion-parameter text encoder takes minutes.
    """
    state = module.state_dict()
    ident = tuple((k, t.data_ptr(), t.dtype, tuple(t.shape), t._version) for k, t in state.items())
    seen = _fingerprints.get(id(module))
    if seen is not None and seen[0] == ident:
        return seen[1]
    h = hashlib.sha256()
    cfg = getattr(module, "config", None)
    if cfg is not None:
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)  # transformers / diffusers config
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in _CONFIG_IGNORE}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    _fingerprints[id(module)] = (ident, h.hexdigest()[:16])
    return _fingerprints[id(module)][1]


def content_hash(video: torch.Tensor, caption: str) -> str:
    h = hashlib.sha256(video.detach().cpu().contiguous().numpy().tobytes())
    h.update(caption.encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def build_latent_cache(
    backbone,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    batch_size: int = 16,
    with_text: bool = False,
    desc: str = "encoding latents",
    info: dict | None = None,
) -> Path:
    """Encode every sample of ``dataset`` (items with ``video``, ``caption``, ``meta``) into ``out_dir``.

    ``dataset`` may be map-style or iterable (e.g. ``shard_dataset``); ``info`` (JSON) describes the data.
    The cache appears whole or not at all: it is written to a temp folder beside ``out_dir`` and renamed; an
    exception or a preemption signal (``wan2.startup``) while encoding or writing removes the temp folder.
    A folder that cannot be written is a one-line ``ConfigError`` before anything is encoded.
    """
    from wan2.config_check import ConfigError
    from wan2.startup import dir_problem

    if (why := dir_problem(Path(out_dir).parent)) is not None:
        raise ConfigError(f"data.cache_dir: cannot write the latent cache {str(out_dir)!r}: {why}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    backbone.vae.eval()
    param = next(backbone.vae.parameters())
    lat, txt, keys, captions, metas = [], [], [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch"):
        video = batch["video"].to(param.device, param.dtype)  # (B, 3, F, H, W)
        lat.append(backbone.encode_video(video).float().cpu())  # (B, C, F', H', W')
        if with_text:
            backbone.text_encoder.eval()
            txt.append(backbone.encode_prompts(batch["caption"]).float().cpu())  # (B, L, D)
        keys += [content_hash(v, c) for v, c in zip(batch["video"], batch["caption"])]
        captions += batch["caption"]
        metas += batch["meta"]
    if not keys:
        raise ValueError(f"data.cache: no samples to encode into {str(out_dir)!r}")
    index = {
        "vae": module_fingerprint(backbone.vae),
        "text_encoder": module_fingerprint(backbone.text_encoder) if with_text else None,
        "text_len": backbone.text_len,
        "info": info,
        "keys": keys,
        "captions": captions,
        "meta": metas,
    }

    def write(d: Path) -> None:
        save_file({"latents": torch.cat(lat).contiguous()}, str(d / "latents.safetensors"))
        if with_text:
            save_file({"text_emb": torch.cat(txt).contiguous()}, str(d / "text.safetensors"))
        index["files"] = {p.name: file_digest(p) for p in sorted(d.glob("*.safetensors"))}
        (d / "index.json").write_text(json.dumps(index))

    out_dir = Path(out_dir)
    remove_leftovers(
        out_dir.parent, name=out_dir.name
    )  # half-written copies of this cache from a killed build
    try:
        return atomic_dir(out_dir, write)
    except OSError as err:  # e.g. the disk filled up while writing: the temp folder is gone already
        raise ConfigError(
            f"data.cache_dir: writing the latent cache {str(out_dir)!r} failed: {err}"
        ) from None


def cache_mismatch(
    cache_dir: str | Path, backbone, *, with_text: bool = False, info: dict | None = None
) -> str | None:
    """None when ``cache_dir`` holds a complete cache of these encoders (and this ``info``), else why not."""
    if not (Path(cache_dir) / "index.json").is_file():
        return "no cache"
    index = read_index(cache_dir)
    if index is None:
        return "index.json is damaged (not valid JSON)"
    if (problem := cache_files_problem(cache_dir, index, with_text)) is not None:
        return problem
    if index.get("vae") != module_fingerprint(backbone.vae):
        return f"made by VAE {index.get('vae')}, not {module_fingerprint(backbone.vae)}"
    if with_text:
        want = module_fingerprint(backbone.text_encoder)
        if index.get("text_encoder") != want or index.get("text_len") != backbone.text_len:
            return (
                f"text embeddings from {index.get('text_encoder')} (len {index.get('text_len')}), not {want}"
            )
    if info is not None and index.get("info") != json.loads(json.dumps(info)):
        return "made from different data"
    return None


class LatentCacheDataset(Dataset):
    """Items ``{"latents", "caption", "meta", "index"[, "text_emb"]}`` from a cache checked against ``backbone``.

    ``index`` is the item's position (a 0-d long tensor), as ``RankJumpVideoDataset`` gives it.
    """

    def __init__(self, cache_dir: str | Path, backbone, with_text: bool = False):
        cache_dir = Path(cache_dir)
        index_file = cache_dir / "index.json"
        if not index_file.is_file():
            raise FileNotFoundError(f"data.cache: no index.json in {str(cache_dir)!r}")
        index = read_index(cache_dir)
        problem = (
            "index.json is damaged" if index is None else cache_files_problem(cache_dir, index, with_text)
        )
        if problem is not None:
            raise CorruptCacheError(f"data.cache: {str(cache_dir)!r}: {problem}; delete it to rebuild it")
        want = module_fingerprint(backbone.vae)
        if index["vae"] != want:
            raise StaleCacheError(
                f"data.cache: {str(cache_dir)!r} was encoded by VAE {index['vae']}, "
                f"not by this model's VAE {want}; delete it or point elsewhere"
            )
        self.latents = load_file(str(cache_dir / "latents.safetensors"))["latents"]
        self.text_emb = None
        if with_text:
            want_t = module_fingerprint(backbone.text_encoder)
            if index.get("text_encoder") != want_t or index.get("text_len") != backbone.text_len:
                raise StaleCacheError(
                    f"data.cache: {str(cache_dir)!r} text embeddings come from text encoder "
                    f"{index.get('text_encoder')}, not {want_t}"
                )
            self.text_emb = load_file(str(cache_dir / "text.safetensors"))["text_emb"]
        self.captions, self.meta, self.keys = index["captions"], index["meta"], index["keys"]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        item = {
            "latents": self.latents[i],
            "caption": self.captions[i],
            "meta": self.meta[i],
            "index": torch.tensor(i, dtype=torch.long),
        }
        if self.text_emb is not None:
            item["text_emb"] = self.text_emb[i]
        return item
