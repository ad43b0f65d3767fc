"""W&B and CSV logging (issue 17.3): run names, group, tags, one flat config, samples and metrics at one step,
the training run id in the export's wan2.json and in the eval run that evaluates it, eval staging inside the
eval folder, WANDB_MODE honoured. W&B runs offline; the tests read the offline run files and the CSV."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, compose_cfg, run_train, train_env
from wan2.lightning.loggers import RUN_ID_FILE, flat_config, read_rows, run_name, safe_name, wandb_offline


def test_run_name_is_experiment_plus_overrides_without_plumbing():
    overrides = [
        "lora.rank=2",
        "experiment=lora_rankup",
        "paths.output_dir=/x/y",
        "logger=wandb",
        "threads=1",
    ]
    assert run_name("lora_rankup", overrides) == "lora_rankup-lora.rank=2"
    assert run_name("lora_rankup", []) == "lora_rankup"
    assert run_name("e", ["+model.pretrained=/a b/c"]) == "e-model.pretrained=_a_b_c"
    assert safe_name("a/b c?d") == "a_b_c_d"


def test_flat_config_has_no_plumbing_and_no_duplicates():
    flat = flat_config(compose_cfg(["experiment=lora_rankup"]))
    assert "objective.lr" in flat and "data.batch_size" in flat and "lora.rank" in flat
    assert "lr" not in flat and "batch_size" not in flat  # Lightning's hparams copies
    plumbing = [k for k in flat if k.split(".")[0] in ("callbacks", "paths", "hydra", "logger")]
    assert plumbing == []
    assert not [k for k in flat if k.endswith("_target_")]
    assert all(not isinstance(v, dict) for v in flat.values())


def test_wandb_mode_decides_offline(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "online")
    assert not wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline()
    cfg = compose_cfg(["logger=wandb"])
    assert cfg.logger.wandb.offline is None  # None: the logger reads WANDB_MODE


def _offline_run(folder) -> bytes:
    """The bytes of the single offline W&B run under ``folder/wandb``."""
    files = sorted((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return files[0].read_bytes()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step pretrain_tiny run with W&B (offline) and CSV, validation at steps 2 and 4, an export."""
    tmp = tmp_path_factory.mktemp("wandb_run")
    run = tmp / "run"
    args = [
        "experiment=pretrain_tiny",
        f"paths.output_dir={run}",
        f"paths.data_dir={tmp / 'data'}",
        "data.num_train=8",
        "data.batch_size=4",
        "trainer.max_steps=4",
        "trainer.max_time=null",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "data.num_val=2",
        "data.val_batch_size=2",
        "objective.sample.num_inference_steps=2",
        "objective.lr=0.002",
        "callbacks.progress=null",
        "logger=wandb",
        "threads=1",
    ]
    res = run_train(args, env=train_env(HOME=str(tmp / "home")), timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    return run


def test_training_run_name_group_tags_and_flat_config(trained):
    data = _offline_run(trained)
    run_id = (trained / RUN_ID_FILE).read_text().strip()
    assert run_id.encode() in data
    assert b"pretrain_tiny-" in data and b"objective.lr=0.002" in data  # name: experiment + overrides
    for tag in (b"model=wan_tiny", b"objective=flow_matching", b"trainer=cpu"):
        assert tag in data
    # the config logged (the CSV logger writes the same dict to hparams.yaml): flat, no duplicates, no plumbing
    hparams = yaml.safe_load((trained / "csv" / "hparams.yaml").read_text())
    assert hparams["objective.lr"] == 0.002 and "lr" not in hparams and "batch_size" not in hparams
    assert not [k for k in hparams if k.split(".")[0] in ("callbacks", "paths", "hydra", "logger")]


def test_validation_metrics_and_samples_share_the_step(trained):
    _, rows = read_rows(trained / "csv" / "metrics.csv")
    val_steps = sorted(int(float(r["step"])) for r in rows if r.get("val/rank_trajectory/accuracy"))
    sample_steps = sorted(int(p.name.split("_")[1]) for p in (trained / "samples").glob("step_*"))
    assert val_steps == sample_steps == [2, 4]


def test_export_records_the_training_run(trained):
    meta = json.loads((trained / "export" / "wan2.json").read_text())
    run_id = (trained / RUN_ID_FILE).read_text().strip()
    assert meta["train_run"]["id"] == run_id
    assert meta["train_run"]["dir"] == str(trained.resolve())
    assert meta["train_run"]["group"] == "pretrain_tiny"
    from wan2.backbones.files import read_wan2_json

    assert read_wan2_json(trained / "export").train_run["id"] == run_id  # the typed reader accepts it


def test_eval_logs_its_protocol_and_links_the_training_run(trained, tmp_path):
    out, home = tmp_path / "eval", tmp_path / "home"
    cmd = [
        sys.executable,
        str(ROOT / "evaluate.py"),
        f"ckpt={trained / 'export'}",
        "num_videos=2",
        "num_inference_steps=2",
        f"out={out}",
        "threads=1",
        "metrics=[rank_trajectory,colour]",
    ]
    env = train_env(HOME=str(home))
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR", "WANDB_DIR"):
        env.pop(var, None)  # W&B's defaults: under HOME, which the eval must not use
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    proto = json.loads((out / "report.json").read_text())["protocol"]
    run_id = (trained / RUN_ID_FILE).read_text().strip()
    assert proto["train_run"]["id"] == run_id
    assert proto["ckpt"] == str(trained / "export") and proto["lora"] is None
    assert proto["num_inference_steps"] == 2 and proto["seed"] == 0 and proto["num_videos"] == 2
    assert proto["num_prompts"] == 2 and len(proto["prompts_sha256"]) == 16 and len(proto["vae_sha256"]) == 16
    data = _offline_run(out)
    assert b"eval" in data and run_id.encode() in data and proto["vae_sha256"].encode() in data
    assert b"pretrain_tiny" in data  # grouped with the training runs of its experiment
    # the eval's videos and W&B's staging stay in the eval folder, nothing under the user's home
    assert len(list((out / "videos").glob("*.mp4"))) == 2
    assert (out / "wandb" / "data").is_dir()
    assert not (home / ".local" / "share" / "wandb").exists() and not (home / ".cache" / "wandb").exists()


def test_record_train_run_reaches_full_fused_and_lora_exports(tmp_path):
    from wan2.eval.outputs import train_run_of
    from wan2.eval.plan import Side
    from wan2.export import record_train_run

    export = tmp_path / "export"
    (export / "fused").mkdir(parents=True)
    (export / "lora").mkdir()
    (export / "fused" / "wan2.json").write_text(json.dumps({"num_inference_steps": 4}))
    (export / "lora" / "wan2_lora.json").write_text(json.dumps({"rank": 4, "component": "transformer"}))
    run = {"id": "abc12345", "name": "lora_rankup-lora.rank=2", "group": "lora_rankup", "dir": str(tmp_path)}
    changed = record_train_run(export, run)
    assert sorted(p.relative_to(export).as_posix() for p in changed) == [
        "fused/wan2.json",
        "lora/wan2_lora.json",
    ]
    fused = json.loads((export / "fused" / "wan2.json").read_text())
    assert fused == {"num_inference_steps": 4, "train_run": run}  # the other fields kept
    lora = json.loads((export / "lora" / "wan2_lora.json").read_text())
    assert lora["rank"] == 4 and lora["train_run"] == run
    # an eval of a base + this LoRA links the LoRA's training run; a base without wan2.json links none
    base = tmp_path / "base"
    base.mkdir()
    assert train_run_of(Side("model", str(base), lora=str(export / "lora"))) == run
    assert train_run_of(Side("model", str(base))) is None
    assert train_run_of(Side("model", str(export / "fused")))["id"] == "abc12345"


def test_resumed_csv_keeps_the_validation_at_the_checkpoint_step(tmp_path):
    """A validation is logged at the optimizer step k of the checkpoint saved just before it; a run resumed from
    that checkpoint does not validate step k again: its rows stay, the training rows from k on are replaced."""
    from wan2.lightning.loggers import CSVLogger

    def write(rows: str):
        (tmp_path / "csv").mkdir(exist_ok=True)
        (tmp_path / "csv" / "metrics.csv").write_text("step,train/loss,val/acc\n" + rows)

    previous = "4,1.0,\n5,,0.5\n5,0.9,\n6,0.8,\n7,,0.7\n"
    write(previous)
    logger = CSVLogger(tmp_path, name="csv", version="")
    logger.set_resume_step(5)
    logger.log_metrics({"train/loss": 0.95}, step=5)
    rows = read_rows(tmp_path / "csv" / "metrics.csv")[1]
    assert [(r["step"], r["train/loss"], r["val/acc"]) for r in rows] == [
        ("4", "1.0", ""),
        ("5", "", "0.5"),  # the validation of step 5: kept
        ("5", "0.95", ""),  # the training rows from step 5 on: this run's
    ]
    # the resume step unknown (a writer used outside training): every row from the first logged step on goes
    write(previous)
    logger = CSVLogger(tmp_path, name="csv", version="")
    logger.log_metrics({"train/loss": 0.95}, step=5)
    assert [r["step"] for r in read_rows(tmp_path / "csv" / "metrics.csv")[1]] == ["4", "5"]
