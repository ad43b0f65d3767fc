"""Broken or hostile diffusers folders (issue 14.6): one ``BackboneError`` line naming the file, before anything is
instantiated, through every loader (``load_backbone``, ``Wan2T2V.from_pretrained``, meta builds for plans) and
through ``python train.py model.pretrained=...`` / ``python evaluate.py ckpt=...``. Payload files write a marker
when imported or run; the marker must never appear."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from wan2.backbones.files import BackboneError, Wan2Json, read_wan2_json, vet_pipeline
from wan2.backbones.stack import build_backbone, load_backbone, load_vae

BASE = ROOT / "pretrained" / "wan_tiny_base"
MARKER = "PAYLOAD_RAN"


def payload(marker: Path) -> str:
    """Python source that leaves ``marker`` behind if it ever runs (imported or executed)."""
    return f"open({str(marker)!r}, 'w').write('ran')\nclass Evil:\n    pass\nEvilModel = Evil\n"


def _index(d: Path, **changes) -> None:
    f = d / "model_index.json"
    index = json.loads(f.read_text())
    index.update(changes)
    f.write_text(json.dumps(index))


def _config(d: Path, name: str, **changes) -> None:
    f = d / name
    cfg = json.loads(f.read_text())
    cfg.update(changes)
    f.write_text(json.dumps(cfg))


def _custom_module(d: Path, m: Path) -> None:  # a non-library module whose code sits in the folder
    _index(d, vae=["evil", "Evil"])
    (d / "vae" / "evil.py").write_text(payload(m))
    (d / "evil.py").write_text(payload(m))


def _py_in_component(d: Path, m: Path) -> None:  # allowed classes, but custom code beside the weights
    (d / "transformer" / "transformer_wan.py").write_text(payload(m))


def _auto_map(d: Path, m: Path) -> None:  # transformers custom code (trust_remote_code)
    _config(d, "text_encoder/config.json", auto_map={"AutoModel": "modeling_evil.EvilModel"})


def _tokenizer_auto_map(d: Path, m: Path) -> None:
    _config(d, "tokenizer/tokenizer_config.json", auto_map={"AutoTokenizer": ["tok_evil.Evil", None]})


def _huge_header(d: Path, m: Path) -> None:
    f = d / "vae" / "diffusion_pytorch_model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 2**40) + raw[8:])


def _non_json_header(d: Path, m: Path) -> None:
    f = d / "transformer" / "diffusion_pytorch_model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    f.write_bytes(raw[:8] + b"\xff" * n + raw[8 + n :])


def _offsets_outside(d: Path, m: Path) -> None:
    f = d / "text_encoder" / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, 10**12]
    text = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def _truncated(d: Path, m: Path) -> None:
    (d / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x01\x02")


def _pickled_only(d: Path, m: Path) -> None:
    f = d / "vae" / "diffusion_pytorch_model.safetensors"
    f.rename(f.with_suffix(".bin"))


def _bad_shard_index(d: Path, m: Path) -> None:
    (d / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"proj_out.weight": "../../../../etc/passwd"}})
    )


# name -> (make the folder bad, what the one line says)
CASES = {
    "missing_component": (lambda d, m: shutil.rmtree(d / "vae"), "is missing (no vae folder)"),
    "model_index_invalid_json": (
        lambda d, m: (d / "model_index.json").write_text("{not json"),
        "not valid JSON",
    ),
    "model_index_list": (
        lambda d, m: (d / "model_index.json").write_text("[1, 2]"),
        "must hold a JSON object",
    ),
    "model_index_deep": (lambda d, m: (d / "model_index.json").write_text("[" * 100000), "not valid JSON"),
    "not_wan_pipeline": (
        lambda d, m: _index(d, _class_name="StableDiffusionPipeline"),
        "expected a WanPipeline",
    ),
    "custom_pipeline_class": (
        lambda d, m: _index(d, _class_name=["evil", "EvilPipeline"]),
        "expected a WanPipeline",
    ),
    "os_system": (
        lambda d, m: _index(d, vae=["os", "system"]),
        'vae = ["os", "system"], not an allowed class',
    ),
    "builtins_eval": (lambda d, m: _index(d, text_encoder=["builtins", "eval"]), "not an allowed class"),
    "torch_nn_linear": (lambda d, m: _index(d, transformer=["torch.nn", "Linear"]), "not an allowed class"),
    "wrong_library_scheduler": (
        lambda d, m: _index(d, scheduler=["diffusers", "DDPMScheduler"]),
        "not an allowed",
    ),
    "extra_component": (
        lambda d, m: _index(d, safety_checker=["os", "system"]),
        "not a WanPipeline component",
    ),
    "component_not_a_pair": (
        lambda d, m: _index(d, tokenizer="transformers.T5Tokenizer"),
        "not an allowed class",
    ),
    "bad_boundary_ratio": (lambda d, m: _index(d, boundary_ratio="high"), "'boundary_ratio'"),
    "no_transformer": (lambda d, m: _index(d, transformer=[None, None]), "not an allowed class"),
    "custom_module": (_custom_module, "custom code"),
    "py_in_component": (_py_in_component, "custom code"),
    "auto_map": (_auto_map, "auto_map"),
    "tokenizer_auto_map": (_tokenizer_auto_map, "auto_map"),
    "config_class_mismatch": (
        lambda d, m: _config(d, "vae/config.json", _class_name="WanTransformer3DModel"),
        "model_index.json says 'AutoencoderKLWan'",
    ),
    "config_invalid_json": (
        lambda d, m: (d / "transformer" / "config.json").write_text("{"),
        "not valid JSON",
    ),
    "text_encoder_other_arch": (
        lambda d, m: _config(d, "text_encoder/config.json", architectures=["T5ForConditionalGeneration"]),
        "not a UMT5EncoderModel",
    ),
    "wan2_json_invalid": (lambda d, m: (d / "wan2.json").write_text("{"), "wan2.json"),
    "wan2_json_bad_value": (
        lambda d, m: _config(d, "wan2.json", num_inference_steps="ten"),
        "key 'num_inference_steps': 'ten' must be an int >= 1",
    ),
    "wan2_json_unknown_key": (
        lambda d, m: _config(d, "wan2.json", guidance=3),
        "key 'guidance' is not a wan2.json",
    ),
    "wan2_json_list": (lambda d, m: (d / "wan2.json").write_text("[]"), "must hold a JSON object"),
    "safetensors_huge_header": (_huge_header, "corrupt safetensors header (declares 1099511627776"),
    "safetensors_non_json_header": (_non_json_header, "corrupt safetensors header (not JSON)"),
    "safetensors_offsets_outside": (_offsets_outside, "lies outside the file"),
    "safetensors_truncated": (_truncated, "no header"),
    "pickled_weights_only": (_pickled_only, "pickled weights"),
    "shard_index_escapes": (_bad_shard_index, "names shard"),
}


def bad_folder(tmp_path: Path, case: str) -> tuple[Path, Path]:
    d = tmp_path / "bad" / case
    shutil.copytree(BASE, d)
    marker = tmp_path / MARKER
    CASES[case][0](d, marker)
    return d, marker


def one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


@pytest.mark.parametrize("case", list(CASES))
def test_every_loader_refuses_in_one_line(tmp_path, case):
    """``load_backbone``, ``Wan2T2V.from_pretrained`` and the meta build (plans) all refuse, naming the folder."""
    from wan2.inference import Wan2T2V

    d, marker = bad_folder(tmp_path, case)
    want = CASES[case][1]
    loaders = [load_backbone, Wan2T2V.from_pretrained]
    if case not in {n for n in CASES if n.startswith(("safetensors", "pickled", "shard"))}:
        loaders.append(lambda p: build_backbone({"pretrained": str(p)}, device="meta"))  # reads no weight
    for load in loaders:
        with pytest.raises(BackboneError) as info:
            load(d)
        msg = one_line(info.value)
        assert want in msg, msg
        assert str(d) in msg, msg  # names the folder or the file in it
    assert not marker.exists()


def test_good_folders_pass_and_meta_build_matches(tmp_path):
    """The shipped exports pass; a folder of configs only (no weights) is enough for a meta build."""
    for name in ("wan_tiny_base", "wan_tiny_4step", "wan_tiny_rankup_4step"):
        assert vet_pipeline(ROOT / "pretrained" / name)["_class_name"] == "WanPipeline"
    configs = tmp_path / "configs_only"
    shutil.copytree(BASE, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(BackboneError, match="no .safetensors weights"):
        load_backbone(configs)
    meta = build_backbone({"pretrained": str(configs)}, components=("transformer", "vae"), device="meta")
    real = load_backbone(BASE)
    assert meta.transformer.device.type == "meta" and meta.text_len == real.text_len == 32
    assert sum(p.numel() for p in meta.transformer.parameters()) == sum(
        p.numel() for p in real.transformer.parameters()
    )
    assert meta.extra["num_inference_steps"] == real.extra["num_inference_steps"] == 25


def test_vae_folder_vetted(tmp_path):
    vae = tmp_path / "vae"
    shutil.copytree(ROOT / "pretrained" / "vae_tiny", vae)
    assert load_vae(vae).config.z_dim  # the good folder loads
    (vae / "loader.py").write_text(payload(tmp_path / MARKER))
    with pytest.raises(BackboneError, match=r"model.vae_pretrained: .*custom code"):
        load_vae(vae)
    assert not (tmp_path / MARKER).exists()


def test_wan2_json_round_trip_and_errors(tmp_path):
    meta = Wan2Json.from_dict({"text_len": 32, "guidance_scale": 2.5, "fps": 8})
    assert Wan2Json.from_dict(meta.to_dict()) == meta and meta.to_dict() == {
        "text_len": 32,
        "guidance_scale": 2.5,
        "fps": 8,
    }
    assert read_wan2_json(tmp_path).to_dict() == {}  # no wan2.json: an official release
    legacy = {**json.loads((BASE / "wan2.json").read_text()), "source": "/old/base"}  # older LoRA exports
    (tmp_path / "wan2.json").write_text(json.dumps(legacy))
    assert "source" not in read_wan2_json(tmp_path).to_dict()
    for bad, key in (({"height": 0}, "height"), ({"fps": float("nan")}, "fps"), ({"rows": True}, "rows")):
        with pytest.raises(BackboneError, match=rf"export: key '{key}'"):
            Wan2Json.from_dict(bad, where="export")


# ----------------------------------------------------------------------------------------------- CLIs

# Every case goes through every loader in-process above; the command lines get two in the default run (a
# subprocess costs about 9 s on 2 cores) and the rest under `make test-slow`.
CLI_CASES = [
    "os_system",
    pytest.param("custom_module", marks=pytest.mark.slow),
    pytest.param("py_in_component", marks=pytest.mark.slow),
    pytest.param("auto_map", marks=pytest.mark.slow),
    pytest.param("wan2_json_invalid", marks=pytest.mark.slow),
    "safetensors_huge_header",
]


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WAN2_ROOT": str(tmp_path / "runs"),
        "HYDRA_FULL_ERROR": "1",
    }
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def _assert_one_line(proc, want: str, marker: Path, tmp_path: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("error: ") and want in last, last
    assert not marker.exists()
    assert not list(tmp_path.rglob("*.ckpt")) and not list((tmp_path / "runs").rglob("export"))


@pytest.mark.parametrize("case", CLI_CASES)
def test_train_cli_refuses_in_one_line(tmp_path, case):
    d, marker = bad_folder(tmp_path, case)
    proc = _cli(["train.py", f"model.pretrained={d}", "trainer.max_steps=1"], tmp_path)
    _assert_one_line(proc, CASES[case][1], marker, tmp_path)


@pytest.mark.parametrize("case", ["builtins_eval", pytest.param("py_in_component", marks=pytest.mark.slow)])
def test_evaluate_cli_refuses_in_one_line(tmp_path, case):
    d, marker = bad_folder(tmp_path, case)
    proc = _cli(
        ["evaluate.py", f"ckpt={d}", "num_videos=1", "logger=none", f"out={tmp_path / 'eval'}"], tmp_path
    )
    _assert_one_line(proc, CASES[case][1], marker, tmp_path)
