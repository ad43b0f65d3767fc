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
import io
import logging
import math
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
    """A checkpoint file wan2 will not load: a pickle of arbitrary objects (refused, never run) or, as
    ``CorruptCheckpointError``, a truncated or damaged file."""


class CorruptCheckpointError(UnsafeCheckpointError):
    """A checkpoint that is truncated (e.g. a killed copy) or damaged: not a complete torch checkpoint."""


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format (the only one Lightning writes)


# ----------------------------------------------------------------------------- checkpoint files
def safe_torch_load(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """``torch.load(path, weights_only=True)`` with a one-line error naming the file when it cannot be used.

    A pickle that names anything but tensors and plain containers is refused (``UnsafeCheckpointError``); a
    truncated or damaged file is reported as such (``CorruptCheckpointError``), not as a refusal. ``mmap=True``
    maps the tensors instead of reading them: a cheap check of a large checkpoint."""
    name = repr(os.fspath(path))
    try:
        with open(path, "rb") as f:  # FileNotFoundError / IsADirectoryError: the caller's to word
            head = f.read(len(ZIP_MAGIC))
    except PermissionError as err:
        raise UnsafeCheckpointError(f"{name} cannot be read ({err.strerror})") from None
    if not head:
        raise CorruptCheckpointError(f"{name} is empty (a truncated write?): not a checkpoint")
    archive = head == ZIP_MAGIC
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and archive)
    except pickle.UnpicklingError as err:
        why = _first_line(err, skip="Weights only load failed")
        if archive:  # a complete archive whose pickle names other objects
            raise UnsafeCheckpointError(
                f"{name} is not a weights-only torch checkpoint (refused to unpickle it: {why})"
            ) from None
        if head[:1] == b"\x80":  # pickle's PROTO opcode: a raw pickle (or torch's legacy format)
            raise UnsafeCheckpointError(
                f"{name} is a raw pickle, not a torch checkpoint archive (refused to unpickle it: {why})"
            ) from None
        raise CorruptCheckpointError(
            f"{name} is truncated or corrupt (not a torch checkpoint: {why})"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError, TypeError) as err:
        raise CorruptCheckpointError(
            f"{name} is truncated or corrupt (not a complete torch checkpoint: {_first_line(err)})"
        ) from None


def _first_line(err: BaseException, skip: str = "") -> str:
    """The first informative line of an error message (torch's run over several paragraphs)."""
    lines = [
        ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.strip().startswith(skip or "\0")
    ]
    lines = [ln.removeprefix("WeightsUnpickler error:").strip() for ln in lines]
    return next((ln for ln in lines if ln), type(err).__name__)[:160]


# ----------------------------------------------------------------------------- sharded (DCP) checkpoints
# A sharded checkpoint folder (FSDP2Strategy, torch.distributed.checkpoint) holds meta.pt (torch.save, loaded
# weights-only), one .distcp file per rank and .metadata, which torch reads with plain pickle.load. wan2 reads
# .metadata with the unpickler below (the pre-check in wan2.tasks and the load itself,
# wan2.lightning.distributed.SafeFileSystemReader), so a crafted one cannot run code.
DCP_METADATA = ".metadata"
# Every global a real .metadata needs (tests/test_untrusted_files.py unpickles one written by an FSDP2 run), plus
# torch dtypes; each is a dataclass, an enum or a value, none can run code. A dotted name is never looked up.
DCP_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a torch.layout from its name, e.g. "torch.strided"
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},  # StorageMeta.checkpoint_id
    "collections": {"OrderedDict"},
}


class _Refused(pickle.UnpicklingError):
    """A global outside ``DCP_GLOBALS``."""


class _MetadataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only ``DCP_GLOBALS`` and torch dtypes."""

    def find_class(self, module: str, name: str):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if not (dtype or name in DCP_GLOBALS.get(module, ())):
            raise _Refused(f"{module}.{name} is not a checkpoint-metadata class")
        return super().find_class(module, name)


def read_dcp_metadata(path: str | os.PathLike):
    """The ``Metadata`` of a sharded checkpoint, read with only checkpoint-metadata classes allowed; checks
    that every shard it names is a file inside the checkpoint folder."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = Path(path)
    try:
        with open(path, "rb") as f:
            meta = _MetadataUnpickler(f).load()
    except _Refused as err:
        raise UnsafeCheckpointError(f"{str(path)!r}: refused to unpickle it ({err})") from None
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{str(path)!r} is missing: not a complete sharded checkpoint") from None
    except Exception as err:  # noqa: BLE001  (any way a damaged pickle fails)
        raise CorruptCheckpointError(
            f"{str(path)!r} is truncated or corrupt (not checkpoint metadata: {_first_line(err)})"
        ) from None
    if not (
        isinstance(meta, Metadata)
        and isinstance(meta.state_dict_metadata, dict)
        and isinstance(getattr(meta, "storage_data", None), dict)
    ):
        raise CorruptCheckpointError(f"{str(path)!r} is not checkpoint metadata (a {type(meta).__name__})")
    for info in meta.storage_data.values():
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or rel in ("", ".", "..") or Path(rel).name != rel:
            raise UnsafeCheckpointError(f"{str(path)!r} names a shard outside its folder: {rel!r}")
        if not (path.parent / rel).is_file():
            raise CorruptCheckpointError(f"{str(path)!r} names shard {rel!r}, which is missing")
    return meta


