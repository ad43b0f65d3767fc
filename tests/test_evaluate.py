"""evaluate.py: reports (json, html, W&B), A/B with paired CIs, scoring a folder of videos, one-line input errors.

Generation runs the shipped tiny base with few steps and videos: these tests check the plumbing and the report
keys; the numbers only where they are certain (real RankJump clips read back, shuffled ones do not).
"""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wan2.config_resolvers  # noqa: F401
from tests.conftest import ROOT, compose_cfg, load_script, model_cfg
from wan2.data.rankjump import EVENTS, TEMPLATES, RankJump, RankJumpConfig, caption_for
from wan2.data.video import write_mp4
from wan2.eval.requests import meta_from_prompt
from wan2.eval.run import main
from wan2.prompts import event_to_prompt

BASE = ROOT / "pretrained" / "wan_tiny_base"
QUICK = ["num_videos=4", "num_inference_steps=2", "batch_size=4", "threads=1"]
SUMMARY_KEYS = {
    "rank_trajectory/accuracy",
    "rank_trajectory/start_acc",
    "rank_trajectory/end_acc",
    "rank_trajectory/monotonic_acc",
    "rank_trajectory/row_error",
    "colour/accuracy",
    "flicker/score",
    "cost/seconds_per_video",
    "cost/nfe",
}

# the shipped in-domain encoder (experiment=rankjump_encoder) joins the default metrics when it is there
INDOMAIN_KEYS = (
    {"indomain/fd", "indomain/text_video"} if (ROOT / "pretrained" / "rankjump_encoder").is_dir() else set()
)

evaluate_cli = load_script("evaluate.py", "evaluate_cli")


