"""Loggers whose history survives kills and resumes (configs/logger/*.yaml).

- ``CSVLogger``: Lightning's CSVLogger with a fixed ``version`` deletes the previous ``metrics.csv`` when a
  run starts again in its folder, and writes rows only every ``flush_logs_every_n_steps``; a killed run could
  lose all of them. This one keeps the file: a resumed run reads it, drops the rows at and after the first
  step it logs itself (the killed attempt logged them past its last checkpoint; the resumed run logs them
  again, so no step appears twice; validation rows at the checkpoint's own step stay: not run again) and
  appends. Rows are written at every checkpoint, rewrites go through a
  temp file and ``os.replace``, and a row cut short by a kill is dropped when the file is read back.
- ``LogStep``: after a resume from a checkpoint saved on SIGTERM / SIGUSR1, Lightning's step counter for
  loggers came out one ahead of the optimizer step: every row was logged one step late. It is reset at the
  first batch of each process.
- ``WandbLogger``: stores the W&B run id in ``<save_dir>/wandb_run_id``; a run started with a ``ckpt_path``
  (``resume_run``) reuses it with ``resume="allow"``, so the resumed run continues the same W&B run. Offline
  unless ``WANDB_MODE=online``; the run is named from the experiment and the command's overrides
  (``run_name``), grouped by experiment, tagged (``run_tags``); ``flat_config`` is the config it logs once.
"""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
import string
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from wan2.compat import set_logger_step

RUN_ID_FILE = "wandb_run_id"
# config keys that are plumbing, not an experiment setting: left out of the logged config and of run names
PLUMBING = ("callbacks", "paths", "hydra", "logger", "ckpt_path", "threads", "out")


def _hydra():
    """Hydra's runtime config inside ``@hydra.main`` (train.py, evaluate.py), else None (tests, Python)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def safe_name(text: str, limit: int = 128) -> str:
    """A run name safe in W&B and as a file name: ``[A-Za-z0-9._=,+-]`` kept, anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)[:limit]


def run_name(experiment: str, overrides: list[str] | None = None) -> str:
    """``<experiment>-<overrides>``, e.g. ``lora_rankup-lora.rank=2`` (Hydra's ``override_dirname``: the command
    line's overrides without ``experiment=`` and the plumbing keys); ``overrides`` None: the running Hydra job's."""
    if overrides is None:
        hc = _hydra()
        overrides = list(hc.overrides.task) if hc is not None else []
    kept = []
    for o in sorted(overrides):
        key = o.lstrip("+~").split("=", 1)[0]
        if key != "experiment" and key.split(".", 1)[0] not in PLUMBING and not key.startswith("logger"):
            kept.append(o.lstrip("+~"))
    return safe_name("-".join([experiment, ",".join(kept)]) if kept else experiment)


def run_tags(lora_targets: str | None = None) -> list[str]:
    """``model=<choice>``, ``objective=<choice>``, ``trainer=<choice>``, ``data=<choice>`` (the running Hydra
    job's group choices) and, for a LoRA run, ``lora=<targets preset>``: filters in the W&B runs table."""
    hc = _hydra()
    choices = dict(hc.runtime.choices) if hc is not None else {}
    tags = [f"{g}={choices[g]}" for g in ("model", "objective", "trainer", "data") if choices.get(g)]
    if lora_targets and choices.get("objective") == "lora":
        tags.append(f"lora={lora_targets}")
    return [safe_name(t, 64) for t in tags]


def flat_config(cfg) -> dict:
    """The run's settings as one flat dict (``objective.lr``, ``data.batch_size``, ...): resolved, without
    ``_target_`` and the plumbing groups (``PLUMBING``). Logged once per process (``wan2.tasks``)."""
    from omegaconf import DictConfig, OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)

    def walk(node, prefix: str, out: dict) -> dict:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if key == "_target_" or (not prefix and key in PLUMBING):
                continue
            if isinstance(value, dict) and value:
                walk(value, name + ".", out)
            else:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    return walk(tree, "", {})


