"""Encoders off the accelerator (``wan2.memory.offload``): ``on_device`` borrows a module for a block;
``Wan2T2V.from_pretrained(..., offload=...)`` puts diffusers' accelerate hooks on the pipeline.

On this CPU-only machine: ``offload="model"`` runs (the "accelerator" is the CPU) and must give the same video;
``"sequential"`` is refused on the CPU in one line (accelerate's CPU path breaks on UMT5's tied embedding, and
there is nothing to save), so its hook placement is checked on the pipeline directly and generation with it only
on a GPU."""

import gc

import numpy as np
import pytest
import torch
from accelerate.hooks import AlignDevicesHook, CpuOffload
from torch import nn

from tests.conftest import load_script
from wan2.inference import Wan2T2V
from wan2.memory.offload import OFFLOAD_MODES, offload_pipeline, on_device

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "the green row climbs from #4 to #1"


def spy_moves(module: nn.Module, fail_on: str | None = None) -> list:
    """Record every device ``module.to`` is asked for, then move (or run out of memory for ``fail_on``)."""
    moves, to = [], module.to

    def recording_to(device, *args, **kwargs):
        moves.append(str(device))
        if str(device) == fail_on:
            raise torch.OutOfMemoryError("no room on " + fail_on)
        return to(device, *args, **kwargs)

    module.to = recording_to
    return moves


def test_on_device_borrows_the_module_and_gives_it_back_on_error():
    encoder = nn.Linear(4, 4)
    moves = spy_moves(encoder, fail_on="cuda:0")
    with on_device(encoder, "cpu", home="cpu") as m:
        assert m is encoder and moves == ["cpu"]
    assert moves == ["cpu", "cpu"]
    with pytest.raises(RuntimeError, match="boom"), on_device(encoder, "cpu"):
        raise RuntimeError("boom")
    assert moves[-2:] == ["cpu", "cpu"]  # moved back although the block raised
    with pytest.raises(torch.OutOfMemoryError), on_device(encoder, "cuda:0"):
        pytest.fail("the block must not run when the module could not move")
    assert moves[-2:] == ["cuda:0", "cpu"]  # a move that failed half way is undone
    with on_device(None, "cuda") as m:  # a stack without that component
        assert m is None


def test_model_offload_generates_the_same_video(tiny_export):
    plain = Wan2T2V.from_pretrained(tiny_export)
    expected = plain.generate(PROMPT, seed=3, num_inference_steps=2).frames
    model = Wan2T2V.from_pretrained(tiny_export, offload="model")
    assert model.offload == "model"
    hooks = {n: type(getattr(m, "_hf_hook", None)).__name__ for n, m in model.pipe.components.items()}
    assert {hooks[n] for n in ("text_encoder", "transformer", "vae")} == {CpuOffload.__name__}
    assert np.array_equal(model.generate(PROMPT, seed=3, num_inference_steps=2).frames, expected)


@pytest.mark.parametrize(
    "bad, device, message",
    [
        ("cpu", "cpu", "offload: 'cpu' is not one of ['model', 'sequential'] (or None to keep"),
        ("Model", "cuda", "offload: 'Model' is not one of ['model', 'sequential']"),
        (True, "cpu", "offload: True is not one of"),
        ("sequential", "cpu", "offload: 'sequential' needs an accelerator device (device='cpu')"),
    ],
)
def test_bad_offload_is_one_line_before_loading(bad, device, message, tmp_path):
    missing = tmp_path / "no_model_here"  # never read: the check comes first
    with pytest.raises(ValueError) as err:
        Wan2T2V.from_pretrained(missing, device=device, offload=bad)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_sequential_offload_hooks_every_weighted_layer(tiny_export):
    """``offload_pipeline(pipe, "sequential", device)`` (what ``Wan2T2V`` calls on a GPU): every weight is on the
    meta device with its CPU copy in an accelerate hook that loads it onto the execution device for its forward."""
    from wan2.backbones.stack import load_backbone

    pipe = load_backbone(tiny_export).pipeline()
    with pytest.raises(ValueError, match="^offload: 'sequential' needs an accelerator"):
        offload_pipeline(pipe, "sequential", "cpu")
    pipe.enable_sequential_cpu_offload(
        device="cpu"
    )  # diffusers itself accepts the CPU; generation there fails
    for name in ("text_encoder", "transformer", "vae"):
        module = getattr(pipe, name)
        assert all(p.device.type == "meta" for p in module.parameters()), name
        leaf = module.blocks[0].attn1.to_q if name == "transformer" else None
        if leaf is not None:
            assert isinstance(leaf._hf_hook, AlignDevicesHook) and leaf._hf_hook.offload
            assert leaf._hf_hook.execution_device == torch.device("cpu:0")


def test_generate_script_passes_offload_and_refuses_in_one_line(tiny_export, tmp_path, capsys):
    generate = load_script("scripts/generate.py", "generate_script")
    out = tmp_path / "videos"
    args = ["--model", str(tiny_export), "--prompt", PROMPT, "--out", str(out), "--steps", "1", "--offload"]
    assert generate.main([*args, "sequential"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: offload: 'sequential' needs an accelerator device (device='cpu'); use offload=None or 'model'"
    ]
    assert generate.main([*args, "model"]) == 0 and len(list(out.glob("*.mp4"))) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("offload", OFFLOAD_MODES)
def test_gpu_offload_generates_the_same_video_with_less_memory(tiny_export, offload):
    plain = Wan2T2V.from_pretrained(tiny_export, device="cuda")
    expected = plain.generate(PROMPT, seed=3, num_inference_steps=2).frames
    del plain
    gc.collect()
    before = torch.cuda.memory_allocated()  # whatever earlier tests left on the GPU
    model = Wan2T2V.from_pretrained(tiny_export, device="cuda", offload=offload)
    resident = torch.cuda.memory_allocated() - before
    frames = model.generate(PROMPT, seed=3, num_inference_steps=2).frames
    assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1  # GPU kernels may round differently
    assert resident == 0  # every weight waits on the CPU until its component (or layer) runs
