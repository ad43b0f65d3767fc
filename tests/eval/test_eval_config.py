"""evaluate.py refuses a bad config before torch is imported: one line naming the key (or file and line), exit 2.

The subprocess makes ``import torch`` fail loudly (and leave a marker file): a check that ran after the heavy
imports shows up as that failure, not as a slow answer, so no test here measures time.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

NO_TORCH = """
import runpy, sys
from pathlib import Path

MARKER = Path(sys.argv[1])


class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            MARKER.write_text(name)
            raise ImportError("TORCH IMPORTED before the config was checked")


sys.meta_path.insert(0, NoTorch())
sys.argv = ["evaluate.py", *sys.argv[2:]]
runpy.run_path("evaluate.py", run_name="__main__")
"""


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    marker = tmp_path / "torch_imported"
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(marker), f"out={tmp_path / 'out'}", "logger=none", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, marker


def _videos_dir(
    tmp_path: Path, manifest: str, name: str = "metadata.jsonl", raw: bytes | None = None
) -> Path:
    d = tmp_path / "videos"
    d.mkdir()
    (d / "00.mp4").write_bytes(b"never decoded: the manifest is refused first")
    (d / name).write_bytes(raw if raw is not None else manifest.encode())
    return d


GOOD = {"file": "00.mp4", "prompt": "the red row climbs from #4 to #2"}
META = {"event": "rank_up", "old_rank": 4, "new_rank": 2, "colour": "red"}
ROWS = {  # case -> (manifest text, what the one line must say)
    "not_json": ("{oops\n", "line 1: not JSON"),
    "not_an_object": ("[1, 2]\n", "line 1: expected a JSON object"),
    "no_file_key": (json.dumps({"prompt": "x"}) + "\n", "line 1: 'file' must name the video file"),
    "seed_string": (json.dumps(GOOD) + "\n" + json.dumps(GOOD | {"seed": "abc"}) + "\n", "line 2: seed"),
    "prompt_number": (json.dumps(GOOD | {"prompt": 5}) + "\n", "line 1: prompt"),
    "meta_string": (json.dumps(GOOD | {"meta": "x"}) + "\n", "line 1: meta 'x' is not an object"),
    "meta_event": (json.dumps(GOOD | {"meta": META | {"event": "jump"}}) + "\n", "meta.event 'jump'"),
    "meta_colour": (json.dumps(GOOD | {"meta": META | {"colour": "plaid"}}) + "\n", "meta.colour 'plaid'"),
    "meta_ranks": (json.dumps(GOOD | {"meta": META | {"old_rank": 2, "new_rank": 4}}) + "\n", "ranks (2, 4)"),
    "meta_rank_zero": (
        json.dumps(GOOD | {"meta": META | {"old_rank": 0}}) + "\n",
        "meta.old_rank: 0 is below 1",
    ),
    "meta_rank_huge": (
        json.dumps(GOOD | {"meta": META | {"old_rank": 10**7}}) + "\n",
        "meta.old_rank: 10000000 is above 1,000,000",
    ),
    "meta_missing": (json.dumps(GOOD | {"meta": {"event": "hold"}}) + "\n", "meta has no"),
    "deeply_nested": ("[" * 100_000 + "]" * 100_000 + "\n", "line 1: not JSON"),
}


@pytest.mark.parametrize(
    "args,key",
    [
        (["num_inference_steps=ten"], "num_inference_steps"),
        (["guidance_scale=-1"], "guidance_scale"),
        (["batch_size=0"], "batch_size"),
        (["num_videos=1.5"], "num_videos"),
        (["bootstrap.ci=2"], "bootstrap.ci"),
        (["dtype=fp8"], "dtype"),
        (["events=[rank_up,jump]"], "events"),
        (["num_inference_step=10"], "num_inference_step"),
        (["metrics.fvd.i3d=x"], "metrics.fvd.i3d"),
    ],
)
def test_bad_value_or_key_is_one_line_before_torch(tmp_path, args, key):
    proc, marker = _run(tmp_path, *args)
    assert not marker.exists(), f"torch was imported ({marker.read_text()}) before the check: {proc.stderr}"
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}:"), proc.stderr
    assert not (tmp_path / "out" / "report.json").exists()


def test_unknown_key_says_did_you_mean(tmp_path):
    proc, _ = _run(tmp_path, "num_inference_step=10")
    assert "did you mean num_inference_steps?" in proc.stderr


@pytest.mark.parametrize("case", sorted(ROWS))
def test_malformed_manifest_row_is_one_line_before_torch(tmp_path, case):
    text, says = ROWS[case]
    d = _videos_dir(tmp_path, text)
    proc, marker = _run(tmp_path, f"videos={d}")
    assert not marker.exists(), f"torch was imported before the manifest was checked: {proc.stderr}"
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: videos: ") and says in lines[0], proc.stderr
    assert str(d / "metadata.jsonl") in lines[0]  # names the file


def test_manifest_of_generate_py_and_non_utf8_bytes(tmp_path):
    d = _videos_dir(tmp_path, "", name="manifest.jsonl", raw=b'{"path": "00.mp4", "prompt": "\xff\xfe"}\n')
    proc, marker = _run(tmp_path, f"videos={d}")
    assert not marker.exists() and proc.returncode == 2
    assert proc.stderr.strip() == f"error: videos: {d / 'manifest.jsonl'} line 1: not UTF-8 text"


def test_checks_accept_the_shipped_config():
    """The composed configs/eval.yaml (and typical overrides) pass the cheap checks."""
    from hydra import compose, initialize_config_dir

    import wan2.config_resolvers  # noqa: F401
    from wan2.eval.config import check_eval_config

    overrides = ["num_inference_steps=4", "guidance_scale=1", "num_frames=17", "dtype=bf16", "lora_scale=0.5"]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        for args in ([], overrides):
            check_eval_config(compose("eval", overrides=args))


@pytest.mark.parametrize(
    "text,says",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"num_inference_steps": "ten"}', "'num_inference_steps': 'ten' must be an int >= 1"),
        ('{"guidance_scale": -1}', "'guidance_scale': -1 must be a number >= 0"),
        ('{"guidance": 2.5}', "'guidance' is not a wan2.json field"),
    ],
)
def test_invalid_wan2_json_of_an_export_is_one_line(tmp_path, capsys, text, says):
    from hydra import compose, initialize_config_dir

    import wan2.config_resolvers  # noqa: F401
    from wan2.eval.run import main

    export = tmp_path / "export"
    export.mkdir()
    (export / "model_index.json").write_text("{}")
    (export / "wan2.json").write_text(text)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt={export}", f"out={tmp_path / 'out'}", "logger=none"])
    assert main(cfg) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert (
        len(err) == 1
        and err[0].startswith(f"error: ckpt: wan2.json: {str(export / 'wan2.json')!r}")
        and says in err[0]
    ), err


def test_manifest_rows_with_ranks_beyond_the_board_are_accepted():
    """generate.py writes any rank (a board window, wan2.data.window): evaluate.py reads those rows."""
    from wan2.eval.config import _row_problem

    for meta in (
        META | {"old_rank": 7, "new_rank": 3},
        META | {"old_rank": 128, "new_rank": 97},
        {"event": "first_entry", "old_rank": None, "new_rank": 40, "colour": "red"},
        {"event": "hold", "old_rank": 12, "new_rank": 12, "colour": "red"},
    ):
        assert _row_problem(GOOD | {"meta": meta}) is None, meta
    assert "not a rank_up" in _row_problem(GOOD | {"meta": META | {"old_rank": 97, "new_rank": 128}})