def load_dcp_bytes(data: io.BytesIO, where: str):
    """A non-tensor entry of a sharded checkpoint (e.g. an optimizer's ``lr``), unpickled weights-only
    (torch's own loader uses ``weights_only=False`` there)."""
    try:
        return torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{where}: refused to unpickle it ({_first_line(err, skip='Weights only load failed')})"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError, TypeError) as err:
        raise CorruptCheckpointError(f"{where} is truncated or corrupt ({_first_line(err)})") from None


def check_sharded_checkpoint(folder: str | os.PathLike) -> None:
    """Vet a sharded checkpoint folder before anything is built: ``meta.pt`` weights-only, ``.metadata`` through
    the restricted unpickler, every non-tensor entry weights-only. Raises ``UnsafeCheckpointError``."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    folder = Path(folder)
    safe_torch_load(folder / "meta.pt", mmap=True)
    meta = read_dcp_metadata(folder / DCP_METADATA)
    for index, info in meta.storage_data.items():
        if not isinstance(meta.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue  # tensors: torch reads them weights-only itself
        if info.transform_descriptors:  # compressed entries: SafeLoadPlanner vets them while loading
            continue
        with open(folder / info.relative_path, "rb") as f:
            f.seek(info.offset)
            data = f.read(info.length)
        if len(data) != info.length:
            raise CorruptCheckpointError(f"{str(folder / info.relative_path)!r} is truncated")
        load_dcp_bytes(io.BytesIO(data), f"{str(folder / info.relative_path)!r} ({index.fqn})")


class AtomicCheckpointIO(CheckpointIO):
    """Write to ``.<name>.tmp-*`` in the same folder, fsync, ``os.replace``: a kill leaves the old file whole.

    A folder deleted while a checkpoint is written (e.g. ``rm -r checkpoints/``) is made again and the
    checkpoint written again: the run goes on."""

    attempts = 3

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        for attempt in range(1, self.attempts + 1):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._write(checkpoint, path)
                return
            except FileNotFoundError:  # the folder vanished between mkdir and os.replace
                if attempt == self.attempts:
                    raise
                log.warning("%s vanished while %s was written: writing it again", path.parent, path.name)

    @staticmethod
    def _write(checkpoint: dict, path: Path) -> None:
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

    The last good state, ``<dirpath>/last_good.ckpt``: the state the run started from (written at the start
    when missing; not for a fresh sharded run, see ``_fresh_sharded``), then each ``last.ckpt`` whose weights
    gave a finite loss and gradient at the next step with the loss at most ``blowup`` times the median of the
    recent ones (a hard link, no copy). Weights that blew
    up (``objective.lr=1e30``: huge but finite after one step, NaN after the next) are never promoted, so the
    stop message names a state worth resuming from; ``last.ckpt`` stays as it was (nothing is deleted).
    """

    GOOD_NAME = "last_good.ckpt"

    def __init__(self, max_in_row: int = 20, dirpath: str | os.PathLike | None = None, blowup: float = 100.0):
        if max_in_row < 1:
            raise ValueError(f"max_in_row: {max_in_row} must be >= 1")
        self.max_in_row = int(max_in_row)
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.blowup = float(blowup)
        self.counts = {"skipped": 0, "loss": 0, "grad": 0}
        self.in_row = 0
        self.losses: list[float] = []  # the last 50 accepted losses (kept in checkpoints)
        self.good_step: int | None = None  # global step of the state in last_good.ckpt
        self._saved_step: int | None = None  # global step of the newest last.ckpt, not judged yet
        self._saving_good = False
        self._loss_bad = False
        self._last_loss = None

    # -- last good state
    def on_train_start(self, trainer, pl_module) -> None:
        if self.dirpath is None:
            return
        good = self.dirpath / self.GOOD_NAME
        if _fresh_sharded(trainer):  # saving would change the run; last_good.ckpt comes with a promotion
            return
        if not trainer.strategy.broadcast(good.exists()):  # every rank saves (a collective under FSDP)
            self._saving_good = True
            try:
                trainer.save_checkpoint(good, weights_only=False)
            finally:
                self._saving_good = False
            self.good_step = trainer.global_step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not self._saving_good:  # ModelCheckpoint / Preemption: last.ckpt now holds this step
            self._saved_step = trainer.global_step

    def _judge(self, trainer, loss: float) -> None:
        """A finite step: promote last.ckpt when it holds the weights that gave ``loss`` and ``loss`` has not
        blown up; remember the loss."""
        recent = sorted(abs(x) for x in self.losses)
        median = recent[len(recent) // 2] if recent else None
        if median is not None and abs(loss) > self.blowup * max(median, 1e-8):
            log.warning(
                "step %d: loss %.3g is over %gx the recent median %.3g: %s not advanced",
                trainer.global_step,
                loss,
                self.blowup,
                median,
                self.GOOD_NAME,
            )
            return
        self.losses = [*self.losses, loss][-50:]
        if self.dirpath is None or self._saved_step != trainer.global_step:
            return
        self._saved_step = None
        # ModelCheckpoint's last checkpoint (last-v1.ckpt when it found a last.ckpt of another run folder)
        src = Path(getattr(trainer.checkpoint_callback, "last_model_path", "") or self.dirpath / "last.ckpt")
        if trainer.is_global_zero and src.exists():
            link_or_copy(src, self.dirpath / self.GOOD_NAME)
        self.good_step = trainer.global_step

    # -- non-finite steps
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._loss_bad = False
        pl_module.skip_ema_update = False

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        # one host sync for the loss: its mean is non-finite when any element is (or when it overflows)
        self._last_loss = float(loss.detach().float().mean())
        self._loss_bad = not math.isfinite(self._last_loss)

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
            if self._last_loss is not None:
                self._judge(trainer, self._last_loss)
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
            raise NonFiniteError(
                f"{self.in_row} non-finite steps in a row (last at step {trainer.global_step}: {what}); stopped. "
                f"{self._good_state(trainer)} (raise reliability.max_nonfinite_in_row to tolerate longer streaks)"
            )

    def _good_state(self, trainer) -> str:
        """Where to go back to, in words (part of the one-line stop message)."""
        if self.dirpath is None:
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            return f"The last good state is {last if last.exists() else 'not saved yet'}"
        good = self.dirpath / self.GOOD_NAME
        if not good.exists():
            return "No good state was saved"
        step = "" if self.good_step is None else f"step {self.good_step}, "
        return (
            f"The last good state is {good} ({step}the newest checkpoint whose weights still gave a finite "
            f"loss within {self.blowup:g}x of the recent median; resume from it with ckpt_path={good} and "
            f"e.g. a lower objective.lr); {self.dirpath / 'last.ckpt'} may hold the diverging weights"
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log_dict(
            {f"nonfinite/{k}": float(v) for k, v in self.counts.items()},
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )

    def state_dict(self) -> dict:
        return {
            "counts": dict(self.counts),
            "in_row": self.in_row,
            "losses": list(self.losses),
            "good_step": self.good_step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.counts = {**self.counts, **state.get("counts", {})}
        self.in_row = int(state.get("in_row", 0))
        self.losses = [float(x) for x in state.get("losses", [])]
        self.good_step = state.get("good_step")


def _fresh_sharded(trainer) -> bool:
    """A sharded (FSDP) run whose optimizers have no state yet: saving it now would make torch's sharded
    optimizer state dict initialise them with a zero-gradient step (Adam's step count, hence its bias
    correction, would then differ from an unsaved run)."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    sharded = isinstance(trainer.strategy, ModelParallelStrategy | FSDPStrategy)
    return sharded and not all(opt.state for opt in trainer.optimizers)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same checkpoint as ``src`` (a file or a sharded folder), atomically: hard links where
    the filesystem has them (no bytes copied; ``src`` is later replaced, never changed in place), else a copy."""
    import shutil

    from wan2.export import swap_in

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    tmp.unlink(missing_ok=True)
    if src.is_dir():
        shutil.copytree(src, tmp, copy_function=link)
        swap_in(tmp, dst)
    else:
        link(src, tmp)
        os.replace(tmp, dst)


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
