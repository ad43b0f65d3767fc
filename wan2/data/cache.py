"""Latent + text-embedding cache: encode clips with the VAE (and captions with a frozen text encoder) once.

A cache directory holds ``latents.safetensors`` (and ``text.safetensors``) plus ``index.json`` with the
encoder fingerprint (a hash of the encoder config and weights) and a content hash per clip. Training reads
it when present; a cache made by another encoder is refused (``StaleCacheError``), never silently used.
Any world size can read it: it is a plain map-style dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from wan2.data.datasets import collate
from wan2.export import atomic_dir


class StaleCacheError(ValueError):
    """The cache was made by a different encoder (or different data) than the one asked for."""


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the module's config and every weight's bytes: changes when anything that encodes changes."""
    h = hashlib.sha256()
    cfg = getattr(module, "config", None)
    if cfg is not None:
        h.update(json.dumps(dict(cfg), sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def content_hash(video: torch.Tensor, caption: str) -> str:
    h = hashlib.sha256(video.detach().cpu().contiguous().numpy().tobytes())
    h.update(caption.encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def build_latent_cache(backbone, dataset: Dataset, out_dir: str | Path, *, batch_size: int = 16,
                       with_text: bool = False, desc: str = "encoding latents") -> Path:
    """Encode every sample of ``dataset`` (items with ``video``, ``caption``, ``meta``) into ``out_dir``."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    backbone.vae.eval()
    lat, txt, keys, captions, metas = [], [], [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch"):
        lat.append(backbone.encode_video(batch["video"]).float())  # (B, C, F', H', W')
        if with_text:
            backbone.text_encoder.eval()
            txt.append(backbone.encode_prompts(batch["caption"]).float())  # (B, L, D)
        keys += [content_hash(v, c) for v, c in zip(batch["video"], batch["caption"])]
        captions += batch["caption"]
        metas += batch["meta"]
    index = {
        "vae": module_fingerprint(backbone.vae),
        "text_encoder": module_fingerprint(backbone.text_encoder) if with_text else None,
        "text_len": backbone.text_len,
        "keys": keys,
        "captions": captions,
        "meta": metas,
    }

    def write(d: Path) -> None:
        save_file({"latents": torch.cat(lat).contiguous()}, str(d / "latents.safetensors"))
        if with_text:
            save_file({"text_emb": torch.cat(txt).contiguous()}, str(d / "text.safetensors"))
        (d / "index.json").write_text(json.dumps(index))

    return atomic_dir(out_dir, write)


class LatentCacheDataset(Dataset):
    """Items ``{"latents", "caption", "meta"[, "text_emb"]}`` from a cache checked against ``backbone``."""

    def __init__(self, cache_dir: str | Path, backbone, with_text: bool = False):
        cache_dir = Path(cache_dir)
        index_file = cache_dir / "index.json"
        if not index_file.is_file():
            raise FileNotFoundError(f"data.cache: no index.json in {str(cache_dir)!r}")
        index = json.loads(index_file.read_text())
        want = module_fingerprint(backbone.vae)
        if index["vae"] != want:
            raise StaleCacheError(f"data.cache: {str(cache_dir)!r} was encoded by VAE {index['vae']}, "
                                  f"not by this model's VAE {want}; delete it or point elsewhere")
        self.latents = load_file(str(cache_dir / "latents.safetensors"))["latents"]
        self.text_emb = None
        if with_text:
            want_t = module_fingerprint(backbone.text_encoder)
            if index.get("text_encoder") != want_t or index.get("text_len") != backbone.text_len:
                raise StaleCacheError(f"data.cache: {str(cache_dir)!r} text embeddings come from text encoder "
                                      f"{index.get('text_encoder')}, not {want_t}")
            self.text_emb = load_file(str(cache_dir / "text.safetensors"))["text_emb"]
        self.captions, self.meta, self.keys = index["captions"], index["meta"], index["keys"]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        item = {"latents": self.latents[i], "caption": self.captions[i], "meta": self.meta[i]}
        if self.text_emb is not None:
            item["text_emb"] = self.text_emb[i]
        return item
