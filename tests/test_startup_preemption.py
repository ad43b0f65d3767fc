"""Preemption during start-up (issue 14, item 2): SIGTERM / SIGUSR1 before the first training step exit 75 with
one line, leave no half-built latent cache and no checkpoint, and the same command then runs to the end.

The subprocess checks poll for a marker of each start-up moment (the handlers in /proc/PID/status, Hydra's run
folder, the latent-cache progress line, the cache's temp folder) instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT
from wan2 import startup

STARTUP_LINE = "stopped: preempted during start-up"


def tiny_args(out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=pretrain_tiny",
        f"paths.output_dir={out}",
        f"data.cache_dir={cache}",
        "data.num_train=32",
        "data.batch_size=4",
        "trainer.max_steps=2",
        "trainer.max_time=null",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "data.num_val=2",
        "data.val_batch_size=2",
        "objective.sample.num_inference_steps=2",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.progress=null",
        "logger=csv",
        "export.enabled=false",
        "threads=1",
        "ckpt_path=last",
        *extra,
    ]


def env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def handlers_installed(pid: int) -> bool:
    """SIGTERM and SIGUSR1 are caught (bits of SigCgt in /proc/PID/status)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("SigCgt:")), 16)
    return all(caught >> (s - 1) & 1 for s in (signal.SIGTERM, signal.SIGUSR1))


def run_and_signal(args: list[str], ready, sig: int, timeout: float = 300) -> tuple[int, str, bool]:
    """Start ``args``; once ``ready(pid, stderr_so_far)`` is true send ``sig``; return (exit code, stderr,
    whether the signal was sent)."""
    proc = subprocess.Popen(
        args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, bufsize=0
    )
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(4096), b"")))
    reader.start()
    sent = False
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            if ready(proc.pid, b"".join(chunks).decode(errors="replace")):
                proc.send_signal(sig)
                sent = True
                break
            time.sleep(0.02)
        proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join()
    return proc.returncode, b"".join(chunks).decode(errors="replace"), sent


def temp_leftovers(*dirs: Path) -> list[Path]:
    return [p for d in dirs if d.exists() for p in d.rglob("*") if ".tmp-" in p.name]


def cache_is_whole_or_absent(cache: Path) -> bool:
    """Every cache folder holds its index and latents (none half-built)."""
    for d in cache.glob("rankjump-train-*") if cache.exists() else []:
        index = json.loads((d / "index.json").read_text())
        from safetensors.torch import load_file

        if load_file(str(d / "latents.safetensors"))["latents"].shape[0] != len(index["keys"]):
            return False
    return True


def moments(hydra_dir: Path) -> dict[str, list]:
    """Moments of start-up and the signal sent there; the default run takes three, ``make test-slow`` the rest."""
    installed = ("handlers just installed", lambda pid, err: handlers_installed(pid))
    hydra = ("Hydra's run folder written", lambda pid, err: hydra_dir.is_file())
    encoding = ("encoding the latent cache", lambda pid, err: "encoding latents" in err)
    return {
        "default": [(*installed, signal.SIGTERM), (*hydra, signal.SIGUSR1), (*encoding, signal.SIGTERM)],
        "slow": [(*installed, signal.SIGUSR1), (*encoding, signal.SIGUSR1)],
    }


@pytest.mark.parametrize("which", ["default", pytest.param("slow", marks=pytest.mark.slow)])
def test_signals_before_the_first_step_exit_75_and_leave_nothing_half_written(tmp_path, which):
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = tiny_args(out, cache)
    hydra_dir = out / ".hydra" / "config.yaml"
    for what, ready, sig in moments(hydra_dir)[which]:
        hydra_dir.unlink(missing_ok=True)
        code, err, sent = run_and_signal(args, ready, sig)
        assert sent, f"{what}: the run ended before the marker (exit {code}): {err[-2000:]}"
        assert code == 75, f"{what} / {sig.name}: exit {code}: {err[-3000:]}"
        lines = [ln for ln in err.splitlines() if ln.startswith("stopped:")]
        assert len(lines) == 1 and lines[0].startswith(STARTUP_LINE), (what, err[-2000:])
        assert sig.name in lines[0] and "resume with the same command" in lines[0]
        assert "Traceback" not in err, err[-3000:]
        assert not temp_leftovers(cache, out), temp_leftovers(cache, out)
        assert cache_is_whole_or_absent(cache)
        assert not (out / "checkpoints" / "last.ckpt").exists()  # nothing ran, nothing saved
    assert not list(cache.glob("rankjump-train-*")), "a cache survived a signal while it was being encoded"

    r = subprocess.run(args, env=env(), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "metrics.json").is_file()
    assert len(list(cache.glob("rankjump-train-*"))) == 1 and not temp_leftovers(cache, out)


