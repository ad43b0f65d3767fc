"""In-domain RankJump Frechet distance (RJ-FD) and text-video score (RJ-TV) from a small video-text encoder.

The encoder (a 3D-conv video tower and a small transformer text tower over the repo's offline tokenizer) is
trained CLIP-style on RankJump clips of all four events by ``python train.py experiment=rankjump_encoder``;
the shipped one lives in ``pretrained/rankjump_encoder``. These are the project's own metrics for the synthetic
leaderboard domain: they are not FVD or CLIPScore and are not comparable to any published number.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from wan2.metrics.encoder_config import EncoderSizes
from wan2.metrics.frechet import frechet_distance_from_features

CONFIG_KEY = "metrics.indomain.encoder_dir"
KIND = "wan2_rankjump_encoder"
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "encoder.json"
FD_NAME = "RJ-FD (in-domain Frechet distance of RankJump encoder video embeddings; not FVD)"
TV_NAME = "RJ-TV (in-domain 100 * cos(video, caption) of the RankJump encoder; not CLIPScore)"


class EncoderLoadError(ValueError):
    """An encoder directory that cannot be loaded; the message is one line naming the path or key."""


@lru_cache(maxsize=4)
def _tokenizer(text_len: int):
    from wan2.backbones.tokenizer import build_tokenizer

    return build_tokenizer(text_len)


def vocabulary_hash() -> str:
    """Short hash of the offline tokenizer's vocabulary: an encoder is only valid with the vocabulary it saw."""
    from wan2.backbones.tokenizer import vocabulary

    return hashlib.sha256(json.dumps(vocabulary()).encode()).hexdigest()[:12]


@dataclass
class EncoderConfig(EncoderSizes):
    """The sizes (``EncoderSizes``, declared once there) plus the vocabulary the text tower was built for."""

    vocab_size: int = 0  # 0: the offline tokenizer's size
    vocab_hash: str = ""  # "": the offline tokenizer's vocabulary hash

    def __post_init__(self):
        if self.vocab_size <= 0:
            self.vocab_size = len(_tokenizer(self.text_len))
        if not self.vocab_hash:
            self.vocab_hash = vocabulary_hash()


def _down(size: int, times: int) -> int:
    """Output length of ``times`` stride-2 convs with kernel 3 and padding 1."""
    for _ in range(times):
        size = (size - 1) // 2 + 1
    return size


def _conv_block(c_in: int, c_out: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(4, c_out), nn.SiLU()
    )


