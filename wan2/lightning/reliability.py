"""Runs that survive kills, preemption and bad numbers: the pieces ``wan2.tasks.train`` always installs.

- ``AtomicCheckpointIO``: checkpoints are written to a temporary sibling, fsynced and renamed; they load with
  ``weights_only=True`` only (a pickle of arbitrary objects is refused with a one-line error).
- ``StepSeed``: the global RNG is reseeded from (seed, step, rank) before every training batch, so noise,
  timesteps and caption dropout of step N do not depend on what ran before it (validation, dataloader
  iterators, a resume): a resumed run draws exactly what an uninterrupted one draws. Batches that carry a
  dataset ``index`` draw noise, timesteps and caption dropout per sample instead (``wan2.diffusion.rng``),
  which also makes them independent of the world size; the global RNG still covers everything else.
- ``NonFiniteGuard``: a step whose loss or gradient is not finite is skipped (no optimizer / EMA update),
  counted and logged; ``max_in_row`` of them in a row stop the run with ``NonFiniteError``.
- ``Preemption``: SIGTERM (Lightning's own handler) or SIGUSR1 (as SLURM sends before a time limit) ends the
  current batch, saves ``checkpoints/last.ckpt`` and raises ``Preempted``: the CLI exits with code 75 and
  ``ckpt_path=last`` continues the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wan2.compat import request_graceful_stop
from wan2.lightning.distributed import local_tensor

log = logging.getLogger("wan2")

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again (resume with ckpt_path=last)


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row: the run stops, the last checkpoint is the last good state."""


class Preempted(RuntimeError):
    """A preemption signal arrived; a checkpoint to resume from was saved."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint that is not a plain weights-only torch file (e.g. a pickle of arbitrary objects)."""


