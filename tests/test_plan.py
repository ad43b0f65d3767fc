"""``scripts/plan.py`` / ``wan2.plan``: parameter counts, memory and FLOPs held against the real thing.

- parameters: the official sizes built on the meta device (TI2V-5B: 5.000 B; A14B: 14.29 B per expert);
- memory: a tiny Wan transformer (wan_tiny widened to 256, 4 layers, 32 x 32 latents: 1,280 tokens) trains one
  step on the CPU while a dispatch mode follows every tensor storage it creates; weights, grads and AdamW state
  must match the plan to the byte, the activation peak (forward + backward, grads left out) within 15%;
- FLOPs: torch's FlopCounterMode on the meta device (no compute) against the plan's formula;
- CLI: a plan as JSON, and a bad override refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import wan2.config_resolvers  # noqa: F401
from tests.conftest import ROOT, compose_cfg, load_script
from wan2 import plan as P
from wan2.backbones.stack import build_backbone

# RMS norm of bf16 activations with fp32 weights under autocast (diffusers' Wan attention)
pytestmark = pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
TINY = [  # wan_tiny, wide enough that activations dominate: 4 layers x 4 heads x 64, 32 x 32 x 5 latents
    "model=wan_tiny",
    "model.transformer.attention_head_dim=64",
    "model.transformer.ffn_dim=1024",
    "model.transformer.num_layers=4",
    "data=rankjump_latents",
    "data.rankjump.height=128",
    "data.rankjump.width=128",
    "data.rankjump.num_frames=9",
]


# ----------------------------------------------------------------------------------------------- parameters


def test_ti2v_5b_plan_counts_5b_parameters():
    cfg = compose_cfg(["model=wan22_ti2v_5b", "trainer.accelerator=gpu", "trainer.precision=bf16-mixed"])
    plan = P.plan_from_config(cfg, frames=121, height=704, width=1280, batch_size=1)
    assert round(plan["params"]["transformer"] / 1e9, 3) == 5.0
    assert (
        plan["trainable"]["kind"] == "full" and plan["trainable"]["params"] == plan["params"]["transformer"]
    )
    assert plan["workload"]["latent"] == [48, 31, 44, 80]  # as tests/backbones/test_configs.py
    assert plan["workload"]["tokens_per_sample"] == 31 * 22 * 40
    assert plan["precision"]["name"] == "bf16-mixed"


@pytest.mark.parametrize("expert", ["high", "low", None])
def test_a14b_lora_experts(expert):
    over = [] if expert is None else [f"objective.expert={expert}"]
    cfg = compose_cfg(["model=wan22_t2v_a14b", "objective=lora", "trainer.accelerator=gpu", *over])
    plan = P.plan_from_config(cfg, frames=81, height=480, width=832, batch_size=1)
    one = plan["trainable"]["params"] if expert else plan["trainable"]["params"] // 2
    idle = [v for k, v in plan["params"].items() if "idle" in k]
    if expert:  # one expert trains (14.29 B), the other is listed as idle, off the GPU
        assert round(plan["params"]["transformer"] / 1e9, 2) == 14.29
        assert len(idle) == 1 and round(idle[0] / 1e9, 2) == 14.29
    else:  # null on a two-expert model: both train, each sample routed to one
        assert round(plan["params"]["transformer"] / 1e9, 2) == 28.58 and not idle
    assert one == 40 * 8 * 4 * (5120 + 5120)  # rank 4 on 8 attention Linears (5120 x 5120) per block
    assert plan["trainable"]["kind"] == "lora" and plan["precision"]["name"] == "bf16-mixed"  # auto on a GPU
    assert plan["workload"]["tokens_per_sample"] == 21 * 30 * 52


@pytest.mark.parametrize("targets", ["motion", "attention", "all"])
def test_lora_count_equals_peft(targets):
    from wan2.lora import add_lora, lora_config, target_regex

    cfg = compose_cfg(TINY)
    transformer = build_backbone(cfg.model, components=("transformer",)).transformer
    planned = P.lora_trainable(transformer, target_regex(targets), 8)
    assert planned.params == add_lora(transformer, lora_config(rank=8, targets=targets))
    assert planned.tensors == sum(1 for p in transformer.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------- memory


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the mode and still alive, sampled after every op.

    Storages that existed before (weights, inputs, optimizer state) are ignored; ``peak(exclude)`` replays the
    allocations without the storages in ``exclude`` (the parameter grads, which the plan counts on their own).
    """

    def __init__(self, existing=()):
        super().__init__()
        self.known = {StorageWeakRef(t.untyped_storage()) for t in existing}
        self.live: dict = {}
        self.events: list[tuple[int, int]] = []
        self.step = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.step += 1
        for key in [k for k in self.live if k.expired()]:
            born, n = self.live.pop(key)
            self.events += [(born, n), (self.step, -n)]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = StorageWeakRef(t.untyped_storage())
                if key not in self.live and key not in self.known:
                    self.live[key] = (self.step, t.untyped_storage().nbytes())
        return out

    def peak(self, exclude=()) -> int:
        skip = {StorageWeakRef(s) for s in exclude}
        events = self.events + [(born, n) for k, (born, n) in self.live.items() if k not in skip]
        cur = best = 0
        for _, n in sorted(events, key=lambda e: (e[0], e[1] > 0)):  # frees before allocations at a step
            cur += n
            best = max(best, cur)
        return best


