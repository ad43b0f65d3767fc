"""Speed settings that must not change what a step computes: ``objective.compile`` (torch.compile of the training
forward + backward) and the fused AdamW every objective uses; no C++ compiler is one line before any work."""

import torch

from tests.conftest import model_cfg, run_train, train_env
from wan2.backbones.stack import build_backbone
from wan2.lightning.lora_module import LoRAModule
from wan2.lightning.optim import adamw, fused_ok


def lora_module(compile_: bool) -> LoRAModule:
    """The demo's objective (LoRA on a frozen base) on a one-block tiny transformer, the same weights each call."""
    mc = model_cfg("wan_tiny")
    mc.transformer.num_layers = 1
    torch.manual_seed(0)
    return LoRAModule(build_backbone(mc), compile=compile_, caption_dropout=0.0, ema_decay=0.0).train()


def loss_and_grads(module: LoRAModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = module.flow_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_compiled_step_computes_the_eager_step():
    eager, compiled = lora_module(False), lora_module(True)
    c, f, h, w = eager.backbone.latent_shape(17, 32, 32)
    g = torch.Generator().manual_seed(1)
    batch = {
        "latents": torch.randn(2, c, f, h, w, generator=g),  # (B, C, F', H', W')
        "caption": ["the green row climbs from #4 to #1", "leaderboard: red bar falls from #2 to #5"],
        "index": torch.tensor([3, 7]),  # per-sample noise and sigma: the same draws in both modules
    }
    loss_e, grads_e = loss_and_grads(eager, batch)
    loss_c, grads_c = loss_and_grads(compiled, batch)
    assert compiled._compiled and not eager._compiled  # the compiled twin ran, the eager module made none
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-6)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 0 and all("lora_" in n for n in grads_e)
    for n in grads_e:
        torch.testing.assert_close(grads_c[n], grads_e[n], rtol=1e-3, atol=1e-6, msg=n)
    # the twin shares the weights and is no submodule: checkpoints and exports see the same keys
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    compiled.eval()  # validation sampling and the export run the transformer eagerly
    assert compiled.compiled(compiled.transformer) is compiled.transformer


def test_fused_adamw_takes_torchs_default_step():
    torch.manual_seed(0)
    ws = [torch.randn(8, 4), torch.randn(4)]
    grads = [torch.randn_like(w) for w in ws]
    results = []
    makers = (
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01),
        lambda ps: adamw([{"params": ps}], lr=1e-2, weight_decay=0.01),
    )
    for make in makers:
        ps = [torch.nn.Parameter(w.clone()) for w in ws]
        opt = make(ps)
        for _ in range(3):
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
            opt.step()
        results.append((opt, ps))
    (default, p_default), (ours, p_ours) = results
    assert ours.defaults["fused"] and not default.defaults["fused"]
    for a, b in zip(p_default, p_ours):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert not fused_ok([torch.zeros(2, dtype=torch.int64)])  # not a float: torch's default implementation
    # bf16-mixed: Lightning refuses gradient clipping with an optimizer that unscales internally (fused)
    assert not adamw([{"params": [torch.nn.Parameter(ws[0].clone())]}], precision="bf16-mixed").defaults[
        "fused"
    ]


def test_compile_without_a_cxx_compiler_is_one_line(tmp_path):
    r = run_train(
        ["objective.compile=true", f"paths.output_dir={tmp_path / 'run'}", "logger=none"],
        env=train_env(CXX="/nonexistent/c++"),
        timeout=120,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: objective.compile: torch.compile on a CPU needs a C++ compiler"), (
        lines
    )
    assert "set objective.compile=false" in lines[-1] and not (tmp_path / "run" / "checkpoints").exists()


def test_narrow_matmuls_are_computed_transposed_with_the_same_values():
    """A rank-4 LoRA linear's products as AOTAutograd's graphs hold them (aten.mm): the three with 4 output columns
    (``x @ A^T``, ``g @ B`` on the way to ``x``'s gradient, ``lora_B``'s gradient ``g^T @ h``) become transposed
    products; the values stay."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from wan2.lightning.compile import NARROW, TALL, CpuFastPaths

    def lora(x, w, a, b, g):  # x (512, 128), w (128, 128), a (4, 128), b (128, 4), g (512, 128)
        h = x @ a.t()  # (512, 4)
        y = x @ w.t() + h @ b.t()  # (512, 128)
        grad_b = g.t() @ h  # (128, 4)
        grad_a = (g @ b).t() @ x  # (4, 128)
        return y, grad_a, grad_b

    def narrow(gm) -> int:
        shapes = [n.meta["val"].shape for n in gm.graph.nodes if n.target is torch.ops.aten.mm.default]
        return sum(n <= NARROW and m >= TALL for m, n in shapes)

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, generator=g) for s in [(512, 128), (128, 128), (4, 128), (128, 4), (512, 128)]]
    gm = make_fx(lora, tracing_mode="fake")(*args)
    assert narrow(gm) == 3
    CpuFastPaths()(gm.graph)
    gm.recompile()
    assert narrow(gm) == 0
    for got, want in zip(gm(*args), lora(*args)):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()  # the same sums, in another order


def test_the_gelu_tanh_is_computed_with_a_sigmoid_in_the_compiled_step(monkeypatch):
    """Inductor decomposes Wan's tanh GELU (forward and backward) into a ``tanh``, which ``CpuFastPaths`` computes
    as ``2 sigmoid(2 z) - 1``: the compiled feed-forward gives the eager values and gradients."""
    import wan2.lightning.compile as compile_

    rewritten = []
    rewrite = compile_.CpuFastPaths.tanh_by_sigmoid
    monkeypatch.setattr(
        compile_.CpuFastPaths,
        "tanh_by_sigmoid",
        staticmethod(lambda g, n: (rewritten.append(n), rewrite(g, n))),
    )
    torch.manual_seed(0)
    ffn = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(64, 16)
    )
    x = 3 * torch.randn(128, 16)

    def run(model):
        ffn.zero_grad()
        out = model(x)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in ffn.parameters()]

    want, want_grads = run(ffn)
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):  # no cached graph: the pass must run
        got, got_grads = run(compile_.compile_for_training(ffn))
    assert rewritten  # the forward's tanh (and the backward's, where it recomputes it)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
