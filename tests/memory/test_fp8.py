"""fp8 storage of frozen Linear weights (``wan2.memory.fp8``): which layers convert, what stays ordinary (state
dict, exports, the LoRA file), and the quality cost on the tiny stack against bf16 storage, with tolerances."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

from tests.memory.tiny import batch, predict, tiny_transformer, train
from wan2.lora import lora_config, save_lora
from wan2.lora.adapters import WEIGHT_NAME
from wan2.memory.block_swap import BlockSwap
from wan2.memory.fp8 import Fp8Linear, fp8_problem, quantize, restore_linears, store_frozen_linears_fp8

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Measured on the tiny stack (4 blocks of width 128, seeded): fp8 e4m3 + per-channel scales vs bf16 storage.
# Output: max |err| / max |ref| = 0.0078, mean |err| / mean |ref| = 0.0082 (bf16 vs fp32 storage: 0.0025 / 0.0024).
# LoRA loss over 5 SGD steps (1.3408 -> 1.3012): relative difference <= 0.00021 per step. Tolerances: ~2.5-5x.
OUTPUT_MAX_TOL, OUTPUT_MEAN_TOL, LOSS_TOL = 0.02, 0.02, 0.001


def bf16_stored(model: nn.Module) -> nn.Module:
    """Frozen weights rounded through bf16 (bf16 storage, fp32 compute): the reference fp8 is compared with."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                p.copy_(p.bfloat16().float())
    return model


