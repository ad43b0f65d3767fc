"""Wan2.2 A14B experts (``objective.expert``: high | low | both) on a tiny stand-in in the layout of
Wan2.2-T2V-A14B-Diffusers.

``model=wan22_t2v_a14b model.pretrained=STANDIN`` loads it as two experts; full fine-tuning and LoRA train only
the chosen expert(s), ``both`` routes every sample to its expert by sigma; the exports keep ``transformer_2`` and
``boundary_ratio``, stock ``WanPipeline`` reproduces ``wan2.sampling`` on them, and a low-expert LoRA loads into
``transformer_2`` with stock diffusers (``load_lora_weights(dir, load_into_transformer_2=True)``).
"""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from safetensors.torch import load_file

from tests.conftest import compose_cfg
from wan2.backbones.stack import build_backbone, load_backbone
from wan2.config_check import ConfigError, check_train_config
from wan2.export import export_pipeline
from wan2.lightning.experts import EXPERTS, resolve_expert
from wan2.lightning.flow_config import EXPERTS as CHECKED_EXPERTS
from wan2.lightning.flow_module import FlowMatchingModule
from wan2.sampling import sample_videos

PROMPTS = ["the gold row climbs from #5 to #2", "the blue bar falls from #1 to #3"]
GEN = {"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 4, "guidance_scale": 4.0}
SEED = 5
TEXT_LEN = 32
# the component keys of Wan-AI/Wan2.2-T2V-A14B-Diffusers/model_index.json
A14B_INDEX_KEYS = {
    "_class_name",
    "_diffusers_version",
    "boundary_ratio",
    "expand_timesteps",
    "scheduler",
    "text_encoder",
    "tokenizer",
    "transformer",
    "transformer_2",
    "vae",
}


def tiny_moe(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(compose_cfg(["model=wan_tiny_moe"]).model)


def make_standin(out: Path) -> Path:
    """wan_tiny_moe (two random tiny experts, boundary 0.875) written like the official A14B release: UniPC flow
    scheduler, T5TokenizerFast, sharded transformer weights, no wan2.json."""
    bb = tiny_moe(seed=11).eval()
    bb.scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    export_pipeline(bb, out)
    for name in ("transformer", "transformer_2"):
        shutil.rmtree(out / name)
        getattr(bb, name).save_pretrained(out / name, safe_serialization=True, max_shard_size="3MB")
    index = json.loads((out / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "T5TokenizerFast"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    (out / "wan2.json").unlink()
    return out


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return make_standin(tmp_path_factory.mktemp("a14b") / "Wan2.2-T2V-A14B-Diffusers")


class Runs:
    """``train()`` on the stand-in with ``model=wan22_t2v_a14b model.pretrained=STANDIN``, each setting once."""

    def __init__(self, root: Path, standin: Path):
        self.root, self.standin, self.done = root, standin, {}

    def __call__(self, objective: str, expert: str, validate: bool = False) -> Path:
        key = (objective, expert)
        if key not in self.done:
            from wan2.tasks import train

            out = self.root / f"{objective}_{expert}"
            cfg = compose_cfg(
                [
                    "model=wan22_t2v_a14b",
                    f"model.pretrained={self.standin}",
                    f"model.text_len={TEXT_LEN}",
                    f"objective={objective}",
                    f"objective.expert={expert}",
                    "objective.lr=0.05",
                    "objective.warmup_steps=1",
                    "objective.timesteps.mode=uniform",
                    "objective.timesteps.shift=7",  # half of the samples above the boundary, for `both`
                    "objective.sample.num_inference_steps=2",
                    "data.num_train=8",
                    "data.num_val=2",
                    "data.batch_size=4",
                    "trainer.max_steps=2",
                    "trainer.val_check_interval=2",
                    f"trainer.limit_val_batches={1 if validate else 0}",
                    "trainer.log_every_n_steps=1",
                    "callbacks.progress=null",
                    "logger=csv",
                    "threads=1",
                    # fp32 pinned: the fused export is compared with stock diffusers at 1e-4; under bf16-mixed the
                    # frozen base is stored in bf16 (memory.frozen_dtype=auto) and the fused export carries that
                    "trainer.precision=32-true",
                    f"paths.outputs_dir={self.root}/outputs",
                    f"paths.output_dir={out}",
                    *(["objective.fuse=true", "objective.ema_decay=0.5"] if objective == "lora" else []),
                ]
            )
            check_train_config(cfg)
            train(cfg)
            self.done[key] = out
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, standin) -> Runs:
    return Runs(tmp_path_factory.mktemp("runs"), standin)


def generate(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPTS,
        **GEN,
        generator=torch.Generator("cpu").manual_seed(SEED),
        max_sequence_length=TEXT_LEN,
        output_type="np",
    ).frames


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= load_file(f)
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ the stand-in loads
def test_standin_has_the_a14b_layout_and_loads_as_two_experts(standin):
    index = json.loads((standin / "model_index.json").read_text())
    assert set(index) == A14B_INDEX_KEYS
    assert index["boundary_ratio"] == 0.875 and index["transformer_2"] == [
        "diffusers",
        "WanTransformer3DModel",
    ]
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    assert (standin / "transformer_2" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list((standin / "transformer_2").glob("*.safetensors"))) > 1  # sharded, as the release

    cfg = compose_cfg(
        ["model=wan22_t2v_a14b", f"model.pretrained={standin}", "objective=lora", "objective.expert=low"]
    )
    check_train_config(cfg)
    bb = build_backbone(cfg.model)
    assert (
        bb.boundary_ratio == 0.875 and bb.transformer_2 is not None and bb.transformer is not bb.transformer_2
    )
    # the release's UniPC flow scheduler becomes the Euler one wan2 samples and exports with, same shift
    assert isinstance(bb.scheduler, FlowMatchEulerDiscreteScheduler) and bb.scheduler.config.shift == 3.0
    assert bb.text_len == 512  # model=wan22_t2v_a14b's text_len (the release has no wan2.json)
    assert same(bb.transformer_2.state_dict(), weights(standin / "transformer_2"))
    assert not same(bb.transformer.state_dict(), bb.transformer_2.state_dict())


def test_expert_choices_and_single_transformer_models(standin):
    assert CHECKED_EXPERTS is EXPERTS  # declared once (flow_config); experts.py imports it
    moe, single = tiny_moe(), build_backbone(compose_cfg([]).model)
    assert resolve_expert(moe, None) == "both" and resolve_expert(moe, "low") == "low"
    assert resolve_expert(single, None) is None and resolve_expert(single, "high") is None
    for bad in ("low", "both"):
        with pytest.raises(ValueError, match="two-expert model"):
            resolve_expert(single, bad)
    with pytest.raises(ConfigError, match=r"^objective.expert: 'both' needs a two-expert model"):
        check_train_config(compose_cfg(["objective.expert=both"]))
    with pytest.raises(
        ConfigError, match=r"^objective.expert: 'mid' is not one of \['high', 'low', 'both'\]"
    ):
        check_train_config(compose_cfg(["model=wan_tiny_moe", "objective.expert=mid"]))
    for ok in (
        ["model=wan_tiny_moe", "objective.expert=both"],
        ["objective=lora", "objective.expert=high"],
        ["model=wan22_t2v_a14b", f"model.pretrained={standin}", "objective.expert=both"],
    ):
        check_train_config(compose_cfg(ok))


# ---------------------------------------------------------------------------- routing and sigma ranges
def test_both_routes_each_sample_to_its_expert_by_sigma():
    bb = tiny_moe()
    module = FlowMatchingModule(bb, expert="both", ema_decay=0.0, caption_dropout=0.0)
    seen = {"high": [], "low": []}
    for name, model in (("high", bb.transformer), ("low", bb.transformer_2)):
        model.register_forward_pre_hook(
            lambda m, a, kw, name=name: seen[name].append(kw["timestep"].tolist()), with_kwargs=True
        )
    c, f, h, w = bb.latent_shape(9, 32, 32)
    zt, cond = torch.randn(4, c, f, h, w), torch.randn(4, TEXT_LEN, bb.text_encoder.config.d_model)
    sigma = torch.tensor([0.9, 0.5, 0.875, 0.1])  # 0.875 is the boundary: high, as WanPipeline's t >= 875
    with torch.no_grad():
        pred = module.velocity(zt, sigma, cond)
        alone = [
            (bb.transformer if s >= 0.875 else bb.transformer_2)(
                hidden_states=zt[i : i + 1],
                timestep=sigma[i : i + 1] * 1000,
                encoder_hidden_states=cond[i : i + 1],
                return_dict=False,
            )[0]
            for i, s in enumerate(sigma.tolist())
        ]
    assert seen["high"][0] == pytest.approx([900.0, 875.0]) and seen["low"][0] == pytest.approx(
        [500.0, 100.0]
    )
    torch.testing.assert_close(pred, torch.cat(alone), atol=1e-5, rtol=1e-5)

    # a batch with no high-noise sample still gives the high expert a (zero) gradient: DDP sees every weight used
    pred = module.velocity(zt[:2], torch.tensor([0.3, 0.2]), cond[:2])
    pred.square().mean().backward()
    grads = [p.grad for p in bb.transformer.parameters()]
    assert all(g is not None and not g.any() for g in grads)
    assert any(p.grad is not None and p.grad.any() for p in bb.transformer_2.parameters())


def test_expert_sigma_ranges(caplog):
    bb = tiny_moe()
    for expert, lo, hi in (("high", 0.875, 1.0), ("low", 0.0, 0.875), ("both", 0.0, 1.0)):
        module = FlowMatchingModule(
            bb, expert=expert, ema_decay=0.0, timesteps={"mode": "uniform", "shift": 7}
        )
        ts = module.timestep_cfg
        assert (ts.get("sigma_min", 0.0), ts.get("sigma_max", 1.0)) == (lo, hi), expert
    with caplog.at_level(logging.WARNING, logger="wan2"):
        FlowMatchingModule(tiny_moe(), expert="both", ema_decay=0.0)  # logit-normal, shift 1: ~3% above 0.875
    assert "only 2.8% of training samples reach the high-noise expert" in caplog.text
    with pytest.raises(ValueError, match="leave nothing of the high-noise expert's range"):
        FlowMatchingModule(tiny_moe(), expert="high", ema_decay=0.0, timesteps={"sigma_max": 0.5})


@pytest.mark.parametrize("expert", ["high", "low", "both"])
def test_full_finetuning_trains_only_the_chosen_experts(expert):
    bb = tiny_moe()
    module = FlowMatchingModule(
        bb,
        expert=expert,
        ema_decay=0.9,
        caption_dropout=0.0,
        train_text_encoder=False,
        timesteps={"mode": "uniform", "shift": 7},
    )
    trains = {"high": {"transformer"}, "low": {"transformer_2"}, "both": {"transformer", "transformer_2"}}[
        expert
    ]
    assert {n for n, _ in module.trained_experts()} == trains
    assert {k.split(".")[0] for k in module.state_dict()} == trains | {"text_encoder"}  # checkpoints
    assert {k.split(".")[0] for k in module.ema.shadow} == trains
    before = {
        name: {k: v.clone() for k, v in getattr(bb, name).state_dict().items()}
        for name in ("transformer", "transformer_2")
    }
    c, f, h, w = bb.latent_shape(9, 32, 32)
    batch = {"latents": torch.randn(8, c, f, h, w), "caption": PROMPTS * 4}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(0)
    module.flow_loss(batch).backward()
    opt.step()
    for name in ("transformer", "transformer_2"):
        changed = not same(before[name], getattr(bb, name).state_dict())
        assert changed == (name in trains), (expert, name)


# ----------------------------------------------------------------------------- train.py on the stand-in
@pytest.mark.parametrize("expert", ["low", "high", "both"])
def test_lora_adapts_only_the_chosen_experts(runs, expert):
    out = runs("lora", expert, validate=expert == "low")  # one run also samples with both experts
    trains = {"high": {"transformer"}, "low": {"transformer_2"}, "both": {"transformer", "transformer_2"}}[
        expert
    ]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == trains | {"text_encoder"}
    assert {k.split(".")[0] for k in ckpt["ema"]["shadow"]} == trains
    for name in trains:  # lora_B starts at zero: non-zero means this expert got gradients
        b = [v for k, v in ckpt["state_dict"].items() if k.startswith(f"{name}.") and "lora_B" in k]
        assert b and all(v.abs().max() > 0 for v in b), name
    dirs = {"transformer": "lora", "transformer_2": "lora_2"}
    assert {d.name for d in (out / "export").iterdir()} == {dirs[n] for n in trains} | {"fused"}
    for name in trains:
        meta = json.loads((out / "export" / dirs[name] / "wan2_lora.json").read_text())
        assert meta["component"] == name and meta["expert"] == expert
        assert meta["load_into_transformer_2"] == (name == "transformer_2")
    if expert == "low":
        assert list((out / "samples").glob("step_*/00.mp4"))


@pytest.mark.parametrize("expert", ["low", "high", "both"])
def test_lora_exports_load_into_their_expert_with_stock_diffusers(runs, standin, expert):
    out = runs("lora", expert, validate=expert == "low")
    fused_dir = out / "export" / "fused"
    fused_index = json.loads((fused_dir / "model_index.json").read_text())
    assert (
        fused_index["boundary_ratio"] == 0.875 and fused_index["transformer_2"][1] == "WanTransformer3DModel"
    )
    records = []

    class Keep(logging.Handler):
        def emit(self, r):
            records.append(r.getMessage())

    dlog = logging.getLogger("diffusers")
    dlog.addHandler(keep := Keep())
    try:
        pipe = WanPipeline.from_pretrained(standin)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(fused_dir / "scheduler")
        base = generate(pipe)
        if (out / "export" / "lora").is_dir():
            pipe.load_lora_weights(out / "export" / "lora", adapter_name="high")
        if (out / "export" / "lora_2").is_dir():
            pipe.load_lora_weights(
                out / "export" / "lora_2", adapter_name="low", load_into_transformer_2=True
            )
    finally:
        dlog.removeHandler(keep)
    assert not [m for m in records if "missing" in m.lower() or "unexpected" in m.lower()], records
    adapters = pipe.get_list_adapters()
    assert set(adapters.get("transformer", [])) == ({"high"} if expert != "low" else set())
    assert set(adapters.get("transformer_2", [])) == ({"low"} if expert != "high" else set())
    with_lora = generate(pipe)
    fused = WanPipeline.from_pretrained(fused_dir)
    for name in ("transformer", "transformer_2"):  # an expert without an adapter is the base, bit for bit
        untouched = not adapters.get(name)
        assert same(weights(fused_dir / name), weights(standin / name)) == untouched, name
    diff, effect = np.abs(generate(fused) - with_lora).max(), np.abs(with_lora - base).max()
    print(f"lora {expert}: stock LoRA vs fused export max abs diff {diff:.2e}; LoRA effect {effect:.2e}")
    assert effect > 1e-3 and diff <= 1e-4


def test_wan2_inference_loads_a_low_expert_lora_into_transformer_2(runs, standin):
    from wan2.inference import Wan2T2V

    model = Wan2T2V.from_pretrained(standin, lora=runs("lora", "low", validate=True) / "export" / "lora_2")
    assert model.pipe.get_list_adapters() == {"transformer_2": ["lora_0"]}


def test_full_finetune_export_keeps_both_experts_and_matches_the_repo_sampler(runs, standin):
    export = runs("flow_matching", "both") / "export"
    index = json.loads((export / "model_index.json").read_text())
    assert set(index) == A14B_INDEX_KEYS and index["boundary_ratio"] == 0.875
    assert index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    for name in ("transformer", "transformer_2"):  # both experts trained
        assert not same(weights(export / name), weights(standin / name)), name
    assert isinstance(WanTransformer3DModel.from_pretrained(export / "transformer_2"), WanTransformer3DModel)
    theirs = generate(WanPipeline.from_pretrained(export))  # (B, F, H, W, 3) in [0, 1]
    bb = load_backbone(export)
    ours = sample_videos(bb, PROMPTS, **GEN, seed=SEED)  # (B, 3, F, H, W) in [-1, 1]
    ours = ((ours + 1) / 2).permute(0, 2, 3, 4, 1).numpy()
    bb.transformer_2 = bb.transformer
    one_expert = ((sample_videos(bb, PROMPTS, **GEN, seed=SEED) + 1) / 2).permute(0, 2, 3, 4, 1).numpy()
    diff = float(np.abs(theirs - ours).max())
    print(f"A14B stand-in full fine-tune export: stock WanPipeline vs wan2.sampling max abs diff {diff:.2e}")
    assert theirs.shape == (2, 9, 32, 32, 3) and theirs.std() > 0.01
    assert diff <= 1e-4
    assert np.abs(one_expert - ours).max() > 1e-3  # the low-noise expert really runs