class VideoEncoder(nn.Module):
    """Width pooled, 3D convs (temporal kernels: frame order matters), a linear map of the (channel, time, row) grid.

    A leaderboard's content is in its rows: averaging columns first keeps rank, colour and motion and makes the
    tower cheap on CPU. Time and height stay in the flattened features, so where the highlighted row is at the
    start and at the end of the clip (its ranks) reaches the embedding.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.width % cfg.pool_width:
            raise ValueError(f"pool_width: {cfg.pool_width} does not divide width {cfg.width}")
        c, self.pool = cfg.channels, cfg.pool_width
        self.convs = nn.Sequential(
            _conv_block(3, c, (1, 2, 2)),  # (B, c, F, H/2, W'/2)
            _conv_block(c, 2 * c, (2, 2, 2)),  # (B, 2c, F/2, H/4, W'/4)
            _conv_block(2 * c, 4 * c, (2, 2, 2)),  # (B, 4c, F/4, H/8, W'/8)
        )
        t, h = _down(cfg.num_frames, 2), _down(cfg.height, 3)
        self.head = nn.Linear(4 * c * t * h, cfg.embed_dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = reduce(video, "b c f h (w k) -> b c f h w", "mean", k=self.pool)  # (B, 3, F, H, W / pool)
        x = self.convs(x)  # (B, C, T, H', W'')
        x = reduce(x, "b c t h w -> b (c t h)", "mean")  # average over the remaining width
        return self.head(x)  # (B, D)


class TextEncoder(nn.Module):
    """Token + position embeddings, a small pre-norm transformer, masked mean pool, linear map."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.text_dim, padding_idx=0)
        self.positions = nn.Parameter(torch.randn(cfg.text_len, cfg.text_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.text_dim, cfg.text_heads, 2 * cfg.text_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_dim)
        self.head = nn.Linear(cfg.text_dim, cfg.embed_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions[: ids.shape[1]]  # (B, L, d)
        x = self.norm(self.blocks(x, src_key_padding_mask=~mask))  # (B, L, d)
        m = mask.unsqueeze(-1).float()  # (B, L, 1)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, d)
        return self.head(pooled)  # (B, D)


class RankJumpEncoder(nn.Module):
    """Video and caption towers into one unit-norm embedding space, with a learned CLIP temperature."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.video = VideoEncoder(cfg)
        self.text = TextEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def prepare_video(self, video: torch.Tensor) -> torch.Tensor:
        """Float (B, 3, F, H, W) in [-1, 1], resized (trilinear) to the geometry the encoder was trained on."""
        size = (self.cfg.num_frames, self.cfg.height, self.cfg.width)
        video = video.float()
        if tuple(video.shape[2:]) != size:
            video = F.interpolate(video, size=size, mode="trilinear", align_corners=False)
        return video

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> (B, D) unit-norm."""
        return F.normalize(self.video(self.prepare_video(video)), dim=-1)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (B, text_len) from the repo's offline tokenizer."""
        tok = _tokenizer(self.cfg.text_len)(
            list(captions),
            padding="max_length",
            max_length=self.cfg.text_len,
            truncation=True,
            return_tensors="pt",
        )
        device = self.logit_scale.device
        return tok.input_ids.to(device), tok.attention_mask.bool().to(device)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions -> (B, D) unit-norm."""
        return F.normalize(self.text(*self.tokenize(captions)), dim=-1)


def contrastive_loss(
    v: torch.Tensor, t: torch.Tensor, logit_scale: torch.Tensor, same: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over unit-norm video (B, D) / text (B, D) embeddings.

    ``same`` (B, B) bool marks pairs that describe the same clip content (same event, ranks, colour): they are
    all positives (the target spreads over them), so a caption is never pushed away from its own twin.
    """
    logits = logit_scale.exp().clamp(max=100.0) * v @ t.T  # (B, B)
    target = same.float() / same.float().sum(1, keepdim=True)  # (B, B), rows sum to 1
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))


# ----------------------------------------------------------------------------- save / load


