"""Bad configs are refused before any model or data is built: one line that starts with the dotted key and says
what is allowed, no traceback. Every shipped experiment and config option still passes (no false positives).

The cases compose the real configs with Hydra's compose API and call ``check_train_config``, as ``train.py``
does; a few run ``train.py`` itself with torch made unimportable, so a check that came after the heavy
imports would show up as a traceback.
"""

import os

import pytest

import wan2.config_resolvers  # noqa: F401  (${wan2.latest_export:...}, ${wan2.auto_precision:...})
from tests.conftest import CONFIGS, EXPERIMENTS, ROOT, compose_cfg, run_train
from wan2.config_check import (
    ACCELERATORS,
    PRECISIONS,
    WAN_LORA_MODULES,
    WAN_OTHER_MODULES,
    ConfigError,
    check_train_config,
)
from wan2.lightning.flow_config import EXPERTS, TIMESTEP_MODES

GROUPS = ("data", "model", "objective", "lora", "memory", "trainer", "callbacks", "logger")
NEEDS = {
    "data/shards": ["data.train_shards='pipe:cat data/rankjump/train-000000.tar'"],
    # GPU presets: a bf16 compute dtype, and (24gb) more blocks than wan_tiny's 6 to swap
    "memory/24gb": ["model=wan22_t2v_a14b", "trainer.precision=bf16-mixed"],
    "memory/80gb": ["trainer.precision=bf16-mixed"],
}  # options with a required key