def measure_step(cfg, checkpointing: bool, frozen_bf16: bool = False) -> dict:
    """One flow-matching step of the tiny transformer as FlowMatchingModule.flow_loss runs it, measured
    (``frozen_bf16``: the frozen weights stored in bf16, as ``memory.frozen_dtype=auto`` under bf16-mixed)."""
    from wan2.lora import add_lora, lora_config

    torch.manual_seed(0)
    transformer = build_backbone(cfg.model, components=("transformer",)).transformer
    if "lora" in cfg.objective._target_.lower():
        add_lora(transformer, lora_config(**{k: cfg.lora[k] for k in ("rank", "alpha", "targets")}))
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    dtype = torch.bfloat16 if str(cfg.trainer.precision) == "bf16-true" else torch.float32
    transformer.to(dtype)  # *-true: weights, grads and AdamW state in that dtype too
    if frozen_bf16:
        from wan2.memory.frozen import cast_frozen

        cast_frozen(transformer, "bf16")
    b, c = int(cfg.data.batch_size), transformer.config.in_channels
    x0 = torch.randn(b, c, 5, 32, 32, dtype=dtype)
    sigma = torch.rand(b, dtype=dtype)
    cond = torch.randn(b, int(cfg.model.text_len), transformer.config.text_dim, dtype=dtype)
    opt = torch.optim.AdamW(
        [p for p in transformer.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01
    )
    autocast = "mixed" in str(cfg.trainer.precision)

    def step():
        noise = torch.randn_like(x0)
        zt = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            pred = transformer(
                hidden_states=zt, timestep=sigma * 1000, encoder_hidden_states=cond, return_dict=False
            )[0]
        target = (noise - x0).float()
        loss = torch.nn.functional.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3, 4))
        loss.mean().backward()

    for p in opt.param_groups[0]["params"]:  # AdamW state exists from here on (as after a first step)
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    with LiveBytes([*transformer.parameters(), *transformer.buffers(), x0, sigma, cond, *state]) as live:
        step()
    grads = [p.grad for p in transformer.parameters() if p.grad is not None]
    return {
        "weights": sum(p.nbytes for p in transformer.parameters()),
        "grads": sum(g.nbytes for g in grads),
        "optimizer": sum(t.nbytes for t in state),
        "activations": live.peak(exclude=[g.untyped_storage() for g in grads]),
    }


CASES = {  # name: (overrides, gradient checkpointing)
    "fp32-full": (["trainer.precision=32-true"], False),
    "fp32-full-ckpt": (["trainer.precision=32-true"], True),
    "bf16-full": (["trainer.precision=bf16-mixed"], False),
    "bf16-full-ckpt": (["trainer.precision=bf16-mixed"], True),
    "fp32-lora-batch2": (["trainer.precision=32-true", "objective=lora", "data.batch_size=2"], False),
    "bf16-lora": (["trainer.precision=bf16-mixed", "objective=lora"], False),
    "bf16-lora-ckpt": (["trainer.precision=bf16-mixed", "objective=lora"], True),
    "bf16true-lora-ckpt": (["trainer.precision=bf16-true", "objective=lora"], True),
    "bf16true-full": (["trainer.precision=bf16-true"], False),
}


