"""Generation API: a thin layer over the stock diffusers ``WanPipeline`` of a wan2 export or a Wan 2.2 release.

    model = Wan2T2V.from_pretrained("outputs/pretrain_tiny/latest/export")
    video = model.generate("the green row climbs from #3 to #2", seed=0)
    save_video(video, "rank_up.mp4")

Defaults (frames, size, fps, steps, guidance) come from the export's ``wan2.json``; the denoising is the
pipeline's own (``wan2.sampling`` reproduces it step for step). Never imports Lightning.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wan2.backbones.stack import WanBackbone, load_backbone
from wan2.data.video import save_gif, write_mp4
from wan2.lora.adapters import WEIGHT_NAME, LoraFileError, check_lora_file, inspect_lora_file, lora_component
from wan2.memory.offload import offload_pipeline, offload_problem
from wan2.rollout import assign_variant  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

# Stock WanPipeline defaults, used for a directory without wan2.json (an official Wan 2.2 release).
PIPELINE_DEFAULTS = {
    "num_frames": 81,
    "height": 480,
    "width": 832,
    "fps": 16,
    "num_inference_steps": 50,
    "guidance_scale": 5.0,
}
DTYPES = {None: None, "bf16": torch.bfloat16, "fp32": torch.float32}
FAST_MIN_SIDE = 256  # the fast profile only shrinks frames whose short side is above this


def load_board(image, height: int, width: int):
    """A first frame as a PIL RGB image of ``width`` x ``height``: a PIL image, an array (H, W, 3) uint8 or
    float in [0, 1], or a path to an image file. Another size is resized (a log line says so); anything that
    is not an image is a one-line ValueError naming ``image``."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as f:
                pil = f.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            why = (
                "cannot be read"
                if isinstance(err, OSError) and not isinstance(err, UnidentifiedImageError)
                else "is not an image"
            )
            raise ValueError(f"image: {str(image)!r} {why} ({type(err).__name__})") from None
    elif isinstance(image, Image.Image):
        pil = image.convert("RGB")
    elif isinstance(image, np.ndarray) or hasattr(image, "numpy"):
        a = np.asarray(image.numpy() if hasattr(image, "numpy") else image)
        if a.ndim != 3 or a.shape[-1] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"image: an array must be (H, W, 3), got {a.shape}")
        if a.dtype != np.uint8:
            if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
                raise ValueError(f"image: an array must be uint8 or finite floats in [0, 1], got {a.dtype}")
            a = (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        pil = Image.fromarray(a, "RGB")
    else:
        raise ValueError(
            f"image: expected a PIL image, an (H, W, 3) array or a path, got {type(image).__name__}"
        )
    if pil.size != (width, height):
        log.info("image: %dx%d resized to %dx%d (the video's size)", pil.size[1], pil.size[0], height, width)
        pil = pil.resize((width, height), Image.LANCZOS)
    return pil


class NonFiniteVideoError(RuntimeError):
    """Generated frames held NaN / Inf (the model or a LoRA diverged): an error, never a black mp4.

    ``videos`` keeps the batch's finite videos (None where a video was non-finite), ``bad`` the indices."""

    def __init__(self, message: str, videos: list, bad: list[int]):
        super().__init__(message)
        self.videos = videos
        self.bad = bad


@dataclass
class GeneratedVideo:
    """One generated clip: uint8 frames (F, H, W, 3) and how they were made."""

    frames: np.ndarray
    fps: float
    prompt: str
    seed: int
    seconds: float  # wall-clock generation time (a batch's time divided by its size)
    steps: int

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        """Playback length in seconds."""
        return self.num_frames / self.fps


def save_video(video: GeneratedVideo, path: str | Path, pix_fmt: str = "yuv444p") -> Path:
    """Write an mp4 (or a GIF when ``path`` ends in .gif) atomically: a temp name, then ``os.replace``."""
    path = Path(path)
    frames = np.asarray(video.frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8 0..255, got {frames.dtype} (scale floats in [0, 1] by 255)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        if path.suffix.lower() == ".gif":
            save_gif(frames, tmp, video.fps)
        else:
            write_mp4(frames, tmp, video.fps, pix_fmt=pix_fmt)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class Wan2T2V:
    """Text-to-video generation with a wan2 export or a Wan 2.2 diffusers directory (optionally with LoRAs)."""

    def __init__(self, backbone: WanBackbone, device: str = "cpu", offload: str | None = None):
        self.backbone = backbone
        self.device = device
        self.offload = offload
        self.pipe = backbone.pipeline()
        if offload is None:
            self.pipe.to(device)
        else:  # the weights stay on the CPU; diffusers' hooks move them to `device` as they run
            offload_pipeline(self.pipe, offload, device)
        self.pipe.set_progress_bar_config(disable=True)
        self.defaults = {k: backbone.extra.get(k, v) for k, v in PIPELINE_DEFAULTS.items()}
        self.rows = int(backbone.extra.get("rows", 5))
        self.lora_names: list[str] = []
        self._i2v = None  # WanImageToVideoPipeline over the same modules, made on the first image

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str | None = None,
        lora: str | Path | list | None = None,
        lora_scales=None,
        offload: str | None = None,
    ) -> Wan2T2V:
        """Load ``path`` (a diffusers WanPipeline folder); ``lora``: one or more LoRA files or folders.

        ``offload`` (for a model larger than the device, e.g. the 5B on a 24 GB card): ``"model"`` keeps the
        components on the CPU and moves each whole one to ``device`` while it runs (diffusers'
        ``enable_model_cpu_offload``); ``"sequential"`` moves each leaf module's weights in for its forward
        (``enable_sequential_cpu_offload``: least memory, slowest; needs an accelerator)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype: {dtype!r} is not one of {list(DTYPES)}")
        problem = offload_problem(offload, device)
        if problem:  # before the (possibly large) model loads
            raise ValueError(problem)
        loras = [] if not lora else lora if isinstance(lora, (list, tuple)) else [lora]
        for f in loras:  # a bad LoRA file is refused before the (possibly large) model loads
            inspect_lora_file(f)
        backbone = load_backbone(path, torch_dtype=DTYPES[dtype])
        if backbone.vae is not None and backbone.vae.dtype != torch.float32:
            backbone.vae.to(torch.float32)  # decode in fp32, as the Wan 2.2 model cards advise
        model = cls(backbone, device=device, offload=offload)
        if loras:
            model.load_loras(loras, lora_scales)
        return model

    # -- LoRA -------------------------------------------------------------------------------------------
    def load_loras(self, paths: list, scales=None) -> None:
        """Check every file first (one-line ``LoraFileError``), then load each as adapter ``lora_N``; an A14B
        low-noise expert adapter (``export/lora_2``, see ``lora_component``) goes into ``transformer_2``."""
        files = []
        for p in paths:
            p = Path(p)
            f = p / WEIGHT_NAME if p.is_dir() else p
            component = lora_component(f)
            if getattr(self.backbone, component) is None:
                raise LoraFileError(
                    f"lora: {str(f)!r} adapts {component} (the Wan2.2 A14B low-noise expert); "
                    "this model has one transformer"
                )
            check_lora_file(f, getattr(self.backbone, component))
            files.append((f, component))
        for f, component in files:
            name = f"lora_{len(self.lora_names)}"
            into_2 = {"load_into_transformer_2": True} if component == "transformer_2" else {}
            self.pipe.load_lora_weights(  # use_safetensors: never diffusers' fallback to a pickled .bin
                str(f.parent), weight_name=f.name, adapter_name=name, use_safetensors=True, **into_2
            )
            self.lora_names.append(name)
        self.set_lora_scales(1.0 if scales is None else scales)

    def set_lora_scales(self, scales) -> None:
        """One scale for every adapter, or one per adapter (list, or dict name -> scale); 0 gives the base."""
        if not self.lora_names:
            raise ValueError("lora_scales: no LoRA is loaded")
        if isinstance(scales, dict):
            weights = [float(scales.get(n, 1.0)) for n in self.lora_names]
        elif isinstance(scales, (list, tuple)):
            if len(scales) != len(self.lora_names):
                raise ValueError(f"lora_scales: {len(scales)} scales for {len(self.lora_names)} LoRAs")
            weights = [float(s) for s in scales]
        else:
            weights = [float(scales)] * len(self.lora_names)
        bad = [w for w in weights if not math.isfinite(w)]
        if bad:
            raise ValueError(f"lora_scales: {bad[0]} is not a finite number")
        self.pipe.set_adapters(self.lora_names, weights)

    # -- geometry ---------------------------------------------------------------------------------------
    def valid_num_frames(self, n: float) -> int:
        """The nearest frame count the VAE can make: t*k + 1 for its temporal stride t."""
        t = self.backbone.t_stride
        return t * max(0, math.floor((n - 1) / t + 0.5)) + 1  # ties go up

    def _size_multiple(self) -> int:
        return self.backbone.s_stride * self.backbone.patch_size[1]

    def profile(self, name: str) -> dict:
        """``generate`` keyword defaults: "standard" = wan2.json; "fast" = half the steps and frames, and
        two thirds of the size where the short side is above 256 px (the tiny models keep their 32x32)."""
        d = self.defaults
        if name == "standard":
            return {
                k: d[k] for k in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale")
            }
        if name != "fast":
            raise ValueError(f"profile: {name!r} is not one of ['fast', 'standard']")
        steps = int(d["num_inference_steps"])
        t = self.backbone.t_stride
        h, w = int(d["height"]), int(d["width"])
        if min(h, w) > FAST_MIN_SIDE:
            m = self._size_multiple()
            h, w = max(m, h * 2 // 3 // m * m), max(m, w * 2 // 3 // m * m)
        return {
            "num_frames": t * max(1, math.floor((int(d["num_frames"]) - 1) / t / 2 + 0.5)) + 1,
            "height": h,
            "width": w,
            "num_inference_steps": max(min(steps, 2), steps // 2),
            "guidance_scale": d["guidance_scale"],
        }

    def _resolve_frames(self, num_frames, fps, duration) -> int:
        if duration is not None:
            if num_frames is not None:
                raise ValueError("duration: give num_frames or fps + duration, not both")
            if duration <= 0:
                raise ValueError(f"duration: {duration} is not positive")
            wanted = fps * duration
            n = self.valid_num_frames(wanted)
            if n != wanted:
                log.info(
                    "num_frames: %g s at %g fps = %g frames, rounded to %d (t*k+1 for the VAE's stride t=%d)",
                    duration,
                    fps,
                    wanted,
                    n,
                    self.backbone.t_stride,
                )
            return n
        n = int(self.defaults["num_frames"] if num_frames is None else num_frames)
        t = self.backbone.t_stride
        if n < 1 or (n - 1) % t:
            near = sorted({max(1, (n - 1) // t * t + 1), (n - 1) // t * t + 1 + t})
            raise ValueError(f"num_frames: {n} is not t*k+1 for the VAE's stride t={t} (try {near})")
        return n

    # -- generation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt: str | list[str],
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        fps: float | None = None,
        duration: float | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        seed: int | list[int] = 0,
        negative_prompt: str = "",
        image=None,
    ) -> GeneratedVideo | list[GeneratedVideo]:
        """One video for a string, a list for a list of prompts (video i is what ``prompts[i]`` alone with
        ``seed + i`` gives). Unset arguments come from the export's wan2.json.

        ``image`` (TI2V: a model trained with a first frame, ``expand_timesteps``): the first frame every
        video continues (a PIL image, an (H, W, 3) array or a path; resized to the video's size with a log
        line), or a list with one per prompt (None: text only), run through stock ``WanImageToVideoPipeline``."""
        if isinstance(image, (list, tuple)):
            return self._generate_each(prompt, image, seed, locals())
        d = self.defaults
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt: empty list")
        seeds = (
            list(seed) if isinstance(seed, (list, tuple)) else [int(seed) + i for i in range(len(prompts))]
        )
        if len(seeds) != len(prompts):
            raise ValueError(f"seed: {len(seeds)} seeds for {len(prompts)} prompts")
        fps = float(d["fps"] if fps is None else fps)
        num_frames = self._resolve_frames(num_frames, fps, duration)
        height = int(d["height"] if height is None else height)
        width = int(d["width"] if width is None else width)
        m = self._size_multiple()
        if height % m or width % m or height < m or width < m:
            raise ValueError(
                f"height/width: {height}x{width} must be positive multiples of {m} for this model"
            )
        steps = int(d["num_inference_steps"] if num_inference_steps is None else num_inference_steps)
        guidance = float(d["guidance_scale"] if guidance_scale is None else guidance_scale)
        # The stock pipeline replaces any count with `num_frames % t != 1` by (n // t) * t + 1: with t = 1
        # every count gains a frame. Ask for n - 1 there so the pipeline lands on n.
        t = self.backbone.t_stride
        ask = num_frames - 1 if t == 1 and num_frames > 1 else num_frames
        pipe, extra = self.pipe, {}
        if image is not None:
            pipe = self.image_pipeline()
            extra["image"] = load_board(image, height, width)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        finite = torch.ones(len(prompts), dtype=torch.bool)  # per video: latents finite at every step

        def watch(pipe, i, t, tensors):
            finite.logical_and_(torch.isfinite(tensors["latents"]).flatten(1).all(1).cpu())
            return {}

        start = time.perf_counter()
        out = pipe(
            **extra,
            prompt=prompts,
            negative_prompt=negative_prompt,
            num_frames=ask,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators[0] if len(generators) == 1 else generators,
            max_sequence_length=self.backbone.text_len,
            output_type="np",
            callback_on_step_end=watch,
        ).frames  # float (B, F, H, W, 3) in [0, 1]; NaN stays NaN (the pipeline's clamp keeps it)
        seconds = (time.perf_counter() - start) / len(prompts)
        out = np.asarray(out, dtype=np.float32)
        if out.shape[1] != num_frames:
            raise RuntimeError(f"num_frames: asked {num_frames}, the pipeline made {out.shape[1]}")
        ok = finite.numpy() & np.isfinite(out).reshape(len(prompts), -1).all(1)  # (B,)
        frames = (np.clip(np.nan_to_num(out), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        videos = [
            GeneratedVideo(frames=frames[i], fps=fps, prompt=p, seed=seeds[i], seconds=seconds, steps=steps)
            if ok[i]
            else None
            for i, p in enumerate(prompts)
        ]
        if not ok.all():
            bad = [i for i in range(len(prompts)) if not ok[i]]
            raise NonFiniteVideoError(
                f"frames: video {bad[0]} of {len(prompts)} (seed {seeds[bad[0]]}) holds NaN / Inf values: the model "
                f"or a LoRA diverged ({len(bad)} such video{'s' * (len(bad) > 1)}); nothing is saved for it",
                videos,
                bad,
            )
        return videos[0] if isinstance(prompt, str) else videos

    def _generate_each(self, prompt, images, seed, args: dict) -> list[GeneratedVideo]:
        """``generate`` with one image (or None) per prompt: one pipeline call per prompt, seeds as a batch's."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if len(images) != len(prompts):
            raise ValueError(f"image: {len(images)} images for {len(prompts)} prompts")
        seeds = (
            list(seed) if isinstance(seed, (list, tuple)) else [int(seed) + i for i in range(len(prompts))]
        )
        if len(seeds) != len(prompts):
            raise ValueError(f"seed: {len(seeds)} seeds for {len(prompts)} prompts")
        for im in images:  # every image checked before the first video is made
            if im is not None:
                load_board(
                    im,
                    int(args["height"] or self.defaults["height"]),
                    int(args["width"] or self.defaults["width"]),
                )
        keep = {k: v for k, v in args.items() if k not in ("self", "prompt", "seed", "image", "__class__")}
        videos, bad = [], []
        for i, (p, im, s) in enumerate(zip(prompts, images, seeds)):
            try:
                videos.append(self.generate(p, seed=s, image=im, **keep))
            except NonFiniteVideoError:
                videos.append(None)
                bad.append(i)
        if bad:
            raise NonFiniteVideoError(
                f"frames: video {bad[0]} of {len(prompts)} (seed {seeds[bad[0]]}) holds NaN / Inf values: the model "
                f"or a LoRA diverged ({len(bad)} such video{'s' * (len(bad) > 1)}); nothing is saved for it",
                videos,
                bad,
            )
        return videos

    def image_pipeline(self):
        """Stock ``WanImageToVideoPipeline(expand_timesteps=True)`` over this model's modules (no copies)."""
        if not self.backbone.expand_timesteps:
            raise ValueError(
                "image: this model does not continue a first frame (its export has expand_timesteps false); "
                "use a TI2V model (Wan2.2-TI2V-5B, pretrained/wan_tiny_ti2v, objective.first_frame_p > 0)"
            )
        if self._i2v is None:
            from diffusers import WanImageToVideoPipeline

            from wan2.compat import i2v_prompt_clean_without_ftfy

            i2v_prompt_clean_without_ftfy()
            bb = self.backbone
            self._i2v = WanImageToVideoPipeline(
                tokenizer=bb.tokenizer,
                text_encoder=bb.text_encoder,
                vae=bb.vae,
                scheduler=self.pipe.scheduler,
                transformer=bb.transformer,
                transformer_2=bb.transformer_2,
                boundary_ratio=bb.boundary_ratio,
                expand_timesteps=True,
            )
            if self.offload is not None:
                offload_pipeline(self._i2v, self.offload, self.device)
            self._i2v.set_progress_bar_config(disable=True)
        return self._i2v
