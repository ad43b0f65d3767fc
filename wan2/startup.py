"""Start-up safety for the CLIs. Standard library only: train.py uses it before Hydra or torch are imported.

- Preemption from the first line of train.py (``install_preemption_handlers``): until training's first batch,
  SIGTERM or SIGUSR1 stops the process at once with ``StartupPreempted`` (exit 75, one line). Nothing
  half-written stays behind: every file the start-up writes (latent cache, checkpoints, exports) is written to
  a temp name and renamed, and the temp is removed on any exception. When Lightning's fit loop runs, the
  ``Preemption`` callback takes over (``hand_over``): a signal then only calls its ``request_stop`` (finish the
  batch, save ``last.ckpt``, exit 75). A signal that arrived while raising was not possible is remembered and
  handed over, so none is lost between the two.
- Its own W&B service (``own_wandb_service``): a service token inherited from a parent process is dropped.
- Output folders that cannot be written (``output_dir_problem``): one line naming the key, before Hydra
  creates its run folder (which would otherwise end in Hydra's traceback).
"""

from __future__ import annotations

import atexit
import errno
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: run the same command again (train.sbatch requeues)
SIGNALS = ("SIGTERM", "SIGUSR1")


class StartupPreempted(SystemExit):
    """A preemption signal before the first training step. A ``SystemExit`` (code 75), so that no
    ``except Exception`` on the way up swallows it; train.py prints its message as one line."""

    def __init__(self, message: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _State:
    """Module-wide: one set of handlers per process."""

    def __init__(self) -> None:
        self.pid: int | None = None  # the process that installed the handlers (forked workers only record)
        self.previous: dict[int, object] = {}
        self.received: str | None = None  # the first signal seen and not yet handed over
        self.raised = (
            False  # StartupPreempted raised once; later signals only record (cleanup runs undisturbed)
        )
        self.delegate: Callable[[str], None] | None = None  # Preemption's request_stop while fit runs
        self.forward: list[Callable[[int], None]] = []  # e.g. pass the signal on to DDP ranks 1..
        self.when = (
            "during start-up ({signal}) before the first training step: nothing was saved or half-written"
        )
        self.then = "resume with the same command"
        self.message: str | None = None  # raised and not reported yet (atexit reports it)


_state = _State()


def _handler(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    if os.getpid() != _state.pid:  # a forked child (DataLoader worker): its parent decides
        return
    if _state.delegate is not None:  # training runs: finish the batch, save, exit 75
        _state.delegate(name)
        return
    for fn in list(_state.forward):
        try:
            fn(signum)
        except Exception:  # noqa: BLE001  (forwarding is best effort; this process still stops)
            pass
    if _state.received is None:
        _state.received = name
    if not _state.raised:
        _state.raised = True
        _state.message = f"preempted {_state.when.format(signal=name)}; {_state.then}"
        raise StartupPreempted(_state.message)


def report(err: StartupPreempted) -> None:
    """Print ``stopped: <message>`` to stderr, once (train.py; else at exit: a signal can arrive while train.py
    is still importing, outside any ``try``)."""
    print(f"stopped: {err}", file=sys.stderr, flush=True)
    _state.message = None


def _report_at_exit() -> None:
    if _state.message is not None and _state.pid == os.getpid():
        report(StartupPreempted(_state.message))


def own_wandb_service() -> None:
    """Make this process start its own W&B service when it logs to W&B. W&B hands its service to child processes
    through ``WANDB_SERVICE``; a service inherited from a parent (a test runner or a sweep driver that used W&B
    itself) outlives the attempts it served and still holds the id of an attempt that was killed, so the resumed
    run would be refused with 'run ID ... is in use'."""
    os.environ.pop("WANDB_SERVICE", None)


def install_preemption_handlers(signals: Iterable[str] = SIGNALS) -> None:
    """Catch ``signals`` from now on (idempotent; main thread only)."""
    if _state.pid == os.getpid():
        return
    if _state.pid is not None:  # inherited from the parent process: start afresh
        _state.__init__()
    _state.pid = os.getpid()
    atexit.register(_report_at_exit)
    _state.previous.update(_set_handler(signals, _handler))


def installed() -> bool:
    return _state.pid == os.getpid()


def uninstall() -> None:
    """Restore the handlers found at install time (tests; a library caller)."""
    if installed():
        for sig, previous in _state.previous.items():
            signal.signal(sig, previous)
    _state.__init__()


def forward_to(fn: Callable[[int], None]) -> None:
    """Also call ``fn(signum)`` on a start-up signal (DDP: Lightning's launcher passes it on to ranks 1..)."""
    _state.forward.append(fn)


def hand_over(request_stop: Callable[[str], None]) -> str | None:
    """From now on a signal calls ``request_stop(name)`` instead of stopping the process (may be called before
    ``install_preemption_handlers``). Returns a signal that was received but not acted on yet (the caller stops
    at the next batch boundary), else None."""
    pending, _state.received = _state.received, None
    _state.delegate = request_stop
    _state.message = None  # the callback reports its own stop
    return pending


def take_back(when: str, then: str) -> None:
    """Fit is over: signals stop the process at once again (e.g. during the export), with the message
    ``preempted {when}; {then}``."""
    _state.delegate = None
    _state.when, _state.then = when, then


def finished() -> None:
    """The run's work is on disk: from now on SIGTERM / SIGUSR1 are ignored (main thread only). Python resets a
    signal with a handler to its default while it exits, so a scheduler's warning that arrives then would
    otherwise kill a finished run (exit -10 for SIGUSR1) and mark the job failed."""
    _set_handler(SIGNALS, signal.SIG_IGN)


def _set_handler(signals: Iterable[str], handler) -> dict:
    """Set ``handler`` for each named signal this platform has; the handlers it replaced, by signal number.
    Outside the main thread Python refuses, and nothing is set."""
    previous = {}
    for name in signals:
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
    return previous


# ----------------------------------------------------------------------------- output folders
def dir_problem(path: str | os.PathLike) -> str | None:
    """None when the folder ``path`` exists and takes new entries or can be created, else why not.

    Creates nothing: the nearest existing ancestor must be a folder in which a probe folder can be made (and
    removed again); missing names must fit the file system. Root ignores permission bits, so the probe (not
    ``os.access``) is what finds a read-only mount, a folder under a file, or /proc."""
    path = Path(os.path.abspath(os.fspath(path)))
    missing: list[str] = []
    probe = path
    while True:
        try:
            os.stat(probe)
            break
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            pass
        except OSError as err:  # ENAMETOOLONG, ELOOP, EACCES ...
            return os.strerror(err.errno) if err.errno else str(err)
        if probe.parent == probe:
            return "no such file system"
        missing.append(probe.name)
        probe = probe.parent
    if not probe.is_dir():
        return f"{str(probe)!r} is not a folder"
    try:
        name_max = os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if any(len(os.fsencode(n)) > name_max for n in missing):
        return os.strerror(errno.ENAMETOOLONG)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".wan2-write-probe-", dir=probe))
    except OSError as err:
        where = "" if probe == path else f" (in {str(probe)!r})"
        return f"cannot create a folder{where}: {os.strerror(err.errno) if err.errno else err}"
    return None


