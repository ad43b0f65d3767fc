"""CLIPSIM: 100 * cos(CLIP image embedding of a frame, CLIP text embedding of the prompt), averaged over frames.

Loads a transformers ``CLIPModel`` with its image processor and tokenizer from a LOCAL directory only (no hub).
Variant: no clamp at 0 and no 2.5 weight (torchmetrics ``CLIPScore`` clamps the mean at 0; Hessel et al.'s CLIP-S
uses 2.5 * max(cos, 0) with ViT-B/32); always report the CLIP model with the number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wan2.metrics.temporal import uint8_videos

CONFIG_KEY = "metrics.clipscore.model_dir"
VARIANT = "CLIPSIM: mean over frames of 100 * cos(frame, prompt); no clamp, w = 1"


def _image_processor_cls():
    """The PIL (torchvision-free) CLIP image processor where transformers has one."""
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def _embeds(out) -> torch.Tensor:
    """Projected embeddings from ``get_*_features``: a tensor, or an output's ``pooler_output``."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class CLIPScorer:
    """Per-video CLIPSIM with a local CLIP checkpoint (``CLIPModel`` + image processor + tokenizer)."""

    def __init__(self, model_dir, device: str | torch.device = "cpu", batch_size: int = 32):
        path = Path(model_dir) if model_dir is not None else None
        if path is None or not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{CONFIG_KEY}: {str(model_dir)!r} is not a local CLIP directory with config.json "
                "(e.g. a saved openai/clip-vit-large-patch14)"
            )
        from transformers import CLIPModel, CLIPTokenizer

        self.model = (
            CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(device).eval()
        )
        self.tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
        self.image_processor = _image_processor_cls().from_pretrained(path, local_files_only=True)
        self.device, self.batch_size = device, batch_size
        self.model_name = self.model.config.name_or_path or path.name
        self.max_length = self.model.config.text_config.max_position_embeddings

    @torch.inference_mode()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """(P, D) unit-norm text embeddings."""
        tok = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        out = self.model.get_text_features(
            input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
        )
        return torch.nn.functional.normalize(_embeds(out).float(), dim=-1)

    @torch.inference_mode()
    def image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (F, H, W, 3) -> (F, D) unit-norm image embeddings."""
        out = []
        for i in range(0, len(frames), self.batch_size):
            pixels = self.image_processor(images=list(frames[i : i + self.batch_size]), return_tensors="pt")
            feats = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
            out.append(torch.nn.functional.normalize(_embeds(feats).float(), dim=-1))
        return torch.cat(out)

    def score(self, videos, prompts: list[str]) -> dict:
        """Per-video and mean CLIPSIM of videos (uint8 (N, F, H, W, 3) or float (N, 3, F, H, W) in [-1, 1])."""
        vids = uint8_videos(videos)  # (N, F, H, W, 3)
        if len(vids) != len(prompts):
            raise ValueError(f"prompts: {len(prompts)} prompts for {len(vids)} videos")
        text = self.text_embeddings(prompts)  # (N, D)
        per_video = []
        for i, frames in enumerate(vids):
            img = self.image_embeddings(frames)  # (F, D)
            per_video.append(float((100.0 * img @ text[i]).mean()))
        return {
            "metric": "clipsim",
            "per_video": per_video,
            "mean": float(np.mean(per_video)),
            "num_videos": len(per_video),
            "variant": VARIANT,
            "model": self.model_name,
        }
