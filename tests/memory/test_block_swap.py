"""Block swap (``wan2.memory.block_swap``): the last N blocks' frozen weights live on the CPU and are loaded one
block ahead of use; training with it gives identical losses and LoRA gradients, with at most 2 swapped blocks
resident at any block's forward or backward."""

from functools import partial

import pytest
import torch
import torch.utils.checkpoint

from tests.memory.tiny import batch, predict, tiny_transformer, train
from wan2.memory.block_swap import BlockSwap, in_backward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def check_loaded_copies(swap: BlockSwap, seen: list) -> None:
    """A forward pre-hook (after the swap's own) per swapped block: every frozen tensor the block computes with is
    a loaded copy, not the CPU master it is evicted to."""
    for j, pairs in swap.frozen.items():

        def hook(module, args, j=j, pairs=pairs):
            seen.append(j)
            assert all(t.data_ptr() != master.data_ptr() for t, master in pairs), f"block {j} not loaded"

        swap.blocks[j].register_forward_pre_hook(hook)


def build(checkpointing):
    """The tiny LoRA transformer with no / diffusers' (non-reentrant) / reentrant gradient checkpointing."""
    model = tiny_transformer(checkpointing=bool(checkpointing))
    if checkpointing == "reentrant":
        model.enable_gradient_checkpointing(partial(torch.utils.checkpoint.checkpoint, use_reentrant=True))
        model.patch_embedding.requires_grad_(True)  # reentrant checkpoints need an input that requires grad
    return model


@pytest.mark.parametrize(
    "checkpointing", [False, True, "reentrant"], ids=["plain", "checkpointing", "reentrant"]
)
def test_training_is_identical_and_at_most_two_blocks_are_resident(checkpointing):
    losses, grads = train(build(checkpointing))

    model = build(checkpointing)
    trace, seen = [], []
    swap = BlockSwap.attach(model.blocks, 3, "cpu", trace=trace)
    check_loaded_copies(swap, seen)
    losses_swap, grads_swap = train(model)

    assert all(torch.equal(a, b) for a, b in zip(losses_swap, losses, strict=True))
    for step, (g, g_swap) in enumerate(zip(grads, grads_swap, strict=True)):
        assert g.keys() == g_swap.keys() and len(g) > 20
        assert any(n.startswith("blocks.3.") for n in g)  # adapters inside swapped blocks are trained too
        for n in g:
            assert torch.equal(g_swap[n], g[n]), f"step {step}: {n}"
    assert losses[-1] < losses[0]

    # every swapped block ran forward and backward each step, resident then, with at most one other
    events = [(e, j) for e, j, _ in trace]
    per_step = [
        ("forward", 1),
        ("forward", 2),
        ("forward", 3),
        ("backward", 3),
        ("backward", 2),
        ("backward", 1),
    ]
    if checkpointing is True:  # the backward of each block reruns its forward first
        per_step = per_step[:3] + [e for j in (3, 2, 1) for e in (("backward", j), ("recompute", j))]
    elif checkpointing == "reentrant":  # no output hooks: the forward ran without grad; recompute only
        per_step = per_step[:3] + [("recompute", j) for j in (3, 2, 1)]
    assert events == per_step * 3
    for event, j, resident in trace:
        assert j in resident and len(resident) <= 2, (event, j, resident)
    assert seen.count(3) == (6 if checkpointing else 3)
    assert swap.resident <= {1}  # after the last backward only its block may remain
    # the LoRA weights stayed trainable parameters of the same blocks (never swapped)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_inference_streams_one_block_ahead_and_evicts_everything():
    model = tiny_transformer(num_layers=6, lora=False).requires_grad_(False).eval()
    with torch.no_grad():
        expected = predict(model, batch(model))
    trace, seen = [], []
    swap = BlockSwap.attach(model.blocks, 4, "cpu", trace=trace)
    check_loaded_copies(swap, seen)
    with torch.inference_mode():
        out = predict(model, batch(model))
        out_again = predict(model, batch(model))
    assert torch.equal(out, expected) and torch.equal(out_again, expected)
    # block j computes while j + 1 is being copied; block 5 (the last) has nothing after it
    window = [("forward", 2, (2, 3)), ("forward", 3, (3, 4)), ("forward", 4, (4, 5)), ("forward", 5, (5,))]
    assert trace == window * 2 and seen == [2, 3, 4, 5] * 2
    assert swap.resident == set()
    for pairs in swap.frozen.values():  # evicted: the CPU masters are the weights again
        assert all(t.data_ptr() == master.data_ptr() for t, master in pairs)

    # a backward after inference-mode validation works (the copies made there are ordinary tensors)
    b = batch(model)
    b["hidden_states"].requires_grad_(True)
    predict(model.train(), b).sum().backward()
    assert torch.isfinite(b["hidden_states"].grad).all() and swap.resident == {2}


def test_state_dict_and_detach_keep_the_weights():
    model = tiny_transformer(lora=False).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swap = BlockSwap.attach(model.blocks, 2, "cpu")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    swap.detach()
    assert swap.resident == set() and not any(b._forward_pre_hooks for b in model.blocks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bad", [-1, 5, 2.5, "2", True])
def test_bad_block_count_is_one_line(bad):
    model = tiny_transformer(lora=False)
    with pytest.raises(
        ValueError, match=r"^block_swap: .* is not a block count in 0\.\.4 \(this model has 4\)$"
    ):
        BlockSwap.attach(model.blocks, bad, "cpu")


def test_in_backward_tells_the_autograd_engine_apart():
    """The private torch call the hooks rely on still answers (fails by name after a torch upgrade moves it)."""
    x = torch.ones(2, requires_grad=True)
    inside = []
    y = x * 2
    y.register_hook(lambda g: inside.append(in_backward()))
    assert not in_backward()
    y.sum().backward()
    assert inside == [True]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_peak_memory_drops_and_training_is_identical():
    """On CUDA (pinned masters, side stream): the same losses and grads, and a peak smaller by several blocks."""

    def run(num_swapped: int):
        from tests.memory.tiny import tiny_transformer as build

        model = build(num_layers=8, checkpointing=True).cuda()
        swap = BlockSwap.attach(model.blocks, num_swapped, "cuda") if num_swapped else None
        b = {k: v.cuda() for k, v in batch(model).items()}
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        losses, grads = [], []
        for _ in range(2):
            model.zero_grad()
            loss = torch.nn.functional.mse_loss(predict(model, b), b["target"])
            loss.backward()
            losses.append(loss.detach().cpu())
            grads.append({n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None})
        torch.cuda.synchronize()
        block_bytes = sum(p.numel() * p.element_size() for p in model.blocks[0].parameters())
        del swap
        return losses, grads, torch.cuda.max_memory_allocated(), block_bytes

    losses, grads, peak, _ = run(0)
    losses_s, grads_s, peak_s, block_bytes = run(6)
    # close, not equal: CUDA attention backward may sum in a different order from run to run
    torch.testing.assert_close(losses_s, losses, rtol=1e-5, atol=1e-6)
    for g, gs in zip(grads, grads_s, strict=True):
        assert g.keys() == gs.keys()
        torch.testing.assert_close(gs, g, rtol=1e-4, atol=1e-6)
    print(f"peak without swap {peak / 2**20:.2f} MiB, with 6 of 8 swapped {peak_s / 2**20:.2f} MiB")
    assert peak_s < peak - 3 * block_bytes  # at most 2 of the 6 swapped blocks are resident at once