# ----------------------------------------------------------------------------- in-process: the pieces
@pytest.fixture
def handlers():
    startup.uninstall()
    startup.install_preemption_handlers()
    yield
    startup.uninstall()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_during_start_up_raises_exit_75(handlers, sig):
    with pytest.raises(startup.StartupPreempted) as caught:
        os.kill(os.getpid(), sig)
        for _ in range(1000):  # the handler runs between bytecodes
            time.sleep(0.001)
    assert caught.value.code == 75 and sig.name in str(caught.value)
    os.kill(os.getpid(), sig)  # a second signal while cleaning up is only recorded
    time.sleep(0.01)


def test_hand_over_to_the_preemption_callback_loses_no_signal(handlers, tmp_path):
    """A signal recorded before the hand-over (here: one that could not raise) stops the run after its first
    batch; after the hand-over signals only request the stop; after fit they stop the process again."""
    from wan2.lightning.reliability import Preemption

    with pytest.raises(startup.StartupPreempted):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.5)
    # as if an `except BaseException: pass` had swallowed it: the flag is still there
    trainer = SimpleNamespace(_signal_connector=SimpleNamespace(received_sigterm=False), global_step=0)
    callback = Preemption(tmp_path / "checkpoints")
    callback.on_train_start(trainer, None)
    assert trainer._signal_connector.received_sigterm  # stops at the first batch boundary

    trainer._signal_connector.received_sigterm = False
    os.kill(os.getpid(), signal.SIGTERM)  # during fit: no exception, a stop request
    time.sleep(0.05)
    assert trainer._signal_connector.received_sigterm

    callback.teardown(trainer, None, "fit")
    startup._state.raised = False
    with pytest.raises(startup.StartupPreempted) as caught:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.5)
    assert "ckpt_path=last" in str(caught.value)


def test_preemption_installs_its_own_handler_without_train_py(tmp_path):
    """A library caller (no train.py): the callback installs SIGUSR1 itself and restores it afterwards."""
    from wan2.lightning.reliability import Preemption

    startup.uninstall()
    before = signal.getsignal(signal.SIGUSR1)
    trainer = SimpleNamespace(_signal_connector=SimpleNamespace(received_sigterm=False), global_step=3)
    callback = Preemption(tmp_path / "checkpoints")
    callback.on_train_start(trainer, None)
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.05)
    assert trainer._signal_connector.received_sigterm
    callback.on_exception(trainer, None, RuntimeError("x"))
    assert signal.getsignal(signal.SIGUSR1) is before and not startup.installed()


class _TinyBackbone:
    def __init__(self):
        torch.manual_seed(0)
        self.vae = torch.nn.Linear(2, 2)
        self.text_encoder = None
        self.text_len = 4

    def encode_video(self, video):  # (B, 3, F, H, W) -> (B, 3, F, H/2, W/2)
        return video[..., ::2, ::2]


def test_cache_write_interrupted_by_a_signal_leaves_no_temp(handlers, tmp_path, monkeypatch):
    """A signal while the cache files are being written: the temp folder is removed, no cache appears; the
    next build succeeds."""
    import wan2.data.cache as cache_mod

    data = [{"video": torch.rand(3, 2, 4, 4), "caption": f"c{i}", "meta": {"i": i}} for i in range(3)]
    real_save = cache_mod.save_file

    def save_then_signal(tensors, path):
        real_save(tensors, path)
        with open(path, "r+b") as f:  # as if half of it were written
            f.truncate(8)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)

    monkeypatch.setattr(cache_mod, "save_file", save_then_signal)
    target = tmp_path / "cache" / "c1"
    with pytest.raises(startup.StartupPreempted):
        cache_mod.build_latent_cache(_TinyBackbone(), data, target, batch_size=2)
    assert not target.exists() and not temp_leftovers(tmp_path)

    monkeypatch.setattr(cache_mod, "save_file", real_save)
    cache_mod.build_latent_cache(_TinyBackbone(), data, target, batch_size=2)
    assert len(cache_mod.LatentCacheDataset(target, _TinyBackbone())) == 3 and not temp_leftovers(tmp_path)


def test_unwritable_cache_dir_is_one_line_before_encoding(tmp_path):
    from wan2.config_check import ConfigError
    from wan2.data.cache import build_latent_cache

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="data.cache_dir: cannot write"):
        build_latent_cache(_TinyBackbone(), [], blocker / "cache" / "c1")


def test_a_signal_after_the_run_finished_does_not_kill_it():
    """Once train.py's work is done (``startup.finished``), SIGUSR1 / SIGTERM are ignored: the process exits with
    its own code. Before that call the same signal stops it with exit 75."""
    code = (
        "import os, signal, sys, time\n"
        "from wan2 import startup\n"
        "startup.install_preemption_handlers()\n"
        "if sys.argv[1] == 'finished':\n"
        "    startup.finished()\n"
        "for sig in (signal.SIGUSR1, signal.SIGTERM):\n"
        "    os.kill(os.getpid(), sig)\n"
        "    time.sleep(0.05)\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "finished"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    running = subprocess.run(
        [sys.executable, "-c", code, "running"], cwd=ROOT, capture_output=True, text=True
    )
    assert running.returncode == startup.PREEMPTED_EXIT_CODE, running.stderr
