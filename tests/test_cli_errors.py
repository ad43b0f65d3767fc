"""``train.py`` with a bad config: exit 2 fast with one line naming the key, no traceback, no run started."""

import os
import resource

import pytest

from tests.conftest import run_train

CASES = {
    "unknown_experiment": (["experiment=nope"], "experiment"),
    "unknown_model": (["model=nope"], "model"),
    "frames_not_4k_plus_1": (["data.rankjump.num_frames=16"], "num_frames"),
    "height_not_multiple": (["data.rankjump.height=30"], "height"),
    "missing_pretrained": (["model.pretrained=/nonexistent"], "model.pretrained"),
}


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@pytest.mark.parametrize("args,key", list(CASES.values()), ids=list(CASES))
def test_bad_config_exits_with_one_line(tmp_path, args, key):
    env = {**os.environ, "WANDB_MODE": "offline", "WAN2_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "1"}
    cpu = child_cpu()
    proc = run_train(args, env=env)
    cpu = child_cpu() - cpu
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    last = lines[-1]
    assert last.startswith("error: ") and last.split(": ")[1].endswith(key), last
    assert "Traceback" not in proc.stderr
    if key in ("experiment", "model"):
        assert "'nope' is not one of [" in last
        assert ("'pretrain_tiny'" if key == "experiment" else "'wan_tiny'") in last  # lists the choices
    # fast: no torch / model import (CPU seconds of the child, since wall time depends on the machine's load)
    assert cpu < 5.0, f"{cpu:.1f} CPU s"
    assert not list(tmp_path.rglob("checkpoints")) and not list(tmp_path.rglob("*.ckpt"))
    assert not list(tmp_path.rglob("export"))
