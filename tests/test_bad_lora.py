"""Bad LoRA files (issue 14.5): each is refused in one line naming the file and the key, through the API and
``scripts/generate.py --lora``; a non-finite adapter never loads and non-finite frames never become an mp4."""

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import ROOT
from wan2.inference import NonFiniteVideoError, Wan2T2V
from wan2.lora import LoraFileError

BASE = ROOT / "pretrained" / "wan_tiny_base"
SHIPPED = ROOT / "pretrained" / "lora_rankup"
KEY = "transformer.blocks.0.attn1.to_q"  # the module the single-key cases break
QUICK = {"num_frames": 5, "num_inference_steps": 1}


def _shipped():
    """The shipped LoRA's tensors and safetensors metadata (rank 4 on every attention projection)."""
    path = SHIPPED / "pytorch_lora_weights.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def _write(folder: Path, tensors: dict, meta: dict | None, sidecars: bool = True) -> Path:
    """A LoRA folder like the shipped one; ``sidecars`` copies adapter_config.json / wan2_lora.json."""
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "pytorch_lora_weights.safetensors"), metadata=meta)
    if sidecars:
        for name in ("adapter_config.json", "wan2_lora.json"):
            shutil.copy(SHIPPED / name, folder / name)
    return folder / "pytorch_lora_weights.safetensors"


def _meta_with(meta: dict, **changes) -> dict:
    d = json.loads(meta["lora_adapter_metadata"])
    d.update({f"transformer.{k}": v for k, v in changes.items()})
    return {**meta, "lora_adapter_metadata": json.dumps(d)}


def _edit(key_suffix: str, fn):
    """A builder that replaces one tensor of ``KEY`` by ``fn(tensor)`` (None deletes it)."""

    def build(d: Path) -> Path:
        t, meta = _shipped()
        k = f"{KEY}.{key_suffix}"
        new = fn(t[k])
        if new is None:
            del t[k]
        else:
            t[k] = new
        return _write(d, t, meta)

    return build


def _all(fn, meta_fn=None, sidecars=True):
    """A builder that maps every tensor (and optionally the metadata)."""

    def build(d: Path) -> Path:
        t, meta = _shipped()
        t = {k: fn(k, v) for k, v in t.items()}
        return _write(d, t, meta_fn(meta) if meta_fn else meta, sidecars)

    return build


def _raw(data: bytes):
    def build(d: Path) -> Path:
        d.mkdir()
        (d / "pytorch_lora_weights.safetensors").write_bytes(data)
        return d / "pytorch_lora_weights.safetensors"

    return build


