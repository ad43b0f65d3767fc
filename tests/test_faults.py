"""Reliability (issue 8): kills, preemption, NaNs, bad data, bad configs and untrusted files never lose work.

Each check drives ``train.py`` in a subprocess on a tiny pretraining run (16 steps, batch 4, 8 batches per
epoch, validation every 5 steps, a checkpoint every step) and compares checkpoints tensor for tensor.
Bad data: tests/data/test_bad_data_run.py; bad configs: tests/test_bad_configs.py.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, train_cmd, train_env
from tests.test_resume_logs import LOGGING, STALE_SERVICE, assert_logs_continue
from wan2.lightning.loggers import RUN_ID_FILE
from wan2.lightning.reliability import (
    AtomicCheckpointIO,
    UnsafeCheckpointError,
    safe_torch_load,
)

STEPS = 16
HOLD = ["+callbacks.faults._target_=wan2.testing.FaultInjector"]  # + hold_steps (waits up to 120 s)


def tiny_run_args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    return train_cmd(
        "experiment=pretrain_tiny",
        f"paths.output_dir={out}",
        f"paths.data_dir={data_dir}",
        "data.num_train=32",
        "data.batch_size=4",
        f"trainer.max_steps={STEPS}",
        "trainer.max_time=null",
        "trainer.val_check_interval=5",
        "trainer.limit_val_batches=1",
        "data.num_val=2",
        "data.val_batch_size=2",
        "objective.sample.num_inference_steps=2",
        "objective.warmup_steps=4",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.progress=null",
        "logger=csv",
        "export.enabled=false",
        "threads=1",
        "trainer.deterministic=true",
        *extra,
    )


def run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=train_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def ckpt_step(path: Path) -> int:
    try:
        return int(safe_torch_load(path)["global_step"])
    except (FileNotFoundError, UnsafeCheckpointError):
        return -1


def interrupt_at(
    args: list[str], last: Path, step: int, sig: int, timeout: float = 240, env: dict | None = None
) -> tuple[int, str]:
    """Start a run, wait until ``last`` holds a step >= ``step`` written by this run, send ``sig``; return (exit
    code, stderr). "Written by this run": a resumed run can start from a checkpoint already past ``step``, and a
    signal sent before it has installed its handlers would kill it instead of testing them."""
    before = ckpt_step(last)
    proc = (
        subprocess.Popen(  # own session: a SIGKILL takes the run's child processes too (data workers, ranks)
            args,
            env=train_env() if env is None else env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
    )
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            reached = ckpt_step(last)
            if reached >= step and reached > before:
                if sig == signal.SIGKILL:  # a lost node: every process of the job dies at once
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def assert_same_state(a: dict, b: dict) -> None:
    """Weights, optimizer moments, LR schedule, EMA and step count are bitwise equal."""
    assert a["global_step"] == b["global_step"] == STEPS
    for key in ("state_dict", "ema", "optimizer_states", "lr_schedulers"):
        ta, tb = _flat(a[key]), _flat(b[key])
        assert ta.keys() == tb.keys(), key
        for k in ta:
            same = torch.equal(ta[k], tb[k]) if torch.is_tensor(ta[k]) else ta[k] == tb[k]
            assert same, f"{key}: {k} differs"


def _flat(tree, prefix="") -> dict:
    """Nested dicts / lists -> {"a/0/b": leaf}."""
    if isinstance(tree, dict):
        return {k2: v2 for k, v in tree.items() for k2, v2 in _flat(v, f"{prefix}{k}/").items()}
    if isinstance(tree, (list, tuple)):
        return {k2: v2 for i, v in enumerate(tree) for k2, v2 in _flat(v, f"{prefix}{i}/").items()}
    return {prefix: tree}


def _finite(state_dict: dict) -> bool:
    return all(
        torch.isfinite(t).all() for t in state_dict.values() if torch.is_tensor(t) and t.is_floating_point()
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its final checkpoint (and its log) is what every interrupted run must reproduce."""
    root = tmp_path_factory.mktemp("faults")
    data = root / "data"
    r = run(tiny_run_args(root / "ref", data, *LOGGING))
    assert r.returncode == 0, r.stderr[-3000:]
    return root, data, safe_torch_load(root / "ref" / "checkpoints" / "last.ckpt")