# the bf16 variants of the same lines run under `make test-slow` (each measured step costs 15-20 s on 2 cores)
SLOW_CASES = {"bf16-full", "bf16-full-ckpt", "bf16-lora", "bf16true-lora-ckpt"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in CASES]
)
def test_memory_plan_matches_a_measured_step(name):
    torch.set_num_threads(1)
    overrides, ckpt = CASES[name]
    cfg = compose_cfg([*TINY, "data.batch_size=1", *overrides])
    inp = P.plan_inputs(cfg)
    assert inp.clip.tokens == 5 * 16 * 16
    mem = P.memory_per_gpu(inp.shape, inp.train, inp.prec, inp.clip, inp.par, inp.comps, ckpt)
    lines, act = mem["lines"], mem["activation_detail"]
    got = measure_step(cfg, ckpt)
    assert got["weights"] == lines["weights_trainable"] + lines["weights_frozen_transformer"]
    assert got["grads"] == lines["grads"]
    assert got["optimizer"] == lines["optimizer_adamw"]
    ratio = act["peak"] / got["activations"]
    print(
        f"{name}: activations measured {got['activations'] / 2**20:.2f} MiB, planned {act['peak'] / 2**20:.2f} "
        f"MiB (x{ratio:.3f})"
    )
    assert 0.85 <= ratio <= 1.15, (name, got["activations"], act)


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "ckpt"])
def test_memory_plan_of_a_bf16_frozen_lora_base_matches_a_measured_step(ckpt):
    """``memory.frozen_dtype`` bf16 under bf16-mixed: frozen weights at 2 bytes, and no autocast copies of them."""
    torch.set_num_threads(1)
    cfg = compose_cfg([*TINY, "data.batch_size=1", "trainer.precision=bf16-mixed", "objective=lora"])
    inp = P.plan_inputs(cfg)
    assert inp.memory.frozen_bytes == 2  # memory=default: auto = the compute dtype
    mem = P.memory_per_gpu(inp.shape, inp.train, inp.prec, inp.clip, inp.par, inp.comps, ckpt, mem=inp.memory)
    fp32 = P.memory_per_gpu(inp.shape, inp.train, inp.prec, inp.clip, inp.par, inp.comps, ckpt)
    got = measure_step(cfg, ckpt, frozen_bf16=True)
    lines, act = mem["lines"], mem["activation_detail"]
    assert got["weights"] == lines["weights_trainable"] + lines["weights_frozen_transformer"]
    keep = inp.shape.keep_fp32_params  # norms, modulation, time embedder stay fp32 (diffusers' bf16 loads)
    assert 0 < keep < inp.shape.params // 10
    assert 2 * lines["weights_frozen_transformer"] - 4 * keep == fp32["lines"]["weights_frozen_transformer"]
    assert act["weight_casts"] < fp32["activation_detail"]["weight_casts"]  # only the adapters' copies remain
    ratio = act["peak"] / got["activations"]
    print(f"bf16-frozen lora ckpt={ckpt}: measured {got['activations'] / 2**20:.2f} MiB, x{ratio:.3f}")
    assert 0.85 <= ratio <= 1.15, (got["activations"], act)


def test_memory_mechanisms_are_counted_line_by_line():
    """fp8 block Linears (1 byte + fp32 row scales), block swap (not resident, 2 buffers, streamed twice per
    step), encoders off with the caches, activation offload (block inputs on the host)."""
    base = [
        "model=wan22_t2v_a14b",
        "objective=lora",
        "objective.expert=high",
        "trainer=gpu",
        "data=rankjump_latents",
    ]
    kw = {"frames": 81, "height": 480, "width": 832, "batch_size": 1}
    plain = P.plan_inputs(compose_cfg([*base, "memory=80gb", "memory.activation_offload=false"]), **kw)
    shape = plain.shape
    one = P.memory_per_gpu(
        shape, plain.train, plain.prec, plain.clip, plain.par, plain.comps, True, mem=plain.memory
    )
    assert one["lines"]["weights_vae"] == 0 and one["lines"]["weights_text_encoder"] > 0  # text not cached
    mem = dataclasses.replace(plain.memory, fp8=True, block_swap=10, activation_offload=True)
    got = P.memory_per_gpu(shape, plain.train, plain.prec, plain.clip, plain.par, plain.comps, True, mem=mem)
    lin, rows = shape.block_linear_params, shape.block_linear_rows
    keep, keep_b = shape.keep_fp32_params, shape.block_keep_fp32_params  # norms, modulation: fp32
    assert 0 < keep_b * shape.layers < keep < shape.params // 100
    assert one["lines"]["weights_frozen_transformer"] == 2 * shape.params + 2 * keep
    block = lin + 4 * rows + 2 * (shape.block_params - lin - keep_b) + 4 * keep_b
    whole = 2 * shape.params + 2 * keep - shape.layers * (2 * shape.block_params + 2 * keep_b - block)
    assert got["lines"]["weights_frozen_transformer"] == whole - 10 * block
    assert got["lines"]["block_swap_buffers"] == 2 * block
    assert got["transfer"]["swap_h2d"] == 2 * 10 * block
    S, D = plain.clip.tokens, shape.dim
    assert got["transfer"]["offload_each_way"] == shape.layers * 2 * S * D  # bf16 block inputs, batch 1
    assert got["activation_detail"]["peak"] < one["activation_detail"]["peak"]
    cached = P.plan_inputs(compose_cfg([*base, "memory=80gb", "data.cache_text=true"]), **kw)
    assert not cached.memory.text_encoder_resident and not cached.memory.vae_resident


