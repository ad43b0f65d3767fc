"""Loading the models of a generation run and making one batch (shared by ``--deadline`` and ``--watch``)."""

from __future__ import annotations

from wan2.serve.events import InputError, one_line
from wan2.serve.profiles import Pick


def load_model(path, args, lora: bool = True):
    """``Wan2T2V.from_pretrained`` with the run's device / dtype / offload (and LoRAs unless ``lora=False``);
    a model or LoRA that cannot load is one line (``InputError``)."""
    from wan2.backbones.stack import BackboneError
    from wan2.inference import Wan2T2V
    from wan2.lora.adapters import LoraFileError

    scales = args.lora_scale if args.lora_scale is None or len(args.lora_scale) > 1 else args.lora_scale[0]
    try:
        return Wan2T2V.from_pretrained(
            path,
            device=args.device,
            dtype=args.dtype,
            lora=(args.lora or None) if lora else None,
            lora_scales=scales if lora else None,
            offload=args.offload,
        )
    except (BackboneError, LoraFileError, ValueError, RuntimeError, OSError, AssertionError) as err:
        raise InputError(one_line(err, limit=2000)) from None  # AssertionError: "not compiled with CUDA"


def load_models(args) -> dict:
    """``{"base": (folder, model)}`` plus ``"student"`` with ``--student`` (no LoRA: see ``--student``)."""
    models = {"base": (args.model, load_model(args.model, args))}
    if getattr(args, "student", None):
        models["student"] = (args.student, load_model(args.student, args, lora=False))
    return models


def generate_batch(pick: Pick, chunk: list[dict]) -> tuple[list, dict[int, str]]:
    """The videos of ``chunk`` (items with ``prompt`` and ``seed``) made with ``pick``: ``(videos, errors)``,
    ``videos[i]`` None where ``errors[i]`` says why (non-finite frames keep the batch's finite videos)."""
    from wan2.inference import NonFiniteVideoError

    boards = [it.get("board") for it in chunk]  # TI2V first frames, where an item carries one
    try:
        videos = pick.model.generate(
            [it["prompt"] for it in chunk],
            seed=[it["seed"] for it in chunk],
            **pick.kwargs,
            **({"image": boards} if any(boards) else {}),
        )
        return videos, {}
    except NonFiniteVideoError as err:
        msg = "frames: NaN / Inf values (the model or a LoRA diverged); no mp4 written"
        return err.videos, {j: msg for j in err.bad}
    except (ValueError, RuntimeError) as err:
        return [None] * len(chunk), {j: one_line(err) for j in range(len(chunk))}