def output_dir_problem(cfg, keys: Iterable[str], cli_args: Iterable[str] = ()) -> str | None:
    """A one-line error for the first of ``keys`` (resolved in the composed ``cfg``) or of the
    ``hydra.run.dir=...`` / ``hydra.sweep.dir=...`` command-line values that names an unwritable folder."""
    from omegaconf import OmegaConf

    values = []
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except Exception:  # noqa: BLE001  (unresolvable: left to the config checks)
            continue
        if value not in (None, ""):
            values.append((key, str(value)))
    for arg in cli_args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in ("hydra.run.dir", "hydra.sweep.dir") and value and "$" not in value:
            values.append((key, value))
    for key, value in values:
        if (why := dir_problem(value)) is not None:
            return f"{key}: cannot write to {value!r}: {why}"
    return None


def output_dir_problem_cli(config_name: str, args: list[str], keys: Iterable[str]) -> str | None:
    """``output_dir_problem`` for a CLI: compose configs/<config_name>.yaml with the command-line overrides
    (about 0.3 s, before Hydra creates its run folder). Flags (--multirun, --help, ...) and overrides that do
    not compose are left to Hydra."""
    if any(a.startswith("-") for a in args):
        return None
    from hydra import compose, initialize_config_dir

    configs = Path(__file__).resolve().parents[1] / "configs"
    try:
        with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
            cfg = compose(config_name, overrides=[a for a in args if not a.lstrip("+~").startswith("hydra")])
    except Exception:  # noqa: BLE001
        return None
    return output_dir_problem(cfg, keys, args)