# id: (overrides, key the message starts with, what it must say is allowed)
CASES = {
    # frames and sizes
    "frames_not_4k_plus_1": (["data.rankjump.num_frames=16"], "data.rankjump.num_frames", "4k+1"),
    "frames_zero": (["data.rankjump.num_frames=0"], "data.rankjump.num_frames", "4k+1"),
    "frames_vae_temporal_stride": (
        ["model.vae.scale_factor_temporal=8", "data.rankjump.num_frames=13"],
        "data.rankjump.num_frames",
        "8k+1",
    ),
    "height_not_multiple": (["data.rankjump.height=36"], "data.rankjump.height", "multiple of 8"),
    "width_not_multiple_5b": (
        ["model=wan22_ti2v_5b", "data.rankjump.width=48"],
        "data.rankjump.width",
        "multiple of 32",
    ),
    "height_too_small": (["data.rankjump.height=8"], "data.rankjump.height", ">= 16"),
    "width_vae_stride": (["objective=vae", "data.rankjump.width=18"], "data.rankjump.width", "multiple of 4"),
    "shard_height_not_multiple": (
        ["data=shards", "data.train_shards='pipe:cat x.tar'", "data.height=36"],
        "data.height",
        "multiple of 8",
    ),
    "rows_out_of_range": (["data.rankjump.rows=9"], "data.rankjump.rows", "5..8"),
    "fps_zero": (["data.rankjump.fps=0"], "data.rankjump.fps", ">= 1"),
    "mix_unknown_event": (["+data.rankjump.mix.jump=1"], "data.rankjump.mix.jump", "'first_entry'"),
    "mix_negative_weight": (["data.rankjump.mix.hold=-0.1"], "data.rankjump.mix.hold", ">= 0"),
    "mix_zero_sum": (
        ["data.rankjump.mix={rank_up:0,rank_down:0,hold:0,first_entry:0}"],
        "data.rankjump.mix",
        "positive sum",
    ),
    "rankjump_unknown_setting": (["+data.rankjump.size=3"], "data.rankjump.size", "'num_frames'"),
    "unknown_colour": (["data.rankjump.colours=[red,pink]"], "data.rankjump.colours", "'purple'"),
    # data loading
    "batch_size_string": (["data.batch_size=abc"], "data.batch_size", "an int >= 1"),
    "batch_size_zero": (["data.batch_size=0"], "data.batch_size", "an int >= 1"),
    "batch_size_float": (["data.batch_size=2.5"], "data.batch_size", "an int >= 1"),
    "batch_size_above_num_train": (
        ["data.num_train=4", "data.batch_size=8"],
        "data.batch_size",
        "<= data.num_train=4",
    ),
    "val_batch_size_zero": (
        ["data=rankjump_latents", "data.val_batch_size=0"],
        "data.val_batch_size",
        "an int >= 1",
    ),
    "num_train_negative": (["data.num_train=-1"], "data.num_train", "an int >= 1"),
    "num_val_zero": (["data.num_val=0"], "data.num_val", "an int >= 1"),
    "num_workers_negative": (["data.num_workers=-1"], "data.num_workers", "an int >= 0"),
    "val_split_unknown": (["data.val_split=dev"], "data.val_split", "'heldout'"),
    "shards_not_set": (["data=shards"], "data.train_shards", "required"),
    "shards_missing": (
        ["data=shards", "data.train_shards='/nonexistent/t-{000000..000003}.tar'"],
        "data.train_shards",
        "4 of 4 shard files do not exist",
    ),
    "shards_glob_empty": (
        ["data=shards", "data.train_shards=/nonexistent/*.tar", "data.val_shards=null"],
        "data.train_shards",
        "no file matches",
    ),
    # objective hyperparameters and step schedules
    "lr_string": (["objective.lr=fast"], "objective.lr", "a number > 0"),
    "lr_zero": (["objective.lr=0"], "objective.lr", "a number > 0"),
    "warmup_negative": (["objective.warmup_steps=-5"], "objective.warmup_steps", "an int >= 0"),
    "ema_decay_one": (["objective.ema_decay=1.0"], "objective.ema_decay", "[0, 1)"),
    "caption_dropout_above_one": (["objective.caption_dropout=1.5"], "objective.caption_dropout", "[0, 1]"),
    "timestep_mode_unknown": (
        ["objective.timesteps.mode=cosine"],
        "objective.timesteps.mode",
        "'logit_normal'",
    ),
    "timestep_shift_zero": (["objective.timesteps.shift=0"], "objective.timesteps.shift", "> 0"),
    "sigma_range_empty": (
        ["objective.timesteps.sigma_min=0.9", "objective.timesteps.sigma_max=0.5"],
        "objective.timesteps.sigma_min",
        "< objective.timesteps.sigma_max",
    ),
    "loss_weighting_unknown": (["objective.loss_weighting=huber"], "objective.loss_weighting", "'bell'"),
    "sample_guidance_below_one": (
        ["objective.sample.guidance_scale=0.5"],
        "objective.sample.guidance_scale",
        ">= 1",
    ),
    "sample_steps_zero": (
        ["objective.sample.num_inference_steps=0"],
        "objective.sample.num_inference_steps",
        "an int >= 1",
    ),
    "distill_teacher_not_halving": (
        ["experiment=distill_4step", "objective.teacher_steps=24"],
        "objective.teacher_steps",
        "[8, 16, 32, 64]",
    ),
    "distill_dm_teacher_not_an_export": (
        ["experiment=distill_4step", "objective.dm_steps=10", "objective.dm_teacher=/nonexistent/base"],
        "objective.dm_teacher",
        "not a diffusers export",
    ),
    "distill_dm_sigma_range": (
        ["experiment=distill_4step", "objective.dm_sigma_range=[0.9,0.1]"],
        "objective.dm_sigma_range",
        "0 < lo < hi <= 1",
    ),
    "distill_first_frame": (
        ["experiment=distill_4step", "objective.first_frame_p=0.5"],
        "objective.first_frame_p",
        "not supported by distillation",
    ),
    "fsdp_ema_over_ranks": (
        ["trainer=fsdp", "trainer.num_nodes=2", "trainer.devices=4"],
        "objective.ema_decay",
        "fsdp shards them over 8 ranks",
    ),
    "distill_teacher_below_student": (
        ["objective=distill", "objective.student_steps=8", "objective.teacher_steps=4"],
        "objective.teacher_steps",
        "8 x a power of 2",
    ),
    "distill_student_zero": (
        ["objective=distill", "objective.student_steps=0"],
        "objective.student_steps",
        "an int >= 1",
    ),
    "distill_cfg_steps_negative": (
        ["objective=distill", "objective.cfg_steps=-1"],
        "objective.cfg_steps",
        "an int >= 0",
    ),
    "distill_guidance_below_one": (
        ["objective=distill", "objective.guidance_scale=0.5"],
        "objective.guidance_scale",
        ">= 1",
    ),
    "encoder_heads_not_dividing": (
        ["objective=encoder", "objective.encoder.text_heads=3"],
        "objective.encoder.text_dim",
        "multiple of objective.encoder.text_heads=3",
    ),
    # LoRA
    "lora_rank_zero": (["experiment=lora_rankup", "lora.rank=0"], "lora.rank", "an int >= 1"),
    "lora_rank_float": (["experiment=lora_rankup", "lora.rank=2.5"], "lora.rank", "an int >= 1"),
    "lora_alpha_zero": (["experiment=lora_rankup", "lora.alpha=0"], "lora.alpha", "> 0"),
    "lora_dropout_one": (["experiment=lora_rankup", "lora.dropout=1"], "lora.dropout", "[0, 1)"),
    "lora_targets_typo": (
        ["experiment=lora_rankup", "lora.targets=motoin"],
        "lora.targets",
        "['motion', 'attention', 'all']",
    ),
    "lora_targets_not_linear": (
        ["experiment=lora_rankup", "lora.targets=.*attn1.*"],
        "lora.targets",
        "not a Linear layer",
    ),
    "lora_targets_bad_regex": (
        ["experiment=lora_rankup", "lora.targets='(attn1'"],
        "lora.targets",
        "not a valid regex",
    ),
    "lora_init_unknown": (["experiment=lora_rankup", "lora.init=kaiming"], "lora.init", "'gaussian'"),
    "lora_expert_unknown": (["experiment=lora_rankup", "objective.expert=mid"], "objective.expert", "'both'"),
    "expert_low_on_one_transformer": (["objective.expert=low"], "objective.expert", "two-expert model"),
    # trainer
    "max_steps_zero": (["trainer.max_steps=0"], "trainer.max_steps", "an int >= 1 or -1"),
    "max_steps_string": (["trainer.max_steps=many"], "trainer.max_steps", "an int >= 1 or -1"),
    "val_check_interval_zero": (
        ["trainer.val_check_interval=0"],
        "trainer.val_check_interval",
        "an int >= 1",
    ),
    "val_check_interval_share_without_epochs": (
        ["trainer.val_check_interval=0.5"],
        "trainer.val_check_interval",
        "check_val_every_n_epoch is null",
    ),
    "precision_unknown": (["trainer.precision=fp17"], "trainer.precision", "'bf16-mixed'"),
    "accelerator_unknown": (["trainer.accelerator=npu"], "trainer.accelerator", "'cpu'"),
    "devices_zero": (["trainer.devices=0"], "trainer.devices", "'auto'"),
    "gradient_clip_negative": (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val", ">= 0"),
    "max_time_format": (["trainer.max_time=10:00"], "trainer.max_time", "'DD:HH:MM:SS'"),
    "max_time_zero": (["trainer.max_time=00:00:00:00"], "trainer.max_time", "longer than zero"),
    "limit_val_batches_share_above_one": (
        ["trainer.limit_val_batches=1.5"],
        "trainer.limit_val_batches",
        "[0, 1]",
    ),
    # paths
    "pretrained_missing": (["model.pretrained=/nonexistent"], "model.pretrained", "diffusers export"),
    "pretrained_not_a_pipeline": (
        [f"model.pretrained={ROOT / 'configs'}"],
        "model.pretrained",
        "WanPipeline folder",
    ),
    "vae_pretrained_missing": (["model.vae_pretrained=/nonexistent"], "model.vae_pretrained", "vae_tiny"),
    "ckpt_path_missing": (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path", "'last'"),
    "interpolation_unresolved": (["model.pretrained=${nope}"], "model.pretrained", "'nope' not found"),
    # the rest of the run
    "seed_string": (["seed=abc"], "seed", "an int >= 0"),
    "threads_zero": (["threads=0"], "threads", "an int >= 1"),
    "nonfinite_in_row_zero": (
        ["reliability.max_nonfinite_in_row=0"],
        "reliability.max_nonfinite_in_row",
        "an int >= 1",
    ),
    "preemption_signal_kill": (
        ["reliability.preemption_signals=[SIGKILL]"],
        "reliability.preemption_signals",
        "SIGUSR1",
    ),
    "quick_eval_split_unknown": (
        ["callbacks=quick_eval", "callbacks.quick_eval.split=dev"],
        "callbacks.quick_eval.split",
        "'heldout'",
    ),
}


@pytest.mark.parametrize("overrides,key,allowed", list(CASES.values()), ids=list(CASES))
def test_bad_value_is_one_line_naming_key_and_allowed(overrides, key, allowed):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError) as info:
        check_train_config(cfg)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{key}: "), msg
    assert allowed in msg, msg


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_passes(name, tmp_path):
    """No false positives; ``paths.outputs_dir`` empty, as on a clean checkout (bases: the shipped ones)."""
    check_train_config(compose_cfg([f"experiment={name}", f"paths.outputs_dir={tmp_path}"]))


def test_every_config_option_passes(tmp_path):
    checked = []
    for group in GROUPS:
        for path in sorted((CONFIGS / group).glob("*.yaml")):
            option = f"{group}/{path.stem}"
            try:
                check_train_config(
                    compose_cfg(
                        [f"{group}={path.stem}", *NEEDS.get(option, []), f"paths.outputs_dir={tmp_path}"]
                    )
                )
            except ConfigError as err:
                pytest.fail(f"{option}: {err}")
            checked.append(option)
    assert len(checked) >= 10, checked


def test_good_edge_values_pass(tmp_path):
    """Boundary values that work are accepted: the checks are not stricter than the code."""
    for overrides in (
        [
            "trainer.max_steps=-1",
            "trainer.max_time=00:00:10:00",
            "trainer.devices=auto",
            "trainer.accelerator=gpu",
            "trainer.precision=bf16-mixed",
            "trainer.gradient_clip_val=null",
        ],
        [
            "trainer.max_time={minutes:10}",
            "trainer.devices=[0,1]",
            "trainer.check_val_every_n_epoch=1",
            "trainer.val_check_interval=0.5",
        ],
        [
            "objective.lr=1e-3",
            "objective.ema_decay=0",
            "objective.caption_dropout=1",
            "objective.sample.guidance_scale=1",
        ],
        [
            "experiment=lora_rankup",
            "lora.targets=.*blocks\\.\\d+\\.attn1\\.to_q",
            "lora.alpha=null",
            "lora.init=gaussian",
        ],
        ["experiment=lora_rankup", "lora.targets=proj_out", "lora.rank=1"],
        [
            "experiment=distill_4step",
            "objective.teacher_steps=4",
        ],  # no halving round: guidance distillation only
        ["objective=vae", "data.rankjump.height=20"],  # the VAE alone needs its stride 4, not x patch 2
        ["objective=encoder", "data.rankjump.width=20"],  # the RankJump encoder takes any size
        ["model=wan22_t2v_a14b", "data.rankjump.height=48"],  # 8 x 2 = 16 divides 48
        ["model=wan22_t2v_a14b", "objective=lora", "objective.expert=both"],  # A14B: both experts
        ["model=wan_tiny_moe", "objective.expert=low"],
        ["objective.expert=high"],  # one transformer: high (the old LoRA default) is that transformer
        ["ckpt_path=last", "threads=1"],
    ):
        check_train_config(compose_cfg([*overrides, f"paths.outputs_dir={tmp_path}"]))


# --------------------------------------------------------------------------- train.py end to end
CLI_CASES = {
    "unknown_experiment": (["experiment=nope"], "experiment", "'pretrain_tiny'"),
    "unknown_key": (["data.batch_sise=3"], "data.batch_sise", "did you mean data.batch_size?"),
    "unknown_objective_key": (["objective.lrr=0.1"], "objective.lrr", "did you mean objective.lr?"),
    "wrong_type": (["data.batch_size=abc"], "data.batch_size", "an int >= 1"),
    "lora_target_typo": (["experiment=lora_rankup", "lora.targets=motoin"], "lora.targets", "'motion'"),
}


@pytest.mark.parametrize("args,key,allowed", list(CLI_CASES.values()), ids=list(CLI_CASES))
def test_train_py_refuses_before_heavy_imports(tmp_path, args, key, allowed):
    fake = tmp_path / "fake_modules"  # importing torch (hence building anything) fails loudly
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        "raise ImportError('torch imported before config validation')\n"
    )
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(fake), "HYDRA_FULL_ERROR": "1"}
    proc = run_train(
        [*args, f"paths.output_dir={out}", f"paths.outputs_dir={tmp_path}/outputs"], env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {key}: ") and allowed in lines[0], lines[0]
    if "no such key" in lines[0] and key.split(".")[0] in ("objective", "data"):
        assert "write +" not in lines[0], lines[0]  # a settings dataclass would refuse the added key
    made = {p.relative_to(out).parts[0] for p in out.rglob("*")} if out.exists() else set()
    assert made <= {".hydra", "train.log"}, made  # Hydra's own record only: no checkpoints, logs or export


# ---------------------------------------------------------- Lightning's mirrored choices; lists declared once
def test_mirrored_choices_match_the_code():
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT_STR
    from lightning.pytorch.accelerators import AcceleratorRegistry

    from wan2.diffusion.flow import sample_training_sigmas
    from wan2.lightning import experts

    assert experts.EXPERTS is EXPERTS  # declared once (flow_config), imported by the torch code
    assert set(PRECISIONS) == set(typing.get_args(_PRECISION_INPUT_STR))
    assert set(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"} <= set(ACCELERATORS)
    for mode in TIMESTEP_MODES:
        assert sample_training_sigmas(2, mode=mode).shape == (2,)
    with pytest.raises(ValueError, match="'grid'"):  # the message lists the declared modes
        sample_training_sigmas(2, mode="cosine")


def test_module_table_matches_the_wan_transformer():
    """WAN_LORA_MODULES / WAN_OTHER_MODULES are exactly the modules of a WanTransformer3DModel (one block), split
    by what PEFT's LoRA can wrap; every preset regex matches wrappable modules only."""
    import re

    import torch
    from diffusers import WanTransformer3DModel

    from wan2.lora.adapters import TARGET_PRESETS

    with torch.device("meta"):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            text_dim=8,
            freq_dim=16,
            ffn_dim=16,
            num_layers=1,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
        )
    wrappable = (torch.nn.Linear, torch.nn.Conv3d)
    modules = dict(model.named_modules())
    modules.pop("")
    assert set(WAN_LORA_MODULES) == {n for n, m in modules.items() if isinstance(m, wrappable)}
    assert set(WAN_OTHER_MODULES) == {n for n, m in modules.items() if not isinstance(m, wrappable)}
    for preset, pattern in TARGET_PRESETS.items():
        hits = [n for n in modules if re.fullmatch(pattern, n)]
        assert hits and set(hits) <= set(WAN_LORA_MODULES), preset
