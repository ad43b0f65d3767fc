"""Train any wan2 experiment: ``python train.py experiment=NAME [overrides]`` (see configs/experiment/)."""

if __name__ == "__main__":  # first of all: SIGTERM / SIGUSR1 during start-up exit 75 (wan2/startup.py)
    from wan2.startup import install_preemption_handlers, own_wandb_service

    install_preemption_handlers()
    own_wandb_service()

import difflib
import functools  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import wan2.config_resolvers  # noqa: E402, F401  (registers ${wan2.latest_export:...})

CONFIGS = Path(__file__).resolve().parent / "configs"

# configs/hydra/launcher/submitit_slurm.yaml stands in for the plugin's config of that name and holds all of its
# fields; Hydra still checks it against the plugin's schema and warns that this check is deprecated.
warnings.filterwarnings(
    "ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore"
)


def config_dirs(args: list[str]) -> list[Path]:
    """configs/ plus the local folders of a ``hydra.searchpath=[file:///...]`` override (your own YAML files,
    e.g. a new objective's configs/objective/NAME.yaml outside the repo)."""
    dirs = [CONFIGS]
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra.searchpath":
            for item in value.strip("[]").split(","):
                item = item.strip().strip("'\"")
                if item.startswith("file://"):
                    dirs.append(Path(item.removeprefix("file://")))
    return dirs


def check_group_overrides(args: list[str]) -> str | None:
    """A one-line error when ``group=name`` names no <configs>/<group>/<name>.yaml, or when an override cannot be
    applied at all (an unknown key, bad syntax): Hydra's own messages span several lines."""
    dirs = config_dirs(args)
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        groups = [d / key for d in dirs if (d / key).is_dir()]
        if not sep or not key.isidentifier() or not groups or key == "hydra":
            continue
        if value in ("", "null") or any(c in value for c in ",[]{}()$*"):  # sweeps, lists: left to Hydra
            continue
        if not any((g / f"{value}.yaml").is_file() for g in groups):
            options = sorted({p.stem for g in groups for p in g.glob("*.yaml")})
            return f"{key}: {value!r} is not one of {options}"
    if any(a.startswith("-") for a in args):  # --multirun, --cfg, -cn ...: left to Hydra
        return None
    searchpath = [a for a in args if a.lstrip("+~").partition("=")[0] == "hydra.searchpath"]
    return _override_problem([a for a in args if not a.lstrip("+~").startswith("hydra")], searchpath)


def sweep_problem(args: list[str]) -> str | None:
    """A one-line error when several jobs of one multirun (``-m`` with a sweep) would share one fixed
    ``paths.output_dir``: each would overwrite (or, with ``ckpt_path=last``, resume) the others' run."""
    if not any(a in ("-m", "--multirun") for a in args):
        return None
    fixed = [a for a in args if a.lstrip("+~").partition("=")[0] == "paths.output_dir"]
    per_job = (
        "${hydra:job.num}",
        "${hydra.job.num}",
        "${hydra:job.override_dirname}",
        "${hydra:runtime.output_dir}",
    )
    if not fixed or any(p in fixed[-1] for p in per_job):
        return None

    def sweeps(arg: str) -> bool:
        key, _, value = arg.lstrip("+~").partition("=")
        depth, top_comma = 0, False
        for c in value:
            depth += (c in "[{(") - (c in "]})")
            top_comma |= c == "," and depth == 0
        return key == "hparams_search" or top_comma or value.startswith(("range(", "choice(", "interval("))

    if any(sweeps(a) for a in args if not a.startswith("-")):
        return (
            f"paths.output_dir: {fixed[-1].partition('=')[2]!r} is one folder for every job of this multirun; "
            "drop it (each job gets its folder under hydra.sweep.dir) or add ${hydra:job.num} to it"
        )
    return None


def _compose(overrides: list[str], searchpath: list[str] = ()):
    return _compose_cached(tuple(overrides), tuple(searchpath))


@functools.lru_cache(maxsize=4)
def _compose_cached(overrides: tuple[str, ...], searchpath: tuple[str, ...]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[*searchpath, *overrides])