def rel_errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |out - ref| / max |ref|, mean |out - ref| / mean |ref|)."""
    err = (out - ref).abs()
    return (err.max() / ref.abs().max()).item(), (err.mean() / ref.abs().mean()).item()


def test_converts_frozen_base_layers_only(tmp_path):
    model = tiny_transformer()
    lora_before = get_peft_model_state_dict(model)
    spec = lora_config(rank=4, targets="all", init="gaussian")
    save_lora(model, tmp_path / "bf16", spec, extra={"base": "tiny"})
    n = store_frozen_linears_fp8(model)
    save_lora(model, tmp_path / "fp8", spec, extra={"base": "tiny"})
    fp8 = {name for name, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert n == len(fp8) == 4 * 10  # per block: q k v out of attn1 and attn2, 2 ffn Linears
    assert all(name.startswith("blocks.") and name.endswith(".base_layer") or "ffn" in name for name in fp8)
    assert not any("lora_" in name or "condition_embedder" in name or "proj_out" in name for name in fp8)
    # the adapters are untouched: same keys, dtypes and values as before; they still train
    lora_after = get_peft_model_state_dict(model)
    assert lora_after.keys() == lora_before.keys() and len(lora_after) == 4 * 10 * 2
    assert all(lora_after[k].dtype == lora_before[k].dtype for k in lora_before)
    assert all(torch.equal(lora_after[k], lora_before[k]) for k in lora_before)
    # the LoRA file holds the same tensors as without fp8 (its header differs only in diffusers' "format": "pt",
    # which diffusers adds on its second save in a process)
    saved = {d: load_file(tmp_path / d / WEIGHT_NAME) for d in ("bf16", "fp8")}
    assert list(saved["fp8"]) == list(saved["bf16"]) == sorted(f"transformer.{k}" for k in lora_before)
    assert all(
        torch.equal(saved["fp8"][k], v) and saved["fp8"][k].dtype == v.dtype for k, v in saved["bf16"].items()
    )
    assert (tmp_path / "fp8/adapter_config.json").read_text() == (
        tmp_path / "bf16/adapter_config.json"
    ).read_text()
    # a trainable Linear is never converted
    trainable = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).requires_grad_(False))
    assert store_frozen_linears_fp8(trainable) == 1 and type(trainable[0]) is nn.Linear


def test_quantization_is_per_output_channel_and_round_trips():
    w = torch.randn(8, 16) * torch.logspace(-3, 2, 8)[:, None]  # rows of very different scales
    bits, scale = quantize(w)
    assert bits.dtype == torch.uint8 and scale.shape == (8, 1)
    layer = Fp8Linear(nn.Linear(16, 8).requires_grad_(False).eval())
    layer.load_state_dict({"weight": w, "bias": torch.zeros(8)})
    rel = ((layer.weight - w).abs() / w.abs().amax(1, keepdim=True)).max()
    assert rel <= 2**-4  # e4m3: 3 mantissa bits, each row at its own scale
    # dequantize -> quantize is the identity (a resumed checkpoint holds the same fp8 values)
    again = Fp8Linear(nn.Linear(16, 8).requires_grad_(False))
    again.load_state_dict(layer.state_dict())
    assert torch.equal(again.weight_fp8, layer.weight_fp8)
    assert layer.to(torch.bfloat16).weight_fp8.dtype == torch.uint8  # .to(dtype) leaves the bits alone
    assert not list(layer.buffers()) and not any(
        p.requires_grad for p in layer.parameters()
    )  # nothing for DDP


def test_state_dict_and_export_stay_ordinary(tmp_path):
    model = tiny_transformer(lora=False).requires_grad_(False)
    before = model.state_dict()
    assert store_frozen_linears_fp8(model) == 40
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[k].dtype == before[k].dtype and after[k].shape == before[k].shape for k in before)
    model.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    stock = WanTransformer3DModel.from_pretrained(tmp_path / "transformer")  # no wan2 code involved
    assert all(torch.equal(stock.state_dict()[k], after[k]) for k in after)
    with torch.no_grad():
        b = batch(model)
        assert torch.equal(predict(stock, b), predict(model, b))
    # the reverse path gives nn.Linear layers computing the same
    with torch.no_grad():
        out = predict(model, b)
        assert restore_linears(model) == 40 and not any(isinstance(m, Fp8Linear) for m in model.modules())
        assert torch.equal(predict(model, b), out)


def test_fused_export_merges_the_adapter_into_an_fp8_base():
    """``objective.fuse``: merging into an fp8 base would write into a dequantized temporary and lose the adapter;
    ``_merge_peft`` turns the base layers back into nn.Linear first."""
    import copy

    from wan2.lightning.lora_module import _merge_peft

    model = tiny_transformer()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)  # a trained adapter
    store_frozen_linears_fp8(model)
    b = batch(model)
    with torch.no_grad():
        expected, fused = predict(model, b), _merge_peft(copy.deepcopy(model))
        assert not any(isinstance(m, Fp8Linear) for m in fused.modules())
        torch.testing.assert_close(predict(fused, b), expected, rtol=1e-4, atol=1e-5)
        restore_linears(model)
        model.disable_adapters()
        assert (predict(model, b) - expected).abs().max() > 1e-3  # the adapter matters: merged for real


def test_quality_cost_against_bf16_storage():
    """The measured cost of fp8 storage on the tiny stack: output error and LoRA training losses."""
    fp32 = tiny_transformer(lora=False).requires_grad_(False)
    bf16 = bf16_stored(tiny_transformer(lora=False).requires_grad_(False))
    fp8 = tiny_transformer(lora=False).requires_grad_(False)
    store_frozen_linears_fp8(fp8)
    with torch.no_grad():
        b = batch(fp32, n=2)
        out32, out16, out8 = predict(fp32, b), predict(bf16, b), predict(fp8, b)
    max8, mean8 = rel_errors(out8, out16)
    max16, mean16 = rel_errors(out16, out32)
    print(
        f"fp8 vs bf16 storage: max {max8:.4f} mean {mean8:.4f}; bf16 vs fp32: max {max16:.4f} mean {mean16:.4f}"
    )
    assert max8 <= OUTPUT_MAX_TOL and mean8 <= OUTPUT_MEAN_TOL
    assert mean8 > mean16  # fp8 really is coarser: the measurement measures something

    ref = bf16_stored(tiny_transformer())
    losses_ref, _ = train(ref, steps=5, lr=2.0)
    model = tiny_transformer()
    store_frozen_linears_fp8(model)
    losses, grads = train(model, steps=5, lr=2.0)
    diffs = [abs(a - r).item() / r.item() for a, r in zip(losses, losses_ref, strict=True)]
    print(
        "LoRA losses bf16:",
        [f"{x.item():.5f}" for x in losses_ref],
        "fp8:",
        [f"{x.item():.5f}" for x in losses],
    )
    print(f"relative loss difference per step: {[f'{d:.5f}' for d in diffs]}")
    assert max(diffs) <= LOSS_TOL
    assert losses[-1] < losses[0] and all(g.isfinite().all() for g in grads[-1].values())


def test_backward_through_fp8_matches_its_dequantized_weights():
    """The input gradient from the saved fp8 bits equals nn.Linear's with the same (dequantized) weight."""
    torch.manual_seed(0)
    linear = nn.Linear(16, 8).requires_grad_(False)
    layer = Fp8Linear(linear)
    plain = layer.to_linear()
    x = torch.randn(3, 5, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    layer(x).square().sum().backward()
    plain(x2).square().sum().backward()
    assert torch.equal(x.grad, x2.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the mixed-precision path: bf16 compute, fp32 grads
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32


def test_fp8_and_block_swap_together():
    """fp8 first, then block swap (the fp8 bits are what is swapped): the same losses and grads as fp8 alone."""
    model = tiny_transformer(checkpointing=True)
    store_frozen_linears_fp8(model)
    losses, grads = train(model, steps=2)
    model = tiny_transformer(checkpointing=True)
    store_frozen_linears_fp8(model)
    swap = BlockSwap.attach(model.blocks, 2, "cpu")
    assert any(t.dtype == torch.uint8 for t, _ in swap.frozen[3])
    losses_swap, grads_swap = train(model, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(losses, losses_swap, strict=True))
    assert all(torch.equal(g[n], gs[n]) for g, gs in zip(grads, grads_swap, strict=True) for n in g)


def test_fp8_problem_is_none_on_the_cpu_and_one_line_otherwise():
    assert fp8_problem("cpu") is None
    problem = fp8_problem("meta")  # a device that holds no values
    assert problem.startswith("fp8_frozen: meta ") and "\n" not in problem