GOALS = {  # issue 16: (overrides, clip, GiB)
    "ti2v_5b_lora_480p_24gb": (["model=wan22_ti2v_5b", "memory=24gb"], (121, 480, 832), 24),
    "ti2v_5b_lora_720p_24gb": (["model=wan22_ti2v_5b", "memory=24gb"], (121, 704, 1280), 24),
    "a14b_expert_lora_480p_24gb": (
        ["model=wan22_t2v_a14b", "objective.expert=high", "memory=24gb"],
        (81, 480, 832),
        24,
    ),
    "a14b_expert_lora_720p_80gb": (
        ["model=wan22_t2v_a14b", "objective.expert=high", "memory=80gb"],
        (81, 720, 1280),
        80,
    ),
}


@pytest.mark.parametrize("goal", list(GOALS))
def test_issue_goals_fit_with_their_preset(goal):
    overrides, (f, h, w), gib = GOALS[goal]
    cfg = compose_cfg(
        ["objective=lora", "trainer=gpu", "data=rankjump_latents", "data.cache_text=true", *overrides]
    )
    plan = P.plan_from_config(cfg, frames=f, height=h, width=w, batch_size=1, gpu_memory_gib=gib)
    assert plan["configured"] == "checkpointing" and plan["fits"]["checkpointing"], plan["memory_gib"]
    assert not plan["memory"]["fp8"] or gib == 24  # the 80 GB goal without fp8


def test_train_refuses_a_plan_that_does_not_fit_before_building():
    from wan2.config_check import ConfigError
    from wan2.tasks import check_fits

    cfg = compose_cfg([*TINY, "objective=lora"])
    check_fits(cfg, gpu_memory_gib=80)  # the tiny stack fits
    with pytest.raises(ConfigError) as err:
        check_fits(cfg, gpu_memory_gib=0.001)
    msg = str(err.value)
    assert msg.startswith("memory: memory=memory does not fit this GPU: the plan needs") and "\n" not in msg
    assert "memory=auto" in msg and "activations" in msg


# ----------------------------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize(
    "model,objective,clip",
    [
        ("wan22_ti2v_5b", "flow_matching", (121, 480, 832)),
        ("wan_tiny", "lora", (9, 128, 128)),
    ],
)
def test_flops_match_flop_counter_on_meta(model, objective, clip):
    from torch.utils.flop_counter import FlopCounterMode

    from wan2.lora import add_lora, lora_config

    overrides = TINY if model == "wan_tiny" else [f"model={model}"]
    cfg = compose_cfg([*overrides, f"objective={objective}", "trainer.precision=bf16-mixed"])
    stack = build_backbone(cfg.model, components=("transformer", "vae"), device="meta")
    frames, height, width = clip
    inp = P.plan_inputs(cfg, frames=frames, height=height, width=width, batch_size=1, stack=stack)
    transformer = stack.transformer
    if objective == "lora":
        add_lora(transformer, lora_config(**{k: cfg.lora[k] for k in ("rank", "alpha", "targets")}))
    c, f, h, w = (inp.clip.latent_channels, inp.clip.latent_frames, *inp.clip.latent_hw)
    x = torch.randn(1, c, f, h, w, device="meta")
    cond = torch.randn(1, inp.clip.text_len, transformer.config.text_dim, device="meta")
    with FlopCounterMode(display=False) as counter:  # on meta, SDPA runs as two bmm: S^2 terms counted
        out = transformer(
            hidden_states=x,
            timestep=torch.full((1,), 500.0, device="meta"),
            encoder_hidden_states=cond,
            return_dict=False,
        )[0]
        out.float().square().mean().backward()
    # the real models checkpoint by default (their configs): the counter sees the recompute too
    ckpt = bool(transformer.gradient_checkpointing)
    assert ckpt == (model != "wan_tiny")
    planned = P.flops_per_step(inp.shape, inp.train, inp.clip, checkpointing=ckpt)
    print(f"{model} {objective}: counted {counter.get_total_flops():.6g}, planned {planned['total']:.6g}")
    assert planned["total"] == pytest.approx(counter.get_total_flops(), rel=0.02)


