"""Train any wan2 experiment: ``python train.py experiment=NAME [overrides]`` (see configs/experiment/)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import wan2.config_resolvers  # noqa: F401  (registers ${wan2.latest_export:...})

CONFIGS = Path(__file__).resolve().parent / "configs"


def check_group_overrides(args: list[str]) -> str | None:
    """A one-line error when ``group=name`` names no configs/<group>/<name>.yaml (Hydra's own is multi-line)."""
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or not key.isidentifier() or not (CONFIGS / key).is_dir() or key == "hydra":
            continue
        if value in ("", "null") or any(c in value for c in ",[]{}()$*"):  # sweeps, lists: left to Hydra
            continue
        if not (CONFIGS / key / f"{value}.yaml").is_file():
            options = sorted(p.stem for p in (CONFIGS / key).glob("*.yaml"))
            return f"{key}: {value!r} is not one of {options}"
    return None


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig):
    from wan2.config_check import ConfigError, check_train_config

    try:  # before the heavy imports: a bad value fails in about a second
        check_train_config(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    from wan2.tasks import run_cli, train

    run_cli(train, cfg)


if __name__ == "__main__":
    if (problem := check_group_overrides(sys.argv[1:])) is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