# ----------------------------------------------------------------------------- 1 + 3: kills and preemption
def test_killed_and_preempted_run_resumes_bitwise_equal(reference):
    """SIGKILL twice at random steps, then SIGTERM and SIGUSR1 (as SLURM sends), each followed by
    ``ckpt_path=last``: the final weights, optimizer, LR schedule and EMA equal the uninterrupted run, and so do
    its CSV log rows and its one W&B run (tests/test_resume_logs.py). Every attempt inherits a stale W&B service
    token from its parent, which train.py must drop."""
    root, data, ref = reference
    out = root / "interrupted"
    last = out / "checkpoints" / "last.ckpt"
    args = tiny_run_args(out, data, *LOGGING, "ckpt_path=last")
    env = train_env(**STALE_SERVICE)
    rng = random.Random(int(os.environ.get("WAN2_FAULT_SEED", "0")) or None)
    plan = [
        (rng.randint(1, 4), signal.SIGKILL),
        (rng.randint(5, 8), signal.SIGKILL),
        (rng.randint(9, 11), signal.SIGTERM),
        (rng.randint(12, 14), signal.SIGUSR1),
    ]
    survived, killed_at, first_id = [], [], None
    for step, sig in plan:
        before = ckpt_step(last)
        # the run waits after that step's checkpoint until the signal came: it cannot finish first (a slow poll
        # under load once saw the checkpoint of step 14 while the run was already exiting after step 16)
        step = max(step, before + 1)
        hold = [*HOLD, f"+callbacks.faults.hold_steps=[{step}]"]
        code, err = interrupt_at([*args, *hold], last, step, sig, env=env)
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL, f"run was not killed at step {step} (exit {code}): {err[-2000:]}"
        else:  # preemption: a clean exit 75 with a one-line message, the checkpoint is on disk
            assert code == 75, f"{sig.name}: exit {code}: {err[-2000:]}"
            assert "stopped: preempted at step" in err and "Traceback" not in err
        reached = ckpt_step(last)
        assert reached > before and reached >= step
        survived.append((sig.name, reached))
        if sig == signal.SIGKILL:
            killed_at.append(reached)
        first_id = first_id or (out / RUN_ID_FILE).read_text().strip()
        assert (out / RUN_ID_FILE).read_text().strip() == first_id
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_state(safe_torch_load(last), ref)
    assert_logs_continue(out, root / "ref", killed_at, first_id, attempts=len(plan) + 1)
    print("interruptions survived (signal, checkpoint step):", survived)