# ----------------------------------------------------------------------------------------------- CLI


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, "scripts/plan.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_writes_json(tmp_path):
    out = tmp_path / "plan.json"
    proc = run_cli(
        "model=wan22_ti2v_5b",
        "lora.rank=16",
        "trainer.accelerator=gpu",
        "num_frames=121",
        "height=480",
        "width=832",
        "batch_size=1",
        "gpu_memory_gb=80",
        "--json",
        f"out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(out.read_text())
    assert json.loads(proc.stdout) == plan
    # lora.* implies objective=lora
    assert plan["trainable"]["kind"] == "lora" and plan["trainable"]["rank"] == 16
    assert set(plan["fits"]) == {"no_checkpointing", "checkpointing"}
    ckpt, full = plan["memory_gib"]["checkpointing"], plan["memory_gib"]["no_checkpointing"]
    # umt5-xxl in bf16: memory.frozen_dtype=auto under the bf16-mixed a GPU run picks
    assert ckpt["activations"] < full["activations"] and 10 < ckpt["weights_text_encoder"] < 11
    assert plan["fits"]["checkpointing"] and not plan["fits"]["no_checkpointing"]


def test_cli_refuses_unknown_model_in_one_line():
    proc = run_cli("model=nope")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model: 'nope' is not one of ["), proc.stderr
    assert not proc.stdout


@pytest.mark.parametrize(
    "args,key",
    [
        (["model=wan_tiny", "num_frames=16"], "num_frames"),  # not 4k+1 for the tiny VAE's temporal stride 2
        (["model=wan_tiny", "height=100"], "height"),
        (["model=wan_tiny", "height=abc"], "height"),
        (["model=wan_tiny", "trainer.precision=fp8"], "trainer.precision"),
        (["model=wan_tiny", "objective=vae"], "objective"),
        (["model=wan_tiny", "objective=lora", "lora.targets=nothing_like_this"], "lora.targets"),
    ],
)
def test_main_refuses_bad_values_in_one_line(capsys, args, key):
    script = load_script("scripts/plan.py", "plan_script")
    assert script.main(args) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: "), err


def test_memory_auto_picks_the_fastest_preset_that_fits(capsys):
    script = load_script("scripts/plan.py", "plan_script")
    args = ["model=wan22_t2v_a14b", "objective=lora", "objective.expert=high", "trainer=gpu"]
    args += ["data=rankjump_latents", "data.cache_text=true", "num_frames=81", "height=480", "width=832"]
    assert script.main([*args, "batch_size=1", "gpu_memory_gb=24", "memory=auto", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["memory"]["name"] == "24gb"  # the only preset that fits 24 GiB
    cands = plan["memory_candidates"]
    assert set(cands) == {"default", "24gb", "80gb"} and not cands["default"]["fits"]
    assert script.main([*args, "batch_size=1", "gpu_memory_gb=4", "memory=auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: memory=auto: no preset fits 4 GiB (") and "\n" not in err


def test_plan_of_a_pretrained_folder_needs_its_configs_only(tmp_path):
    """``model.pretrained`` is planned from the folder's component configs through ``wan2.backbones`` (the one
    loader, vetted): a copy without weights plans like the real export; a hostile folder is one line."""
    import shutil

    from wan2.backbones.files import BackboneError

    base = ROOT / "pretrained" / "wan_tiny_base"
    configs = tmp_path / "configs_only"
    shutil.copytree(base, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    real = P.plan_from_config(compose_cfg([f"model.pretrained={base}"]))
    bare = P.plan_from_config(compose_cfg([f"model.pretrained={configs}"]))
    assert bare["params"] == real["params"] and bare["memory_gib"] == real["memory_gib"]
    assert bare["workload"]["text_len"] == 32
    index = json.loads((configs / "model_index.json").read_text())
    (configs / "model_index.json").write_text(json.dumps({**index, "vae": ["os", "system"]}))
    with pytest.raises(BackboneError, match=r"not an allowed class"):
        P.plan_from_config(compose_cfg([f"model.pretrained={configs}"]))