def wandb_offline() -> bool:
    """Offline unless ``WANDB_MODE`` is ``online`` (or ``run``): nothing leaves the machine by default."""
    return os.environ.get("WANDB_MODE", "offline").lower() not in ("online", "run")


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(header, rows) of a metrics.csv; a last line without its newline (a kill mid-write) is dropped."""
    if not path.is_file():
        return [], []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    rows = [r for r in reader if None not in r and None not in r.values()]
    return list(reader.fieldnames or []), rows


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


EVAL_PREFIXES = ("val/", "quick_eval/")


def _relogged(row: dict, first: float, resume_step: float | None) -> bool:
    """Whether this row of a previous attempt is logged again by this process, whose first row has step ``first``
    and which resumed from the checkpoint of ``resume_step`` (None: not known): every row at and after ``first``,
    except validation / QuickEval rows at ``resume_step``: they are logged at the optimizer step after its
    checkpoint and are not run again on resume (kept)."""
    step = _step(row)
    if step != resume_step:
        return step >= first
    keys = [k for k, v in row.items() if v not in (None, "") and k not in ("step", "epoch")]
    return not keys or not all(k.startswith(EVAL_PREFIXES) for k in keys)


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps the rows already in ``metrics.csv``."""

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        self._resumed_from: float | None = None
        self.resume_step: int | None = None  # the checkpoint's step (CSVLogger.set_resume_step, from LogStep)
        self.metrics_keys, self._kept = read_rows(Path(self.metrics_file_path))

    def log_metrics(self, metrics_dict: dict, step: int | None = None) -> None:
        if self._resumed_from is None:  # the first row of this process decides what is replaced
            first = step if step is not None else len(self.metrics)
            self._resumed_from = float(first)
            kept = [r for r in self._kept if not _relogged(r, first, self.resume_step)]
            if len(kept) != len(self._kept):
                self._rewrite(self.metrics_keys, kept)
            self._kept = []
        super().log_metrics(metrics_dict, step)
        self.save()  # write-through: Lightning logs a step's training row after that step's checkpoint

    def save(self) -> None:
        """Append the new rows; when new keys appear, rewrite the whole file atomically with the new header."""
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        path = Path(self.metrics_file_path)
        if new_keys or not path.is_file():
            _, old = read_rows(path)
            self._rewrite(self.metrics_keys, old + self.metrics)
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.metrics_keys).writerows(self.metrics)
        self.metrics = []

    def _rewrite(self, keys: list[str], rows: list[dict]) -> None:
        path = Path(self.metrics_file_path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class CSVLogger(_CSVLogger):
    """``<save_dir>/<name>/<version>/metrics.csv`` holding the whole history of a run across resumes."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _KeepingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    def set_resume_step(self, step: int) -> None:
        """The optimizer step this process starts from (the resumed checkpoint's; 0 for a fresh run)."""
        if rank_zero_only.rank == 0:
            self.experiment.resume_step = step

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        """Rows up to a checkpoint are on disk with it (a kill loses none that a resume will not log again)."""
        super().after_save_checkpoint(checkpoint_callback)
        self.save()


def new_run_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def run_id_for(save_dir: str | os.PathLike, resume: bool) -> str:
    """The W&B run id kept in ``save_dir``: reused when resuming and present, else a new one (written by rank 0)."""
    path = Path(save_dir) / RUN_ID_FILE
    if resume and path.is_file() and (run_id := path.read_text().strip()):
        return run_id
    run_id = new_run_id()
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, path)
    return run_id


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger continuing the same W&B run when the training run resumes.

    ``resume_run``: the run's ``ckpt_path`` (null: a fresh run, a new id). An explicit ``id`` / ``version`` wins.
    ``offline`` None: from ``WANDB_MODE`` (``wandb_offline``). ``name``: the experiment; the command's overrides
    are appended (``run_name``) and the experiment is the W&B group unless ``group`` is given. ``tags`` None:
    ``run_tags(lora_targets)``.
    """

    def __init__(
        self,
        *args,
        resume_run: str | None = None,
        offline: bool | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        lora_targets: str | None = None,
        **kwargs,
    ):
        save_dir = kwargs.get("save_dir") or kwargs.get("dir")
        if save_dir and kwargs.get("id") is None and kwargs.get("version") is None:
            resume = resume_run not in (None, "", "none", "null")
            kwargs["id"] = run_id_for(save_dir, resume)
        offline = wandb_offline() if offline is None else bool(offline)
        if name is not None:
            kwargs.setdefault("group", name)
            name = run_name(name)
        kwargs.setdefault("job_type", "train")
        tags = list(tags) if tags is not None else run_tags(lora_targets)
        super().__init__(*args, offline=offline, name=name, tags=tags or None, **kwargs)


class LogStep(L.Callback):
    """At the first training batch of a process, set the loggers' step to the optimizer step (as in a run
    that was never interrupted: both count finished steps when a batch starts). Must run before callbacks
    that log at batch start (LearningRateMonitor): ``wan2.tasks`` puts it first."""

    def __init__(self) -> None:
        self._synced = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._synced:
            self._synced = True
            set_logger_step(trainer, trainer.global_step)
            for logger in trainer.loggers:
                if isinstance(logger, CSVLogger):
                    logger.set_resume_step(trainer.global_step)


def train_run(out_dir: str | Path, name: str) -> dict:
    """{id, name, dir} of a training run: the W&B run id kept in the run folder (None without W&B), the run
    name (``run_name``) and the folder; written into the export's ``wan2.json`` (``wan2.export.record_train_run``)."""
    path = Path(out_dir) / RUN_ID_FILE
    run_id = path.read_text().strip() if path.is_file() else None
    return {"id": run_id or None, "name": run_name(name), "group": name, "dir": str(Path(out_dir).resolve())}