def _truncated(d: Path) -> Path:
    d.mkdir()
    data = (SHIPPED / "pytorch_lora_weights.safetensors").read_bytes()
    (d / "pytorch_lora_weights.safetensors").write_bytes(data[: len(data) // 2])
    return d / "pytorch_lora_weights.safetensors"


def _sidecar(name: str, text: str):
    def build(d: Path) -> Path:
        t, meta = _shipped()
        f = _write(d, t, None)
        (d / name).write_text(text)
        return f

    return build


class Payload:
    """Unpickling this writes the marker file: a pickle must never be unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "payload ran"))


def _pickle(suffix: str):
    def build(d: Path) -> Path:
        d.mkdir()
        f = d / f"pytorch_lora_weights{suffix}"
        f.write_bytes(pickle.dumps(Payload(d.parent / "PAYLOAD_RAN")))
        return f

    return build


def _unknown_module(d: Path) -> Path:
    t, meta = _shipped()
    for ab in "AB":
        t[f"transformer.blocks.99.attn1.to_q.lora_{ab}.weight"] = t.pop(f"{KEY}.lora_{ab}.weight")
    return _write(d, t, meta)


def _keys_without_prefix(d: Path) -> Path:
    t, meta = _shipped()
    return _write(d, {k.removeprefix("transformer."): v for k, v in t.items()}, meta)


def _extra_base_weight(d: Path) -> Path:
    t, meta = _shipped()
    t[f"{KEY}.weight"] = torch.zeros(128, 128)
    return _write(d, t, meta)


def _missing(d: Path) -> Path:
    d.mkdir()
    return d / "pytorch_lora_weights.safetensors"


# case -> (builder, words the one line must hold besides the file name)
CASES = {
    "rank_A_vs_B": (_edit("lora_A.weight", lambda a: a[:3].contiguous()), [f"{KEY}.lora_B.weight", "rank"]),
    "rank_vs_safetensors_metadata": (
        _all(lambda k, v: (v[:2] if ".lora_A." in k else v[:, :2]).contiguous()),
        [".lora_A.weight", "lora_adapter_metadata says 4"],
    ),
    "one_d": (_edit("lora_A.weight", lambda a: a.flatten().contiguous()), [f"{KEY}.lora_A.weight", "2-D"]),
    "three_d": (_edit("lora_B.weight", lambda b: b[None].contiguous()), [f"{KEY}.lora_B.weight", "2-D"]),
    "int_dtype": (_edit("lora_A.weight", lambda a: a.to(torch.int32)), [f"{KEY}.lora_A.weight", "I32"]),
    "int8_dtype": (_edit("lora_B.weight", lambda b: b.to(torch.int8)), [f"{KEY}.lora_B.weight", "I8"]),
    "bool_dtype": (_edit("lora_A.weight", lambda a: a > 0), [f"{KEY}.lora_A.weight", "BOOL"]),
    "nan": (
        _edit("lora_B.weight", lambda b: b.index_put((torch.tensor([0]),), torch.tensor(float("nan")))),
        [f"{KEY}.lora_B.weight", "NaN"],
    ),
    "inf": (_edit("lora_A.weight", lambda a: a * float("inf")), [f"{KEY}.lora_A.weight", "Inf"]),
    "a_without_b": (_edit("lora_B.weight", lambda b: None), [f"{KEY}.lora_A.weight", "no lora_B"]),
    "b_without_a": (_edit("lora_A.weight", lambda a: None), [f"{KEY}.lora_B.weight", "no lora_A"]),
    "unknown_module": (_unknown_module, ["transformer.blocks.99.attn1.to_q.lora_A.weight", "does not have"]),
    "in_features": (
        _edit("lora_A.weight", lambda a: a[:, :64].contiguous()),
        [f"{KEY}.lora_A.weight", "in_features=128"],
    ),
    "out_features": (
        _edit("lora_B.weight", lambda b: b[:64].contiguous()),
        [f"{KEY}.lora_B.weight", "out_features=128"],
    ),
    "empty_file": (_raw(b""), ["0 bytes"]),
    "short_file": (_raw(b"\x01\x02\x03"), ["3 bytes"]),
    "absurd_header": (_raw((1 << 60).to_bytes(8, "little") + b"{}"), ["header claims"]),
    "garbage_header": (_raw((16).to_bytes(8, "little") + b"\xff" * 16 + b"\0" * 8), ["not a readable"]),
    "truncated": (_truncated, ["not a readable"]),
    "pickle_named_safetensors": (_pickle(".safetensors"), ["header claims"]),
    "pickle_bin": (_pickle(".bin"), ["not a .safetensors file"]),
    "metadata_not_json": (
        _all(lambda k, v: v, meta_fn=lambda m: {**m, "lora_adapter_metadata": "{not json"}),
        ["lora_adapter_metadata", "not valid JSON"],
    ),
    "metadata_nan_alpha": (
        _all(lambda k, v: v, meta_fn=lambda m: _meta_with(m, lora_alpha=float("nan"))),
        ["lora_adapter_metadata", "lora_alpha=nan"],
    ),
    "metadata_dora": (
        _all(lambda k, v: v, meta_fn=lambda m: _meta_with(m, use_dora=True)),
        ["lora_adapter_metadata", "use_dora"],
    ),
    "metadata_pissa_init": (
        _all(lambda k, v: v, meta_fn=lambda m: _meta_with(m, init_lora_weights="pissa")),
        ["lora_adapter_metadata", "init_lora_weights"],
    ),
    "metadata_unknown_option": (
        _all(lambda k, v: v, meta_fn=lambda m: _meta_with(m, not_an_option=1)),
        ["lora_adapter_metadata", "LoraConfig"],
    ),
    "adapter_config_rank": (
        _sidecar("adapter_config.json", json.dumps({"r": 8})),
        ["adapter_config.json says 8"],
    ),
    "adapter_config_invalid": (_sidecar("adapter_config.json", "[" * 100_000), ["adapter_config.json"]),
    "wan2_lora_invalid": (_sidecar("wan2_lora.json", "[" * 100_000), ["wan2_lora.json"]),
    "wan2_lora_rank": (_sidecar("wan2_lora.json", json.dumps({"rank": 16})), ["wan2_lora.json says 16"]),
    "keys_without_prefix": (_keys_without_prefix, ["not a LoRA"]),
    "extra_base_weight": (_extra_base_weight, [f"{KEY}.weight", "is not a transformer.<module>.lora_A"]),
    "missing_file": (_missing, ["does not exist"]),
}


BAD = CASES


@pytest.fixture(scope="module")
def model():
    return Wan2T2V.from_pretrained(BASE)


def test_the_shipped_lora_and_a_metadata_free_copy_load(model, tmp_path):
    """Control: the checks pass a good file (with and without safetensors metadata)."""
    m = Wan2T2V.from_pretrained(BASE, lora=SHIPPED)
    assert m.lora_names == ["lora_0"]
    f = _all(lambda k, v: v, meta_fn=lambda m: None)(tmp_path / "plain")  # no metadata: rank from the shapes
    m = Wan2T2V.from_pretrained(BASE, lora=f)
    assert m.lora_names == ["lora_0"]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_lora_is_one_line_naming_file_and_key(case, model, tmp_path):
    build, words = BAD[case]
    f = build(tmp_path / case)
    with pytest.raises(LoraFileError) as err:
        model.load_loras([f])
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert model.lora_names == []  # nothing half-loaded
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_non_finite_lora_scale_is_refused(tmp_path):
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="^lora_scales: .* is not a finite number"):
            Wan2T2V.from_pretrained(BASE, lora=SHIPPED, lora_scales=scale)


def _huge(d: Path) -> Path:
    """Finite weights of 1e30: passes every file check, but the activations overflow to Inf / NaN."""
    return _all(lambda k, v: torch.full_like(v, 1e30))(d)


def test_non_finite_frames_are_an_error_not_a_black_video(model, tmp_path):
    m = Wan2T2V.from_pretrained(BASE, lora=_huge(tmp_path / "huge"))
    with pytest.raises(NonFiniteVideoError, match="^frames: video 0 of 2 .* NaN / Inf") as err:
        m.generate(["the green row climbs from #3 to #2", "the red row drops from #1 to #4"], **QUICK)
    assert err.value.bad == [0, 1] and err.value.videos == [None, None]
    assert "\n" not in str(err.value)


def _load_script():
    spec = importlib.util.spec_from_file_location("generate_script", ROOT / "scripts" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("case", sorted(BAD))
def test_generate_cli_refuses_bad_lora_in_one_line_exit_2(case, tmp_path, capsys):
    build, words = BAD[case]
    f = build(tmp_path / case)
    out = tmp_path / "videos"
    rc = _load_script().main(
        ["--model", str(BASE), "--prompt", "a new gold row enters", "--out", str(out), "--lora", str(f)]
    )
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: lora:") and str(f) in err[0], err
    assert not list(out.glob("*.mp4")) and not (out / "manifest.jsonl").exists()
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_generate_subprocess_nan_lora_exit_2_and_diverging_lora_no_black_mp4(tmp_path):
    nan = BAD["nan"][0](tmp_path / "nan")
    out = tmp_path / "videos"
    common = ["--model", str(BASE), "--out", str(out), "--steps", "1", "--profile", "fast"]
    proc = _run([*common, "--prompt", "a new gold row enters", "--lora", str(nan)], tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(nan) in lines[0] and f"{KEY}.lora_B.weight" in lines[0] and "NaN" in lines[0]
    huge = _huge(tmp_path / "huge")
    proc = _run([*common, "--prompt", "a new gold row enters", "--lora", str(huge)], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "line 1: failed: frames: NaN / Inf" in proc.stderr
    assert not list(out.glob("*.mp4")) and not (out / "manifest.jsonl").exists()