# ----------------------------------------------------------------------------- checkpoint files
def safe_torch_load(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """``torch.load(path, weights_only=True)`` with a one-line error naming the file when it is refused.

    ``mmap=True`` maps the tensors instead of reading them: a cheap check of a large checkpoint."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(
            f"{os.fspath(path)!r} is not a weights-only torch checkpoint (refused to unpickle it: {first[:160]})"
        ) from None


class AtomicCheckpointIO(CheckpointIO):
    """Write to ``.<name>.tmp-*`` in the same folder, fsync, ``os.replace``: a kill leaves the old file whole."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return safe_torch_load(path, map_location=map_location or "cpu")

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- randomness per step
def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, step, rank)."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class StepSeed(L.Callback):
    """Reseed torch's global RNG before each training batch from (seed, global_step, rank)."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.global_step, trainer.global_rank))


# ----------------------------------------------------------------------------- non-finite steps
class NonFiniteGuard(L.Callback):
    """Skip steps whose loss or gradients are NaN / inf; stop after ``max_in_row`` consecutive ones.

    Skipping sets every gradient to None before the optimizer step (AdamW then leaves weights and moments
    untouched) and raises ``pl_module.skip_ema_update`` so the EMA does not move either. Counts are logged as
    ``nonfinite/skipped``, ``nonfinite/loss`` and ``nonfinite/grad`` and kept in ``counts``.
    """

    def __init__(self, max_in_row: int = 20):
        if max_in_row < 1:
            raise ValueError(f"max_in_row: {max_in_row} must be >= 1")
        self.max_in_row = int(max_in_row)
        self.counts = {"skipped": 0, "loss": 0, "grad": 0}
        self.in_row = 0
        self._loss_bad = False
        self._last_loss = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._loss_bad = False
        pl_module.skip_ema_update = False

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._loss_bad = not bool(torch.isfinite(loss.detach()).all())
        self._last_loss = float(loss.detach().float().mean()) if self._loss_bad else None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_bad = False
        if not self._loss_bad and params:
            # this rank's shard of sharded (FSDP2) gradients: a local check, no collective on a branch that
            # a rank with a bad loss skips; the decision is shared below
            norm = torch.nn.utils.get_total_norm(
                [local_tensor(p.grad) for p in params], error_if_nonfinite=False
            )
            grad_bad = not bool(torch.isfinite(norm))
        # every rank skips when any rank must (FSDP: each sees only its shard of the gradients; DDP: a rank's
        # own loss): ranks that stepped apart would train different models
        if not trainer.strategy.reduce_boolean_decision(self._loss_bad or grad_bad, all=False):
            self.in_row = 0
            return
        for p in params:
            p.grad = None
        pl_module.skip_ema_update = True
        self.counts["skipped"] += 1
        self.counts["loss" if self._loss_bad else "grad"] += 1
        self.in_row += 1
        what = f"loss {self._last_loss}" if self._loss_bad else "gradient norm not finite"
        log.warning(
            "step %d skipped: %s (%d in a row, %d in all)",
            trainer.global_step,
            what,
            self.in_row,
            self.counts["skipped"],
        )
        if self.in_row >= self.max_in_row:
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            raise NonFiniteError(
                f"{self.in_row} non-finite steps in a row (last at step {trainer.global_step}: {what}); stopped. "
                f"The last good state is {last if last.exists() else 'not saved yet'}"
                " (raise reliability.max_nonfinite_in_row to tolerate longer streaks)"
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log_dict(
            {f"nonfinite/{k}": float(v) for k, v in self.counts.items()},
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "in_row": self.in_row}

    def load_state_dict(self, state: dict) -> None:
        self.counts = {**self.counts, **state.get("counts", {})}
        self.in_row = int(state.get("in_row", 0))


# ----------------------------------------------------------------------------- preemption
class Preemption(L.Callback):
    """SIGTERM / SIGUSR1 -> finish the batch, save ``last.ckpt``, raise ``Preempted`` (CLI exit code 75).

    Lightning already turns SIGTERM into ``SIGTERMException`` after the current batch (and broadcasts it to
    every rank); this callback makes SIGUSR1 do the same and saves the checkpoint when it happens. Before
    training starts, ``wan2.startup`` (installed on train.py's first line) stops the process at once; at
    ``on_train_start`` (after Lightning registered its own SIGTERM handler) its handlers hand over to this
    callback, together with a signal they received but did not act on: the run then stops after its first
    batch. Without train.py (a library call) this callback installs the handlers itself.
    """

    def __init__(self, dirpath: str | os.PathLike, signals: tuple[str, ...] = ("SIGUSR1",)):
        self.path = Path(dirpath) / "last.ckpt"
        self.signals = tuple(signals)
        self._installed_here = False
        self._active = False
        self.saved_step: int | None = None
        self._early: list[str] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Library use (no train.py): catch SIGUSR1 from here on, so that Lightning's SLURM handler (an
        ``hpc_ckpt`` and a requeue) stays off; a signal before training starts is kept for ``on_train_start``."""
        from wan2 import startup

        if stage == "fit" and not startup.installed():
            self._early = []
            startup.hand_over(self._early.append)
            startup.install_preemption_handlers([s for s in self.signals if s != "SIGTERM"])
            self._installed_here = self._active = True

    def on_train_start(self, trainer, pl_module) -> None:
        from wan2 import startup

        def request_stop(name: str) -> None:
            if name != "SIGTERM" and name not in self.signals:  # train.py catches SIGUSR1 from its first line
                log.warning("received %s: ignored (not in reliability.preemption_signals)", name)
                return
            log.info("received %s: stopping after this batch", name)
            request_graceful_stop(trainer)

        pending = startup.hand_over(request_stop) or next(iter(self._early), None)
        if not startup.installed():
            # SIGTERM stays Lightning's (it composes the handler found when it registers; none here)
            startup.install_preemption_handlers([s for s in self.signals if s != "SIGTERM"])
            self._installed_here = True
        self._active = True
        if pending is not None:
            request_stop(pending)

    def _release(self, trainer) -> None:
        from wan2 import startup

        if not self._active:
            return
        self._active = False
        if self._installed_here:
            startup.uninstall()
            self._installed_here = False
        else:
            out = self.path.parent.parent
            startup.take_back(
                f"after training stopped at step {trainer.global_step} ({{signal}}), before the run finished "
                "(export, metrics.json)",
                f"resume with ckpt_path=last paths.output_dir={out}",
            )

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._release(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)
            self.saved_step = trainer.global_step
            log.warning(
                "preempted at step %d: saved %s; resume with ckpt_path=last", trainer.global_step, self.path
            )
        self._release(trainer)  # teardown hooks do not run after an exception
