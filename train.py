"""Train any wan2 experiment: ``python train.py experiment=NAME [overrides]`` (see configs/experiment/)."""

import hydra

import wan2.config_resolvers  # noqa: F401  (registers ${wan2.latest_export:...})
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig):
    from wan2.tasks import run_cli, train

    run_cli(train, cfg)


if __name__ == "__main__":
    main()