def save_encoder(encoder: RankJumpEncoder, path: str | Path, info: dict | None = None) -> Path:
    """Write ``encoder.safetensors`` + ``encoder.json`` (kind, config, training info) atomically to ``path``."""
    from safetensors.torch import save_file

    from wan2.export import atomic_dir

    meta = {
        "kind": KIND,
        "config": asdict(encoder.cfg),
        "info": info or {},
        "metrics": {"fd": FD_NAME, "text_video": TV_NAME},
    }

    def write(d: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        save_file(state, str(d / WEIGHTS_FILE))
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    return atomic_dir(path, write)


def load_encoder(path, device: str | torch.device = "cpu") -> RankJumpEncoder:
    """Read an encoder directory written by ``save_encoder``; anything else is a one-line ``EncoderLoadError``."""
    from safetensors.torch import load_file

    root = Path(path) if path not in (None, "") else None
    if root is None or not root.is_dir():
        raise EncoderLoadError(
            f"{CONFIG_KEY}: {str(path)!r} is not a directory "
            "(train one with `python train.py experiment=rankjump_encoder`)"
        )
    cfg_file, weights = root / CONFIG_FILE, root / WEIGHTS_FILE
    if not cfg_file.is_file() or not weights.is_file():
        raise EncoderLoadError(
            f"{CONFIG_KEY}: {str(root)!r} has no {CONFIG_FILE} + {WEIGHTS_FILE}; "
            "it is not a RankJump encoder (experiment=rankjump_encoder writes export/encoder)"
        )
    try:
        meta = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise EncoderLoadError(f"{cfg_file}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        kind = meta.get("kind") if isinstance(meta, dict) else None
        raise EncoderLoadError(f"{cfg_file}: kind is {kind!r}, not {KIND!r}; not a RankJump encoder")
    known = {f.name for f in fields(EncoderConfig)}
    spec = meta.get("config") or {}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise EncoderLoadError(f"{cfg_file}: config has unknown keys {unknown}")
    cfg = EncoderConfig(**spec)
    if cfg.vocab_hash != vocabulary_hash():
        raise EncoderLoadError(
            f"{cfg_file}: config.vocab_hash {cfg.vocab_hash!r} is not this repo's tokenizer "
            f"vocabulary ({vocabulary_hash()!r}); retrain with experiment=rankjump_encoder"
        )
    encoder = RankJumpEncoder(cfg)
    try:
        encoder.load_state_dict(load_file(str(weights)))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise EncoderLoadError(f"{weights}: weights do not match {CONFIG_FILE} ({first})") from None
    return encoder.to(device).eval()


# ----------------------------------------------------------------------------- metrics


def as_float_videos(videos) -> torch.Tensor:
    """uint8 (N, F, H, W, 3) or float (N, 3, F, H, W) in [-1, 1], tensor / array / list -> float (N, 3, F, H, W)."""
    if isinstance(videos, (list, tuple)):
        videos = [torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in videos]
        videos = torch.stack(videos) if videos else torch.zeros(0, 3, 1, 1, 1)
    x = torch.as_tensor(videos) if not isinstance(videos, torch.Tensor) else videos
    if x.ndim != 5:
        raise ValueError(
            f"videos: expected 5 dims (N, 3, F, H, W) or (N, F, H, W, 3), got shape {tuple(x.shape)}"
        )
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"videos: uint8 videos must be (N, F, H, W, 3), got {tuple(x.shape)}")
        return rearrange(x.float() / 127.5 - 1.0, "n f h w c -> n c f h w")
    if x.shape[1] != 3:
        raise ValueError(f"videos: float videos must be (N, 3, F, H, W) in [-1, 1], got {tuple(x.shape)}")
    return x.float().clamp(-1, 1)


@torch.inference_mode()
def video_features(encoder: RankJumpEncoder, videos, batch_size: int = 64) -> np.ndarray:
    """Unit-norm video embeddings (N, D), float64, in batches."""
    x = as_float_videos(videos)  # (N, 3, F, H, W)
    device = encoder.logit_scale.device
    out = [encoder.encode_video(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, encoder.cfg.embed_dim))


def indomain_fd(real_videos, gen_videos, encoder: RankJumpEncoder) -> float:
    """RJ-FD: Frechet distance between Gaussians fitted to the encoder's embeddings of two video sets."""
    feats = {}
    for name, videos in (("real_videos", real_videos), ("gen_videos", gen_videos)):
        n = len(videos)
        if n < 2:
            raise ValueError(f"{name}: {n} video(s); the in-domain Frechet distance needs at least 2 per set")
        feats[name] = video_features(encoder, videos)
    return frechet_distance_from_features(feats["real_videos"], feats["gen_videos"])


@torch.inference_mode()
def text_video_scores(
    encoder: RankJumpEncoder, videos, captions: list[str], batch_size: int = 64
) -> np.ndarray:
    """Per video 100 * cos(video embedding, its caption's embedding), (N,)."""
    captions = [captions] if isinstance(captions, str) else list(captions)
    if len(videos) != len(captions) or not captions:
        raise ValueError(
            f"captions: {len(captions)} caption(s) for {len(videos)} video(s); need one per video"
        )
    v = video_features(encoder, videos, batch_size)  # (N, D)
    t = (
        torch.cat(
            [
                encoder.encode_text(captions[i : i + batch_size]).cpu()
                for i in range(0, len(captions), batch_size)
            ]
        )
        .double()
        .numpy()
    )  # (N, D)
    return 100.0 * (v * t).sum(1)


def text_video_score(encoder: RankJumpEncoder, videos, captions: list[str]) -> float:
    """RJ-TV: mean over videos of 100 * cos(video, caption) in the encoder's space."""
    return float(text_video_scores(encoder, videos, captions).mean())


def rankjump_reference(
    num: int,
    split: str = "test",
    mix: dict | None = None,
    height: int = 32,
    width: int = 32,
    num_frames: int = 17,
) -> tuple[np.ndarray, list[str]]:
    """Real RankJump clips (uint8 (N, F, H, W, 3)) and captions to compare generated videos against."""
    from wan2.data.rankjump import EVENTS, RankJump, RankJumpConfig

    cfg = RankJumpConfig(
        height=height,
        width=width,
        num_frames=num_frames,
        mix=dict(mix) if mix else dict.fromkeys(EVENTS, 1.0),
    )
    rj = RankJump(cfg, split, num)
    clips = [rj[i] for i in range(num)]
    return np.stack([c.frames for c in clips]), [c.caption for c in clips]


def indomain_metrics(encoder_dir, gen_videos, captions: list[str], real_videos) -> dict:
    """RJ-FD of generated vs real videos and RJ-TV of generated videos vs their captions, with the counts."""
    encoder = encoder_dir if isinstance(encoder_dir, RankJumpEncoder) else load_encoder(encoder_dir)
    if real_videos is None:
        raise ValueError("real_videos: none given; pass real RankJump clips (e.g. rankjump_reference(n))")
    per_video = text_video_scores(encoder, gen_videos, captions)
    return {
        "indomain/fd": indomain_fd(real_videos, gen_videos, encoder),
        "indomain/text_video": float(per_video.mean()),
        "indomain/num_gen": len(gen_videos),
        "indomain/num_real": len(real_videos),
        "indomain_details": {  # not summary numbers: names for the report, per-video scores for paired A/B
            "encoder": str(encoder_dir) if not isinstance(encoder_dir, RankJumpEncoder) else "in-memory",
            "fd": FD_NAME,
            "text_video": TV_NAME,
            "text_video_per_video": per_video.tolist(),
        },
    }


# ----------------------------------------------------------------------------- sanity check of an encoder


def degraded_sets(frames: np.ndarray, metas: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    """Broken versions of real clips uint8 (N, F, H, W, 3): what a bad generator would produce.

    shuffled: frames in a random order per clip; frozen: the first frame held; reversed: played backwards;
    wrong_colour: each clip re-rendered with another palette colour than its caption's (same event, ranks, seed);
    one_colour: every clip re-rendered in the same colour (the colour in the prompt ignored).
    """
    from wan2.data.rankjump import PALETTE, RankJumpConfig, make_clip

    rng = np.random.default_rng(seed)
    names = list(PALETTE)
    m0 = metas[0]
    cfg = RankJumpConfig(height=m0["height"], width=m0["width"], num_frames=m0["num_frames"], rows=m0["rows"])

    def recolour(m: dict, colour: str) -> np.ndarray:
        return make_clip(cfg, m["event"], m["old_rank"], m["new_rank"], colour, seed=m["seed"]).frames

    return {
        "shuffled": np.stack([v[rng.permutation(len(v))] for v in frames]),
        "frozen": np.repeat(frames[:, :1], frames.shape[1], axis=1),
        "reversed": np.ascontiguousarray(frames[:, ::-1]),
        "wrong_colour": np.stack(
            [recolour(m, names[(names.index(m["colour"]) + 2) % len(names)]) for m in metas]
        ),
        "one_colour": np.stack([recolour(m, "green") for m in metas]),
    }


def separation_report(encoder: RankJumpEncoder, num: int = 128, split: str = "test", seed: int = 0) -> dict:
    """RJ-FD against a second real set and RJ-TV with the real captions, for real and degraded test-split clips.

    Real set A is clips 0..num-1 of ``split`` (all events), real set B clips num..2num-1; every degraded set is
    made from A, and every FD is measured against B, so ``fd["real"]`` is the same-distribution baseline.
    """
    from wan2.data.rankjump import EVENTS, RankJump, RankJumpConfig

    c = encoder.cfg
    rj = RankJump(
        RankJumpConfig(
            height=c.height, width=c.width, num_frames=c.num_frames, mix=dict.fromkeys(EVENTS, 1.0)
        ),
        split,
        2 * num,
    )
    clips = [rj[i] for i in range(2 * num)]
    frames = np.stack([x.frames for x in clips])  # (2N, F, H, W, 3)
    captions, metas = [x.caption for x in clips[:num]], [x.meta for x in clips[:num]]
    real_a, real_b = frames[:num], frames[num:]
    sets = {"real": real_a, **degraded_sets(real_a, metas, seed)}
    feats_b = video_features(encoder, real_b)
    fd, tv = {}, {}
    for name, videos in sets.items():
        fd[name] = frechet_distance_from_features(feats_b, video_features(encoder, videos))
        tv[name] = text_video_score(encoder, videos, captions)
    tv["mismatched_caption"] = text_video_score(encoder, real_a, captions[1:] + captions[:1])
    return {"num_videos": num, "split": split, "fd": fd, "text_video": tv}
