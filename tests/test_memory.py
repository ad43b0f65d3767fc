"""The ``memory`` group (``wan2/memory/``): frozen weights in the compute dtype, checkpointing, activation
offload, and the one-line checks of its settings; on the tiny stack, in-process, a few seconds each.

Tolerance of the bf16 frozen base (``memory.frozen_dtype=auto`` under ``bf16-mixed``) against today's fp32 frozen
base: autocast computes the same bf16 matmuls either way; only the ops autocast leaves in fp32 (norm weights, the
modulation table, embeddings) see bf16-rounded weights. LOSS_RTOL bounds each of a few LoRA steps' losses.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from tests.conftest import compose_cfg
from wan2.config_check import ConfigError, check_train_config
from wan2.memory.activations import set_activation_offload
from wan2.memory.frozen import keep_fp32
from wan2.tasks import build_module, memory_callbacks

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight"),
]
LOSS_RTOL = 1e-3  # measured: at most 7.5e-5 relative over 8 steps (2 samples, 2 blocks)
# fp32 unless a test asks for bf16: what these tests compare must not follow $WAN2_PRECISION / the machine
TINY = [
    "model.transformer.num_layers=2",
    "model.text_len=16",
    "objective.ema_decay=0",
    "trainer.precision=32-true",
]


def lora_module(*overrides: str):
    torch.manual_seed(0)  # the same weights and adapters whatever the memory settings
    cfg = compose_cfg(["objective=lora", "lora.init=gaussian", *TINY, *overrides])
    return build_module(cfg)


def batch_for(module, n: int = 2) -> dict:
    c, f, h, w = module.backbone.latent_shape(5, 32, 32)
    return {
        "latents": torch.randn(n, c, f, h, w, generator=torch.Generator().manual_seed(1)),
        "caption": ["the green row climbs from #4 to #1", "red falls to #5"][:n],
        "index": torch.arange(n),
    }


def lora_losses(module, steps: int = 4) -> list[float]:
    """``steps`` AdamW steps of the LoRA weights under CPU bf16 autocast (as Lightning's bf16-mixed)."""
    module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    batch, losses = batch_for(module), []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module.flow_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------------------ frozen weights (item 1)
def test_bf16_mixed_stores_the_frozen_lora_base_in_bf16():
    module = lora_module("trainer.precision=bf16-mixed")
    frozen = {n: p.dtype for n, p in module.named_parameters() if not p.requires_grad}
    trained = {n: p.dtype for n, p in module.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained) and set(trained.values()) == {torch.float32}
    # what diffusers / transformers keep in fp32 when they load in bf16 (norms, modulation, time embedder; T5's wo)
    keep = {id(p) for p in keep_fp32(module)}
    kept = {n for n, p in module.named_parameters() if id(p) in keep}
    assert kept == {n for n, d in frozen.items() if d == torch.float32}
    assert any(".scale_shift_table" in n for n in kept) and len(kept) < len(frozen) / 4
    assert frozen["transformer.blocks.0.attn1.to_q.base_layer.weight"] == torch.bfloat16
    assert {d for n, d in frozen.items() if n not in kept} == {torch.bfloat16}
    assert any(n.startswith("text_encoder.") for n in frozen)  # the frozen text encoder too
    assert {p.dtype for p in module.backbone.vae.parameters()} == {torch.float32}  # the VAE stays fp32


@pytest.mark.parametrize(
    "overrides",
    [["trainer.precision=32-true"], ["trainer.precision=bf16-mixed", "memory.frozen_dtype=fp32"]],
    ids=["auto-under-fp32", "fp32-asked"],
)
def test_fp32_keeps_todays_frozen_weights(overrides):
    module = lora_module(*overrides)
    assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_bf16_frozen_lora_losses_track_fp32_and_export_the_same_file(tmp_path):
    from wan2.lora import save_lora

    fp32 = lora_module("trainer.precision=bf16-mixed", "memory.frozen_dtype=fp32")
    bf16 = lora_module("trainer.precision=bf16-mixed")
    ref, got = lora_losses(fp32), lora_losses(bf16)
    for a, b in zip(ref, got):
        assert abs(a - b) <= LOSS_RTOL * abs(a), (ref, got)
    assert ref != got  # the bf16 base is really used (else this test could not fail)
    files = {}
    for tag, m in (("fp32", fp32), ("bf16", bf16)):
        path = save_lora(m.transformer, tmp_path / tag, m.peft_configs["transformer"])
        with safe_open(str(path / "pytorch_lora_weights.safetensors"), "pt") as f:
            files[tag] = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert files["bf16"] == files["fp32"] and set(files["bf16"].values()) == {torch.float32}
    assert all(k.startswith("transformer.") and ".lora_" in k for k in files["bf16"])  # the stock layout


def test_bf16_frozen_base_samples_outside_autocast():
    """QuickEval samples outside Lightning's autocast: the sampler feeds the base its bf16 compute dtype
    (``transformer.dtype``, not the first parameter, which may be a norm kept in fp32)."""
    from wan2.sampling import sample_videos

    module = lora_module("trainer.precision=bf16-mixed").eval()
    video = sample_videos(
        module.backbone, ["a"], num_frames=5, height=32, width=32, num_inference_steps=2, guidance_scale=2.0
    )
    assert video.shape == (1, 3, 5, 32, 32) and torch.isfinite(video).all()


def test_distill_teacher_is_bf16_student_fp32():
    torch.manual_seed(0)
    cfg = compose_cfg(["objective=distill", *TINY, "trainer.precision=bf16-mixed"])
    module = build_module(cfg)
    teacher = {n: p.dtype for n, p in module.teacher.named_parameters()}
    assert sum(d == torch.bfloat16 for d in teacher.values()) > 0.8 * len(teacher)  # all but the fp32-kept
    assert teacher["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert {p.dtype for p in module.transformer.parameters()} == {torch.float32}
    module.teacher.load_state_dict(module.transformer.state_dict())  # a new round: the student copied in
    assert {n: p.dtype for n, p in module.teacher.named_parameters()} == teacher


# ------------------------------------------------------------------- checkpointing, activation offload (item 5)
def test_real_models_checkpoint_by_default_and_memory_overrides():
    for name in ("wan22_ti2v_5b", "wan22_t2v_a14b"):
        assert compose_cfg([f"model={name}"]).model.gradient_checkpointing is True
    assert compose_cfg([]).model.gradient_checkpointing is False  # the tiny stack keeps its default
    assert lora_module("memory.gradient_checkpointing=true").transformer.gradient_checkpointing
    assert not lora_module().transformer.gradient_checkpointing


def _loss_and_grads(checkpointing: bool, offload: bool):
    module = lora_module(
        f"memory.gradient_checkpointing={checkpointing}", f"memory.activation_offload={offload}"
    )
    calls = []
    if offload:  # the tensors autograd saves really go through save_on_cpu's hooks
        orig = torch.autograd.graph.save_on_cpu.__init__

        def spy(self, *a, **k):
            calls.append(1)
            orig(self, *a, **k)

        torch.autograd.graph.save_on_cpu.__init__ = spy
    try:
        loss = module.flow_loss(batch_for(module))
        loss.backward()
    finally:
        if offload:
            torch.autograd.graph.save_on_cpu.__init__ = orig
    assert len(calls) == (1 if offload else 0)
    assert module.transformer.gradient_checkpointing is checkpointing
    return loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_activation_offload_gives_the_same_loss_and_grads(checkpointing):
    loss, grads = _loss_and_grads(checkpointing, offload=False)
    loss_off, grads_off = _loss_and_grads(checkpointing, offload=True)
    assert torch.equal(loss, loss_off)
    assert grads.keys() == grads_off.keys() and grads
    for n in grads:
        assert torch.equal(grads[n], grads_off[n]), n


def test_activation_offload_can_be_removed_and_survives_an_error():
    module = lora_module("memory.activation_offload=true")
    t = module.transformer
    with pytest.raises(TypeError):
        t(hidden_states=torch.zeros(1, 3, 3, 3))  # missing arguments: the forward raises inside the hooks
    assert t._wan2_saved_on_cpu == []  # the context was left (always_call), nothing stays pushed
    set_activation_offload(t, False, checkpointing=False)
    assert not t._forward_pre_hooks and not t._forward_hooks


# ------------------------------------------------------------------------------------------- one-line checks
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["memory.frozen_dtype=fp16"], "memory.frozen_dtype: 'fp16' is not one of ['auto', 'fp32', 'bf16']"),
        (["memory.block_swap=-1"], "memory.block_swap: -1 must be an int >= 0"),
        (["memory.block_swap=6"], "memory.block_swap: 6 must be < the transformer's 6 blocks"),
        (["memory.encoders_on_device=never"], "memory.encoders_on_device: 'never' is not one of"),
        (["memory.activation_offload=1"], "memory.activation_offload: 1 must be true or false"),
        (["memory=80gb", "trainer.precision=32-true"], "memory.frozen_dtype: 'bf16' needs trainer.precision"),
        (
            ["memory.fp8_frozen=true", "trainer=fsdp", "trainer.strategy.param_dtype=null"],
            "memory.fp8_frozen: not with trainer=fsdp",
        ),
        (["memory.block_swap=1", "trainer=fsdp"], "memory.block_swap: not with trainer=fsdp"),
        (
            ["memory.block_swap=1", "trainer=ddp", "trainer.devices=2"],
            "memory.block_swap: 1 needs one process",
        ),
    ],
)
def test_bad_memory_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_train_config(compose_cfg(overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ----------------------------------------------------------------- fp8 base and block swap in a run (items 3, 4)
def test_fp8_frozen_stores_the_lora_base_in_fp8_and_keeps_the_adapters():
    from wan2.memory.fp8 import Fp8Linear

    plain, fp8 = lora_module(), lora_module("memory.fp8_frozen=true")
    layers = [m for m in fp8.transformer.modules() if isinstance(m, Fp8Linear)]
    assert layers and not [m for m in plain.transformer.modules() if isinstance(m, Fp8Linear)]
    assert all(p.dtype == torch.float32 for n, p in fp8.transformer.named_parameters() if p.requires_grad)
    assert {n for n, p in fp8.named_parameters() if p.requires_grad} == {
        n for n, p in plain.named_parameters() if p.requires_grad
    }  # the same adapters train
    ref, got = lora_losses(plain, steps=3), lora_losses(fp8, steps=3)
    assert ref != got  # the fp8 base is really used
    for a, b in zip(ref, got):  # docs/memory_mechanisms.md: about 2e-4 relative on the tiny stack
        assert abs(a - b) <= 1e-2 * abs(a), (ref, got)


def test_block_swap_placement_gives_identical_losses_and_survives_the_module_move():
    from wan2.memory.apply import MemoryPlacement, place

    (placement,) = memory_callbacks(compose_cfg(["memory.block_swap=2"]))
    assert isinstance(placement, MemoryPlacement) and placement.block_swap == 2
    assert not placement.text_encoder_off and not placement.vae_off  # no caches in this config
    ref = lora_losses(lora_module(), steps=3)
    module = lora_module()
    (swap,) = place(module, "cpu", 2, text_encoder_off=False, vae_off=False)
    assert swap.first == len(module.transformer.blocks) - 2 and swap.handles
    # Lightning's placement (module.to) leaves the swapped blocks' frozen weights alone, moves the adapters
    module.to(torch.float64)
    frozen = [p.dtype for p in module.transformer.blocks[-1].parameters() if not p.requires_grad]
    trained = [p.dtype for p in module.transformer.blocks[-1].parameters() if p.requires_grad]
    assert set(frozen) == {torch.float32} and set(trained) == {torch.float64}
    module.to(torch.float32)
    assert lora_losses(module, steps=3) == ref  # bitwise: only where the frozen weights live changes


def test_encoders_stay_in_cpu_memory_and_are_borrowed_for_each_call(monkeypatch):
    import contextlib

    import wan2.memory.offload as offload
    from wan2.memory.apply import place

    cfg = ["objective=lora", "data=rankjump_latents", "data.cache_text=true"]
    (placement,) = memory_callbacks(compose_cfg(cfg))
    assert placement.text_encoder_off and placement.vae_off
    (placement,) = memory_callbacks(compose_cfg([*cfg, "memory.encoders_on_device=always"]))
    assert not placement.text_encoder_off and not placement.vae_off

    module = lora_module()
    bb = module.backbone
    place(module, "cpu", 0, text_encoder_off=True, vae_off=True)
    module.to(torch.float64)  # Lightning's placement: the text encoder is not moved
    assert {p.dtype for p in bb.text_encoder.parameters()} == {torch.float32}
    assert {p.dtype for p in module.transformer.parameters()} == {torch.float64}
    module.to(torch.float32)

    borrowed = []

    @contextlib.contextmanager
    def record(m, device, home="cpu"):  # on_device without the move (a CPU has no second device)
        borrowed.append((type(m).__name__, str(device), str(home)))
        yield m

    monkeypatch.setattr(offload, "on_device", record)
    bb.compute_device = torch.device("meta")  # "the GPU": what each call borrows its encoder onto
    emb = bb.encode_prompts(["red climbs to #1"])
    assert borrowed == [("UMT5EncoderModel", "meta", "cpu")] and emb.device.type == "cpu"
    c, f, h, w = bb.latent_shape(5, 32, 32)
    video = bb.decode_latents(torch.randn(1, c, f, h, w))
    assert borrowed[1:] == [("AutoencoderKLWan", "meta", "cpu")] and video.shape[:2] == (1, 3)


def test_presets_compose():
    for preset in ("default", "24gb", "80gb"):
        mem = compose_cfg([f"memory={preset}"]).memory
        assert set(mem) == {
            "frozen_dtype",
            "fp8_frozen",
            "block_swap",
            "encoders_on_device",
            "gradient_checkpointing",
            "activation_offload",
        }


# ------------------------------------------------------------------------------- real width (item 7, CPU part)
@pytest.mark.parametrize("fp8", [False, True])
def test_fake_tensor_step_counts_the_bytes_of_the_real_step(fp8):
    """The bench measures bf16 steps on FakeTensors (no arithmetic: bf16 matmuls crawl on this CPU). On the tiny
    stack, the same LoRA step counted both ways allocates the same bytes within 1% (0.35% measured; counting the
    weights' views as new storages, as a FakeTensor shows them, made it 7%)."""
    from tests.conftest import load_script

    bench = load_script("scripts/bench.py", "bench_script")
    real, fake = (
        bench.memory_case("wan_tiny", 2, 9, 32, 32, None, bf16=False, fp8=fp8, fake=f) for f in (False, True)
    )
    assert fake["fake"] and not real["fake"]
    assert fake["measured_bytes"] == pytest.approx(real["measured_bytes"], rel=0.01), (
        real,
        fake,
    )  # 7% without
    assert fake["planned_gib"] == real["planned_gib"]


@pytest.mark.slow
def test_bench_memory_at_real_width_matches_the_plan(tmp_path):
    """``scripts/bench.py --only memory --tiny``: one LoRA step at the real widths (reduced depth and clip) on the
    CPU; the plan's total within 15% of the measured peak tensor bytes (about 2 minutes on 2 cores)."""
    import json

    from tests.conftest import load_script

    bench = load_script("scripts/bench.py", "bench_script")
    assert (
        bench.main(["--only", "memory", "--tiny", "--threads", "1", "--out", str(tmp_path / "m.json")]) == 0
    )
    cases = json.loads((tmp_path / "m.json").read_text())["memory"]["cases"]
    assert {c["width"] for c in cases} == {3072, 5120}
    assert {(c["fp8"], c["checkpointing"]) for c in cases} == {
        (f, k) for f in (False, True) for k in (False, True)
    }
    assert {c["precision"] for c in cases} == {"32-true", "bf16-mixed"}  # bf16 on FakeTensors here
    for c in cases:
        assert 0.85 <= c["planned_gib"] / c["measured_gib"] <= 1.15, c
