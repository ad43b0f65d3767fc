"""Metrics that need pretrained networks given by path: FVD (I3D), CLIPScore (CLIP), in-domain RJ-FD."""

from __future__ import annotations

from wan2.config_check import ConfigError
from wan2.eval.registry import MetricUnavailable, register_metric


@register_metric(
    "fvd",
    weights_key="metrics.fvd.i3d_path",
    min_videos=2,
    min_frames=10,
    higher_is_better={"fvd/fvd": False},
    hint="Kinetics-400 I3D weights: i3d_pretrained_400.pt or StyleGAN-V i3d_torchscript.pt",
)
def fvd_metric(ev, section, cfg) -> dict:
    """FVD (I3D Kinetics-400 logits, 224x224, [-1, 1]) against real RankJump clips of the same prompts."""
    from wan2.metrics.fvd import fvd, load_i3d

    idx, real = ev.reference()
    if len(idx) < 2:
        raise MetricUnavailable(f"{len(idx)} video(s) with RankJump metadata; FVD needs real clips of >= 2")
    try:
        model = load_i3d(section.get("i3d_path"), cfg.get("device", "cpu"))
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    res = fvd(real, ev.videos[idx], model, int(section.get("batch_size", 8)))
    return {
        "summary": {"fvd/fvd": res.pop("fvd")},
        "info": res | {"reference": "real RankJump clips of the same prompts (wan2.data.rankjump)"},
    }


@register_metric(
    "clipscore",
    weights_key="metrics.clipscore.model_dir",
    weights_kind="dir",
    hint="a local transformers CLIP directory, e.g. a saved openai/clip-vit-large-patch14",
)
def clipscore_metric(ev, section, cfg) -> dict:
    """CLIPSIM: 100 * cos(frame, prompt) averaged over frames, with a local transformers CLIP."""
    from wan2.metrics.clipscore import CLIPScorer

    try:
        scorer = CLIPScorer(section.get("model_dir"), cfg.get("device", "cpu"))
    except (FileNotFoundError, OSError, ValueError) as err:
        raise ConfigError(f"metrics.clipscore.model_dir: {str(err).splitlines()[0]}") from None
    res = scorer.score(ev.videos, ev.prompts)
    return {
        "per_video": {"clipscore/clipsim": res["per_video"]},
        "info": {"variant": res["variant"], "model": res["model"], "num_videos": res["num_videos"]},
    }


@register_metric(
    "indomain",
    weights_key="metrics.indomain.encoder_dir",
    weights_kind="dir",
    optional_weights=True,
    min_videos=2,
    higher_is_better={"indomain/fd": False},
    hint="the RankJump encoder: python train.py experiment=rankjump_encoder",
)
def indomain_metric(ev, section, cfg) -> dict:
    """In-domain RJ-FD and RJ-TV of the RankJump video-text encoder (``wan2.metrics.indomain``); not FVD / CLIPScore."""
    try:
        from wan2.metrics import indomain
    except ImportError as err:
        raise MetricUnavailable(f"wan2.metrics.indomain does not import ({err})") from None
    idx, real = ev.reference()
    if len(idx) < 2:
        raise MetricUnavailable(f"{len(idx)} video(s) with RankJump metadata; RJ-FD needs real clips of >= 2")
    try:
        res = indomain.indomain_metrics(section.get("encoder_dir"), ev.videos, ev.prompts, real)
    except indomain.EncoderLoadError as err:
        raise ConfigError(str(err)) from None
    details = dict(res.pop("indomain_details", {}))
    per_video = details.pop("text_video_per_video", None)
    out = {
        "summary": {"indomain/fd": res["indomain/fd"]},
        "info": details | {"num_real": res.get("indomain/num_real"), "num_gen": res.get("indomain/num_gen")},
    }
    if per_video is not None:
        out["per_video"] = {"indomain/text_video": per_video}
    else:
        out["summary"]["indomain/text_video"] = res["indomain/text_video"]
    return out