# ----------------------------------------------------------------------------- 4: non-finite steps
def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(reference, tmp_path):
    root, data, ref = reference
    inject = ["+callbacks.faults._target_=wan2.testing.FaultInjector"]
    # a NaN loss at steps 3 and 7 and an inf gradient at step 11: skipped, counted, the run finishes
    out = tmp_path / "skips"
    r = run(
        tiny_run_args(
            out,
            data,
            *inject,
            "+callbacks.faults.nan_input_steps=[3,7]",
            "+callbacks.faults.nan_grad_steps=[11]",
        )
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ck = safe_torch_load(out / "checkpoints" / "last.ckpt")
    assert ck["global_step"] == STEPS
    assert _finite(ck["state_dict"])
    guard = next(v for k, v in ck["callbacks"].items() if "NonFiniteGuard" in k)
    assert guard["counts"] == {"skipped": 3, "loss": 2, "grad": 1}
    metrics = (out / "csv").rglob("metrics.csv")
    logged = "".join(p.read_text() for p in metrics)
    assert "nonfinite/skipped" in logged
    # a skipped step changes nothing: weights differ from the reference only because 3 updates are missing
    assert not torch.equal(
        ck["state_dict"]["transformer.proj_out.weight"], ref["state_dict"]["transformer.proj_out.weight"]
    )

    # 4 NaN steps in a row with max 3: the run stops with one line; the last good checkpoint stays loadable
    out = tmp_path / "stops"
    r = run(
        tiny_run_args(
            out,
            data,
            *inject,
            "+callbacks.faults.nan_input_steps=[6,7,8,9]",
            "reliability.max_nonfinite_in_row=3",
        )
    )
    assert r.returncode == 1
    err_lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and "3 non-finite steps in a row" in err_lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    good = safe_torch_load(out / "checkpoints" / "last.ckpt")
    assert good["global_step"] == 8  # steps 6 and 7 were skipped (weights unchanged) and saved; 8 raised
    assert _finite(good["state_dict"])


# ----------------------------------------------------------------------------- 2: atomic writes
WRITER = r"""
import sys, torch
from wan2.lightning.reliability import AtomicCheckpointIO
from wan2.export import atomic_dir
from safetensors.torch import save_file
kind, path = sys.argv[1], sys.argv[2]
i = 0
while True:
    i += 1
    state = {"version": i, "w": torch.full((4_000_000,), float(i))}  # 16 MB per write
    if kind == "ckpt":
        AtomicCheckpointIO().save_checkpoint(state, path)
    else:
        atomic_dir(path, lambda d: (save_file({"w": state["w"]}, str(d / "model.safetensors")),
                                    (d / "version.txt").write_text(str(i))))
    print(i, flush=True)
"""


@pytest.mark.parametrize("kind", ["ckpt", "export"])
def test_kill_during_write_leaves_the_previous_file_whole(tmp_path, kind):
    """SIGKILL a writer at random moments (most of them mid-write): the file under the final name always loads
    and is one complete version. Three kills per kind (each a fresh Python with torch, ~7 s on 2 cores)."""
    from safetensors.torch import load_file

    target = tmp_path / ("last.ckpt" if kind == "ckpt" else "export")
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, kind, str(target)],
            env=train_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        proc.stdout.readline()  # one complete version exists
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        if kind == "ckpt":
            state = safe_torch_load(target)
            assert torch.equal(state["w"], torch.full((4_000_000,), float(state["version"])))
        else:
            version = int((target / "version.txt").read_text())
            w = load_file(str(target / "model.safetensors"))["w"]
            assert torch.equal(w, torch.full((4_000_000,), float(version)))


# ----------------------------------------------------------------------------- 7: untrusted files
class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_objects_are_refused_where_weights_are_expected(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, evil)
    with pytest.raises(UnsafeCheckpointError, match="not a weights-only torch checkpoint"):
        safe_torch_load(evil)
    with pytest.raises(UnsafeCheckpointError):
        AtomicCheckpointIO().load_checkpoint(evil)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(raw)

    # through the CLI: one line, exit 2, before any model is built
    r = run(
        train_cmd("experiment=pretrain_tiny", f"ckpt_path={evil}", f"paths.output_dir={tmp_path / 'run'}"),
        timeout=120,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "not a weights-only" in lines[0], r.stderr[
        -2000:
    ]


def test_pipeline_with_pickled_weights_is_refused(tmp_path):
    """A diffusers folder whose transformer holds a .bin pickle instead of safetensors is not loaded."""
    import shutil

    from wan2.backbones.stack import BackboneError, load_backbone

    export = tmp_path / "export"
    shutil.copytree(ROOT / "pretrained" / "wan_tiny_base", export)
    weights = next((export / "transformer").glob("*.safetensors"))
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), export / "transformer" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(
        BackboneError, match=r"model.pretrained \(transformer\).*pickled weights.*safetensors only"
    ):
        load_backbone(export)