def config(out: Path, *overrides: str, logger: str = "none"):
    """The composed configs/eval.yaml, as ``python evaluate.py out=OUT logger=... *overrides`` would see it."""
    args = evaluate_cli.shorthand([f"out={out}", f"logger={logger}", *overrides])
    return compose_cfg(args, config_name="eval", root_dir=None)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_report_json_html_and_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    out = tmp_path / "out"
    assert main(config(out, f"ckpt={BASE}", *QUICK, logger="wandb")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "generate" and set(report["summary"]) == SUMMARY_KEYS | INDOMAIN_KEYS
    assert report["summary"]["cost/nfe"] == 4  # 2 steps, CFG 5 > 1: cond + uncond
    assert 0.0 <= report["summary"]["rank_trajectory/accuracy"] <= 1.0
    proto = report["protocol"]
    assert proto["num_videos"] == 4 and proto["num_frames"] == 17 and proto["resolution"] == "32x32"
    assert proto["ckpt"] == str(BASE) and proto["num_inference_steps"] == 2 and proto["seed"] == 0
    assert set(report["skipped"]) >= {"fvd", "clipscore"}  # no weights configured: not run, and said so
    assert set(report["per_event"]) <= set(EVENTS) and report["per_event"]
    for stats in report["per_event"].values():
        assert stats["num_videos"] >= 1 and "rank_trajectory/accuracy" in stats
    assert [v["seed"] for v in report["videos"]] == [0, 1, 2, 3]
    assert all((out / v["file"]).is_file() for v in report["videos"])
    rows = [json.loads(x) for x in (out / "videos" / "metadata.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [v["prompt"] for v in report["videos"]]
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= len(SUMMARY_KEYS) and "data:image/png;base64," in html
    assert "rank_trajectory/accuracy" in html and "<table>" in html
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))


def _perturbed_copy(dst: Path, scale: float = 0.5) -> Path:
    """The tiny base with noise added to every transformer weight: a different (worse) checkpoint."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(BASE, dst)
    f = dst / "transformer" / "diffusion_pytorch_model.safetensors"
    gen = torch.Generator().manual_seed(0)
    state = {
        k: v + scale * v.float().std().nan_to_num() * torch.randn(v.shape, generator=gen).to(v.dtype)
        if v.numel() > 1
        else v
        for k, v in load_file(str(f)).items()
    }
    save_file(state, str(f), metadata={"format": "pt"})
    return dst


def test_ab_compare_gives_paired_cis_and_verdicts(tmp_path):
    other = _perturbed_copy(tmp_path / "perturbed")
    out = tmp_path / "ab"
    cfg = config(
        out,
        f"compare=[{BASE},{other}]",
        "prompts=test",
        "num_videos=6",
        "num_inference_steps=6",
        "guidance_scale=2.5",
        "batch_size=6",
        "threads=1",
        "bootstrap.num_samples=2000",
    )
    assert main(cfg) == 0
    report = json.loads((out / "report.json").read_text())
    assert (
        report["mode"] == "compare" and report["a"]["name"] == str(BASE) and report["b"]["name"] == str(other)
    )
    assert [v["prompt"] for v in report["a"]["videos"]] == [v["prompt"] for v in report["b"]["videos"]]
    assert [v["seed"] for v in report["a"]["videos"]] == [v["seed"] for v in report["b"]["videos"]]
    comp = report["comparison"]
    assert set(comp) == SUMMARY_KEYS | INDOMAIN_KEYS
    verdicts = {"B better", "B worse", "no significant difference"}
    for key in SUMMARY_KEYS - {"cost/nfe", "cost/seconds_per_video"}:
        c = comp[key]
        assert c["ci_low"] <= c["diff"] <= c["ci_high"] and c["num_pairs"] >= 2, key
        assert c["verdict"] in verdicts, key
    assert comp["cost/nfe"]["diff"] == 0 and comp["cost/nfe"]["verdict"] == "no difference"
    assert comp["cost/seconds_per_video"]["verdict"].startswith(
        "no CI (one timing per batch"
    )  # a single batch
    # seen (event, ranks, colour) combinations: the base reads 6/6 right; the perturbed copy clearly does not
    assert (
        comp["rank_trajectory/accuracy"]["mean_a"] == 1.0
        and comp["rank_trajectory/accuracy"]["verdict"] == "B worse"
    )
    assert comp["rank_trajectory/row_error"]["higher_is_better"] is False
    a, b = report["a"]["summary"], report["b"]["summary"]
    assert comp["flicker/score"]["diff"] == pytest.approx(b["flicker/score"] - a["flicker/score"])
    html = (out / "report.html").read_text()
    assert (
        "A/B" in html and "95% CI" in html and all(v in html for v in {c["verdict"] for c in comp.values()})
    )
    assert (out / "A" / "videos" / "00005.mp4").is_file() and (out / "B" / "videos" / "00005.mp4").is_file()


def _write_clip_dir(path: Path, clips, frames, metadata: bool) -> Path:
    path.mkdir()
    for i, f in enumerate(frames):
        write_mp4(f, path / f"{i:02d}.mp4", fps=8)
    if metadata:
        rows = [{"file": f"{i:02d}.mp4", "prompt": c.caption, "meta": c.meta} for i, c in enumerate(clips)]
        (path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        (path / "captions.txt").write_text("\n".join(c.caption for c in clips) + "\n")
    return path


def test_videos_dir_real_clips_score_high_and_shuffled_frames_low(tmp_path):
    rj = RankJump(RankJumpConfig(mix=dict.fromkeys(EVENTS, 1.0)), "test", 16)
    clips = [rj[i] for i in range(16)]
    real = np.stack([c.frames for c in clips])  # (16, 17, 32, 32, 3)
    rng = np.random.default_rng(0)
    shuffled = np.stack([v[rng.permutation(len(v))] for v in real])
    scores = {}
    for name, frames, metadata in (("real", real, True), ("shuffled", shuffled, False)):
        d = _write_clip_dir(tmp_path / name, clips, frames, metadata)  # metadata.jsonl / captions only
        assert main(config(tmp_path / f"out_{name}", f"videos={d}")) == 0
        report = json.loads((tmp_path / f"out_{name}" / "report.json").read_text())
        assert report["mode"] == "videos" and report["protocol"]["num_videos"] == 16
        assert "nfe_time" in report["skipped"] and "cost/nfe" not in report["summary"]
        assert report["metrics"]["rank_trajectory"]["num_judged"] == 16  # captions parsed back into events
        scores[name] = report["summary"]
    assert scores["real"]["rank_trajectory/accuracy"] >= 0.95 and scores["real"]["colour/accuracy"] >= 0.95
    assert scores["shuffled"]["rank_trajectory/accuracy"] <= 0.4
    assert scores["shuffled"]["flicker/score"] < scores["real"]["flicker/score"]


def test_captions_and_event_prompts_parse_back_into_events():
    geo = {"height": 32, "width": 32, "num_frames": 17}
    for event, templates in TEMPLATES.items():
        old, new = {"rank_up": (4, 2), "rank_down": (1, 3), "hold": (2, 2), "first_entry": (None, 3)}[event]
        for t in range(len(templates)):
            meta = meta_from_prompt(caption_for(event, old, new, "blue", t) + ", what a comeback", **geo)
            assert (meta["event"], meta["old_rank"], meta["new_rank"], meta["colour"]) == (
                event,
                old,
                new,
                "blue",
            )
    assert meta_from_prompt("a cat on a skateboard", **geo) is None
    windowed = event_to_prompt({"event": "rank_up", "old_rank": 128, "new_rank": 97, "color": "green"})
    meta = meta_from_prompt(windowed, **geo)  # any rank: judged on its board window (wan2.data.window)
    assert (meta["event"], meta["old_rank"], meta["new_rank"]) == ("rank_up", 128, 97), windowed
    assert meta_from_prompt("the green row climbs from #2 to #9", **geo) is None  # not a climb


# evaluate.py with model loading replaced by a loud failure: a bad input must be refused before it
NO_MODEL = """
import runpy, sys
import wan2.backbones.stack as stack
import wan2.inference as inference

def refuse(*args, **kwargs):
    sys.exit("MODEL LOADED")

stack.load_backbone = inference.load_backbone = refuse
inference.Wan2T2V.from_pretrained = classmethod(refuse)
sys.argv = ["evaluate.py", *sys.argv[1:]]
runpy.run_path("evaluate.py", run_name="__main__")
"""


def _bad_inputs(tmp: Path) -> dict:
    (tmp / "empty.txt").write_text("\n  \n")
    (tmp / "bad.jsonl").write_text('{"event": "rank_up", "old_rank": 2, "new_rank": 1}\n{"event": "jump"}\n')
    (tmp / "i3d.pt").write_bytes(b"not checked before the video count")
    (tmp / "novideos").mkdir()
    fvd = ["metrics=[fvd]", f"metrics.fvd.i3d_path={tmp / 'i3d.pt'}"]
    return {
        "missing_export": (["ckpt=/nonexistent/export"], "ckpt"),
        "empty_prompt_file": ([f"prompts={tmp / 'empty.txt'}"], "prompts"),
        "bad_event_line": ([f"prompts={tmp / 'bad.jsonl'}"], "prompts"),
        "fvd_one_video": ([*fvd, "num_videos=1"], "num_videos"),
        "fvd_nine_frames": ([*fvd, "num_frames=9"], "num_frames"),
        "fvd_weights_absent": (
            ["metrics.fvd.i3d_path=/nonexistent/i3d_pretrained_400.pt"],
            "metrics.fvd.i3d_path",
        ),
        "clip_not_configured": (["metrics=[clipscore]"], "metrics.clipscore.model_dir"),
        "unknown_metric": (["metrics=[nope]"], "metrics"),
        "compare_one_model": ([f"compare=[{BASE}]"], "compare"),
        "no_videos_in_dir": ([f"videos={tmp / 'novideos'}"], "videos"),
    }


def _assert_one_line(code, err: str, key: str, out: Path) -> None:
    assert "MODEL LOADED" not in err, "the check must come before any model is loaded"
    assert code == 2, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}:"), err
    assert "Traceback" not in err and not (out / "report.json").exists()


@pytest.mark.parametrize("case", ["missing_export", "fvd_nine_frames"])
def test_bad_input_is_one_line_and_exit_2_before_any_model(tmp_path, case):
    """The command line, in a subprocess: the check comes before any model (and before torch, docs)."""
    args, key = _bad_inputs(tmp_path)[case]
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", NO_MODEL, f"ckpt={BASE}", f"out={tmp_path / 'out'}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _assert_one_line(proc.returncode, proc.stderr, key, tmp_path / "out")


@pytest.mark.parametrize(
    "case",
    [
        "empty_prompt_file",
        "bad_event_line",
        "fvd_one_video",
        "fvd_weights_absent",
        "clip_not_configured",
        "unknown_metric",
        "compare_one_model",
        "no_videos_in_dir",
    ],
)
def test_bad_input_in_process_is_one_line_and_exit_2_before_any_model(tmp_path, case, monkeypatch, capsys):
    """The other bad inputs through evaluate.py's main in this process (what the CLI runs after Hydra composed)."""
    import wan2.backbones.stack as stack
    import wan2.inference as inference

    def refuse(*args, **kwargs):
        print("MODEL LOADED", file=sys.stderr)
        raise SystemExit(3)

    monkeypatch.setattr(stack, "load_backbone", refuse)
    monkeypatch.setattr(inference, "load_backbone", refuse)
    monkeypatch.setattr(inference.Wan2T2V, "from_pretrained", classmethod(refuse))
    args, key = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        evaluate_cli.main.__wrapped__(config(out, f"ckpt={BASE}", *args))
    _assert_one_line(exit_.value.code, capsys.readouterr().err, key, out)


def test_lora_for_another_base_is_one_line_exit_2(tmp_path, capsys):

    from wan2.backbones.stack import build_backbone
    from wan2.lora import add_lora, lora_config, save_lora

    cfg = model_cfg("wan_tiny")
    cfg.transformer.num_attention_heads = 2  # another inner width than the shipped base
    net = copy.deepcopy(build_backbone(cfg, components=("transformer",)).transformer)
    spec = lora_config(rank=4, targets="motion")
    add_lora(net, spec)
    lora_dir = save_lora(net, tmp_path / "other_lora", spec)
    assert main(config(tmp_path / "out", f"ckpt={BASE}", f"lora={lora_dir}", *QUICK)) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and err[0].startswith("error: lora:") and "different base" in err[0]
    assert not (tmp_path / "out" / "videos").exists()


def test_diverging_lora_is_one_line_not_scores_of_black_videos(tmp_path, capsys):
    """Finite LoRA weights of 1e30 pass every file check but overflow the activations: one line, no report."""
    from safetensors.torch import load_file, save_file

    shipped = ROOT / "pretrained" / "lora_rankup"
    huge = tmp_path / "huge"
    shutil.copytree(shipped, huge)
    for f in huge.rglob("*.safetensors"):
        save_file({k: torch.full_like(v, 1e30) for k, v in load_file(f).items()}, f)
    assert main(config(tmp_path / "out", f"ckpt={BASE}", f"lora={huge}", *QUICK)) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and "non-finite frames" in err[0], err
    assert not (tmp_path / "out" / "report.json").exists()


class StandInI3D(torch.nn.Module):
    """Cheap network with the StyleGAN-V TorchScript I3D call signature: (B, 3, T, 224, 224) -> (B, 400)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 2 * 4 * 4, 400)

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
        return self.proj(torch.nn.functional.adaptive_avg_pool3d(x, (2, 4, 4)).flatten(1))


def test_fvd_and_indomain_plug_in_with_their_weights(tmp_path):
    """FVD (a random TorchScript stand-in in the StyleGAN-V format: plumbing only, not an FVD) and the in-domain
    encoder (randomly initialised, saved as experiment=rankjump_encoder does) run when their weights exist."""
    torch.manual_seed(0)
    i3d = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(StandInI3D().eval()), str(i3d))
    overrides = [f"metrics.fvd.i3d_path={i3d}"]
    names = ["rank_trajectory", "fvd"]
    try:
        from wan2.metrics.indomain import EncoderConfig, RankJumpEncoder, save_encoder

        save_encoder(RankJumpEncoder(EncoderConfig()), tmp_path / "encoder")
        overrides.append(f"metrics.indomain.encoder_dir={tmp_path / 'encoder'}")
        names.append("indomain")
    except ImportError:
        pass
    rj = RankJump(RankJumpConfig(mix=dict.fromkeys(EVENTS, 1.0)), "test", 8)
    clips = [rj[i] for i in range(8)]
    d = _write_clip_dir(tmp_path / "real", clips, np.stack([c.frames for c in clips]), metadata=True)
    out = tmp_path / "out"
    assert main(config(out, f"videos={d}", f"metrics=[{','.join(names)}]", *overrides)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metrics_run"] == names and np.isfinite(report["summary"]["fvd/fvd"])
    info = report["metrics"]["fvd"]
    assert (info["num_real"], info["num_fake"], info["frames"], info["resolution"]) == (8, 8, 17, "32x32")
    assert info["weights"] == str(i3d) and "rank-deficient" in info["warning"]
    if "indomain" in names:
        assert np.isfinite(report["summary"]["indomain/fd"]) and "indomain/text_video" in report["summary"]
        assert "not FVD" in report["metrics"]["indomain"]["fd"]


def test_auto_metrics_leave_out_a_weights_metric_the_set_is_too_small_for(tmp_path):
    """FVD configured but not asked for, one video: a note in the report, not an error (asked for: exit 2)."""
    rj = RankJump(RankJumpConfig(), "test", 1)
    d = _write_clip_dir(tmp_path / "one", [rj[0]], np.stack([rj[0].frames]), metadata=True)
    (tmp_path / "i3d.pt").write_bytes(b"never loaded: one video is too few")
    fvd = f"metrics.fvd.i3d_path={tmp_path / 'i3d.pt'}"
    assert main(config(tmp_path / "out", f"videos={d}", fvd)) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (
        report["skipped"]["fvd"].startswith("num_videos: 1 video(s)") and "fvd/fvd" not in report["summary"]
    )
    assert report["summary"]["rank_trajectory/accuracy"] == 1.0
    assert main(config(tmp_path / "out2", f"videos={d}", fvd, "metrics=[fvd]")) == 2


def test_compare_runs_each_model_at_its_own_steps_and_guidance(tmp_path):
    """A 25-step CFG base against the shipped 4-step student: each side samples with its own wan2.json
    settings (same prompts, seeds, frames and size), and the cost rows say so."""
    student = ROOT / "pretrained" / "wan_tiny_rankup_4step"
    out = tmp_path / "ab"
    cfg = config(
        out,
        f"compare=[{BASE},{student}]",
        "prompts=test",
        "num_videos=2",
        "batch_size=2",
        "threads=1",
        "metrics.names=[rank_trajectory,nfe_time]",
        "bootstrap.num_samples=200",
    )
    assert main(cfg) == 0
    report = json.loads((out / "report.json").read_text())
    pa, pb = report["a"]["protocol"], report["b"]["protocol"]
    assert (pa["num_inference_steps"], pa["guidance_scale"], pa["nfe"]) == (25, 2.5, 50)
    assert (pb["num_inference_steps"], pb["guidance_scale"], pb["nfe"]) == (4, 1.0, 4)
    assert report["comparison"]["cost/nfe"]["diff"] == -46
    assert "notes" not in report  # the student keeps the base's VAE


def test_compare_notes_when_the_sides_decode_with_different_vaes(tmp_path):
    """The trap behind an earlier wrong RJ-FD gap: a student exported with an older VAE than its teacher's."""
    from wan2.eval.plan import Side, vae_fingerprint, vae_mismatch_note

    other = tmp_path / "other"
    shutil.copytree(BASE, other)
    vae = next((other / "vae").glob("*.safetensors"))
    from safetensors.torch import load_file, save_file

    weights = load_file(vae)
    first = next(iter(weights))
    weights[first] = weights[first] + 0.01  # another decoder
    save_file(weights, vae)
    same = Side("B", str(ROOT / "pretrained" / "wan_tiny_rankup_4step"))
    assert vae_fingerprint(str(BASE)) == vae_fingerprint(same.ckpt)
    assert vae_mismatch_note([Side("A", str(BASE)), same]) is None
    note = vae_mismatch_note([Side("A", str(BASE)), Side("B", str(other))])
    assert note is not None and note.startswith("A and B decode with different VAEs")
