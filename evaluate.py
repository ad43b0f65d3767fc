"""Evaluate an export, a LoRA or a folder of videos; A/B-compare two models: ``python evaluate.py [overrides]``.

See configs/eval.yaml. Writes ``out/report.json`` and ``out/report.html``; a bad input exits 2 with one line.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import wan2.config_resolvers  # noqa: F401  (registers ${wan2.latest_export:...})
from wan2.startup import output_dir_problem_cli

CONFIGS = Path(__file__).resolve().parent / "configs"


def shorthand(args: list[str]) -> list[str]:
    """``metrics=[a,b]`` (or ``metrics=a``) is short for ``metrics.names=[a,b]`` (metrics also holds settings),
    ``lora=FILE`` for ``lora_path=FILE`` (``lora`` is train.py's config group)."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key == "metrics":
            value = value if value.startswith("[") or value == "null" else f"[{value}]"
            arg = f"metrics.names={value}"
        elif sep and key == "lora":
            arg = f"lora_path={value}"
        out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from wan2.config_check import ConfigError
    from wan2.eval.config import check_eval_config

    try:  # before torch is imported: a bad value fails in about a second
        check_eval_config(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    from wan2.eval.run import main as evaluate

    sys.exit(evaluate(cfg))


def help_text() -> str:
    """``--help``: evaluate.py's own settings (configs/eval.yaml), not every group of configs/ (Hydra's page)."""
    groups = {g: sorted(p.stem for p in (CONFIGS / g).glob("*.yaml")) for g in ("logger", "paths")}
    return "\n".join(
        [
            __doc__.strip(),
            "",
            "== Groups ==  " + "  ".join(f"{g}: {', '.join(opts)}" for g, opts in groups.items()),
            "",
            "== Settings (configs/eval.yaml; override any as key=value) ==",
            (CONFIGS / "eval.yaml").read_text().strip(),
        ]
    )


if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(help_text())
        sys.exit(0)
    sys.argv[1:] = shorthand(sys.argv[1:])
    from wan2.eval.config import override_problem

    problem = override_problem(sys.argv[1:], CONFIGS)  # an unknown key: one line
    problem = problem or output_dir_problem_cli("eval", sys.argv[1:], ("out",))  # an unwritable out
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