def check_output_dirs(args: list[str]) -> str | None:
    """A one-line error when ``paths.output_dir`` cannot be written: Hydra creates the run folder before
    ``main`` runs and fails with a traceback. Sweeps and flags are left to Hydra. (``data.cache_dir`` may be a
    read-only mount holding a finished cache: wan2.data.cache checks it only when it must build one.)"""
    from wan2.startup import output_dir_problem

    if any(a.startswith("-") for a in args):
        return None
    try:
        searchpath = [a for a in args if a.lstrip("+~").partition("=")[0] == "hydra.searchpath"]
        cfg = _compose([a for a in args if not a.lstrip("+~").startswith("hydra")], searchpath)
    except Exception:  # noqa: BLE001  (check_group_overrides reports it)
        return None
    return output_dir_problem(cfg, ("paths.output_dir",), args)


def _override_problem(overrides: list[str], searchpath: list[str] = ()) -> str | None:
    """Compose the config as Hydra will (about 0.3 s, nothing resolved); a failure as one line naming the key."""
    import re

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    try:
        _compose(overrides, searchpath)
        return None
    except HydraException as err:
        cause, text = err.__cause__, str(err)
    one_line = " ".join(ln.strip() for ln in text.splitlines() if ln.strip() and "hydra.cc/docs" not in ln)
    key = getattr(cause, "full_key", None)
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and key:
        arg = next((a for a in overrides if a.lstrip("+~").partition("=")[0].startswith(key)), None)
        parent, _, leaf = key.rpartition(".")
        try:
            cfg = _compose([a for a in overrides if a != arg], searchpath)
            keys = sorted(OmegaConf.select(cfg, parent) if parent else cfg)
        except Exception:  # noqa: BLE001  (only for the list of keys)
            keys = []
        near = difflib.get_close_matches(leaf, keys, 1)
        hint = f"did you mean {'.'.join(filter(None, [parent, near[0]]))}?" if near else ""
        known = f" (allowed: {keys})" if keys else ""
        # a settings dataclass refuses any key it does not declare: no `+key=...` advice there; only the
        # free-form constructor arguments of the model's blocks take new keys
        free = re.match(r"model\.(text_encoder|vae|transformer|scheduler)\.", key)
        if key.split(".")[0] in ("objective", "model", "data", "lora") and not free:
            return f"{key}: no such key{known}" + (f"; {hint}" if hint else "")
        return f"{key}: no such key{known}; {hint + ' ' if hint else ''}to add a new key write +{(arg or key).lstrip('+~')}"
    if key:
        return f"{key}: {one_line} ({str(cause).splitlines()[0]})"
    parser = OverridesParser.create()
    for arg in overrides:
        try:
            parser.parse_overrides([arg])
        except HydraException:
            return f"{arg.lstrip('+~').partition('=')[0]}: cannot parse {arg!r}: {one_line}"
    arg = next((a for a in overrides if a.lstrip("+~").partition("=")[0] in text), None)
    return f"{arg.lstrip('+~').partition('=')[0]}: {one_line}" if arg else one_line


def bare_run_problem() -> str | None:
    """A one-line error for a run that chose nothing to train: no experiment and no objective / model / data of
    its own (the defaults train on a randomly initialised VAE). ``+allow_bare=true`` runs it anyway."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if hc.runtime.choices.get("experiment") not in (None, "null"):
        return None
    keys = [o.lstrip("+~").partition("=")[0] for o in hc.overrides.task]
    if any(k.split(".")[0] in ("objective", "model", "data", "allow_bare") for k in keys):
        return None
    names = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
    return f"no experiment given: run python train.py experiment=NAME with NAME one of {names} (see README)"


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; returns ``cfg.optimized_metric``'s final value (the objective a Hydra sweeper such as Optuna reads)."""
    from wan2.config_check import ConfigError, check_train_config

    try:  # before the heavy imports: a bad value fails in about a second
        check_train_config(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if (problem := bare_run_problem()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    from wan2.run_config import objective_value
    from wan2.tasks import run_cli, train

    return objective_value(cfg, run_cli(train, cfg))


if __name__ == "__main__":
    from wan2.startup import StartupPreempted, finished, report

    try:
        problem = (
            sweep_problem(sys.argv[1:])
            or check_group_overrides(sys.argv[1:])
            or check_output_dirs(sys.argv[1:])
        )
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
        main()
        finished()  # a late SIGUSR1 / SIGTERM must not kill the exiting process
    except StartupPreempted as err:  # raised by the signal handler, wherever start-up was
        report(err)
        sys.exit(err.code)
