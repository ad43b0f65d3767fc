"""evaluate.py's cheap checks, before torch is imported: a bad value, an unknown key or a malformed row of a
``videos=DIR`` manifest is one line naming the key (or file and line), and exit 2 within about a second.

Nothing here imports torch; ``plan`` (wan2.eval.plan) then checks what needs the files (exports, prompt files).
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from wan2.config_check import ConfigError
from wan2.data.rankjump import EVENTS, PALETTE
from wan2.data.window import check_move, check_rank

DTYPES = (None, "bf16", "fp32")  # wan2.inference.DTYPES
MANIFESTS = (("manifest.jsonl", "path"), ("metadata.jsonl", "file"))  # scripts/generate.py, evaluate.py


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _show(v) -> str:
    return repr(OmegaConf.to_container(v) if isinstance(v, DictConfig | ListConfig) else v)


def _int(cfg, key: str, lo: int, none_ok: bool = False) -> None:
    v = OmegaConf.select(cfg, key)
    if (v is None and none_ok) or (_is_int(v) and v >= lo):
        return
    raise ConfigError(f"{key}: {_show(v)} must be an int >= {lo}{' or null' if none_ok else ''}")


def _num(cfg, key: str, lo: float | None = None, hi: float | None = None, none_ok: bool = False) -> None:
    v = OmegaConf.select(cfg, key)
    if v is None and none_ok:
        return
    if _is_num(v) and (lo is None or v >= lo) and (hi is None or v <= hi):
        return
    allowed = "a number" + (f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")
    raise ConfigError(f"{key}: {_show(v)} must be {allowed}{' or null' if none_ok else ''}")


def check_eval_config(cfg) -> None:
    """Every value of configs/eval.yaml that can be checked without files or torch; one-line ``ConfigError``."""
    _int(cfg, "num_inference_steps", 1, none_ok=True)
    _num(cfg, "guidance_scale", 1, none_ok=True)  # 1: no classifier-free guidance (the 4-step student)
    _int(cfg, "num_frames", 1, none_ok=True)
    _int(cfg, "num_videos", 1, none_ok=True)
    _int(cfg, "batch_size", 1)
    _int(cfg, "seed", 0)
    _int(cfg, "threads", 1, none_ok=True)
    _int(cfg, "wandb_videos", 0)
    _num(cfg, "lora_scale")
    _int(cfg, "bootstrap.num_samples", 1)
    ci = OmegaConf.select(cfg, "bootstrap.ci")
    if not (_is_num(ci) and 0 < ci < 1):
        raise ConfigError(f"bootstrap.ci: {_show(ci)} must be a number in (0, 1), e.g. 0.95")
    if OmegaConf.select(cfg, "metrics.fvd") is not None:
        _int(cfg, "metrics.fvd.batch_size", 1)
    if cfg.get("dtype") not in DTYPES:
        raise ConfigError(f"dtype: {_show(cfg.get('dtype'))} is not one of {list(DTYPES)}")
    for key in ("prompts", "device"):
        if not isinstance(cfg.get(key), str) or not cfg.get(key):
            raise ConfigError(f"{key}: {_show(cfg.get(key))} must be a non-empty string")
    events = cfg.get("events")
    if events is not None:
        events = [events] if isinstance(events, str) else list(events)
        bad = [e for e in events if e not in EVENTS]
        if bad or not events:
            raise ConfigError(f"events: {bad or events} not in {list(EVENTS)}")
    compare = cfg.get("compare")
    if compare not in (None, "", []) and not isinstance(compare, str | ListConfig | list):
        raise ConfigError(f"compare: {_show(compare)} must be a list [A, B]")
    if cfg.get("videos"):
        video_rows(Path(str(cfg.videos)))


# ----------------------------------------------------------------------------- videos=DIR


def _row_problem(row) -> str | None:
    """What is wrong with one parsed manifest row (its file key already checked), or None."""
    for key in ("prompt", "caption"):
        if row.get(key) is not None and not isinstance(row[key], str):
            return f"{key} {row[key]!r} is not a string"
    if row.get("seed") is not None and not _is_int(row["seed"]):
        return f"seed {row['seed']!r} is not an int"
    if row.get("seconds") is not None and not (_is_num(row["seconds"]) and row["seconds"] >= 0):
        return f"seconds {row['seconds']!r} is not a number >= 0"
    if row.get("rows") is not None and not (_is_int(row["rows"]) and 1 <= row["rows"] <= 64):
        return f"rows {row['rows']!r} is not an int in 1..64"
    meta = row.get("meta")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        return f"meta {meta!r} is not an object"
    missing = [k for k in ("event", "old_rank", "new_rank", "colour") if k not in meta]
    if missing:
        return f"meta has no {missing}"
    rows = meta.get("rows", row.get("rows", 5))
    if not (_is_int(rows) and 1 <= rows <= 64):
        return f"meta.rows {rows!r} is not an int in 1..64"
    if meta["event"] not in EVENTS:
        return f"meta.event {meta['event']!r} is not one of {list(EVENTS)}"
    if meta["colour"] not in PALETTE:
        return f"meta.colour {meta['colour']!r} is not one of {list(PALETTE)}"
    ranks = (meta["old_rank"], meta["new_rank"])
    if not all(r is None or _is_int(r) for r in ranks):
        return f"meta: ranks {ranks} are not integers"
    try:  # any rank: a board window shows ranks beyond the first rows (wan2.data.window)
        first = meta["event"] == "first_entry"
        old = None if first and ranks[0] is None else check_rank("meta.old_rank", ranks[0])
        new = check_rank("meta.new_rank", ranks[1])
        if first and old is not None:
            raise ValueError("meta.old_rank: a first_entry has no old rank")
        check_move(meta["event"], old, new)
    except ValueError as err:
        return f"meta: ranks {ranks} are not a {meta['event']} ({err})"
    return None


def _manifest_rows(f: Path, file_key: str) -> list[dict]:
    """The rows of one manifest; a row that is not UTF-8, not JSON, not an object or of wrong types is one line."""
    rows = []
    for n, raw in enumerate(f.read_bytes().splitlines(), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"videos: {f} line {n}: not UTF-8 text") from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise ConfigError(f"videos: {f} line {n}: not JSON ({str(err).splitlines()[0][:80]})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"videos: {f} line {n}: expected a JSON object, got {type(row).__name__}")
        name = row.get(file_key)
        if not isinstance(name, str) or not Path(name).name:
            raise ConfigError(f"videos: {f} line {n}: {file_key!r} must name the video file, got {name!r}")
        if (problem := _row_problem(row)) is not None:
            raise ConfigError(f"videos: {f} line {n}: {problem}")
        rows.append(row)
    return rows


def video_rows(path: Path) -> dict[str, dict]:
    """Check a ``videos=DIR`` folder (a directory with mp4s, well-formed manifests and captions) and return
    per-file rows (prompt, seed, meta, ...) by file name from manifest.jsonl / metadata.jsonl."""
    if not path.is_dir():
        raise ConfigError(f"videos: {str(path)!r} is not a directory")
    if not any(p.suffix == ".mp4" and not p.name.startswith(".") for p in path.iterdir()):
        raise ConfigError(f"videos: {str(path)!r} has no .mp4 files")
    info: dict[str, dict] = {}
    for name, file_key in MANIFESTS:
        if (path / name).is_file():
            for row in _manifest_rows(path / name, file_key):
                key = Path(row[file_key]).name
                info[key] = {**info.get(key, {}), **row}
    captions = path / "captions.txt"
    if captions.is_file():
        try:
            captions.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"videos: {captions}: not UTF-8 text") from None
    return info


# ----------------------------------------------------------------------------- command-line overrides


def override_problem(overrides: list[str], config_dir: Path, config_name: str = "eval") -> str | None:
    """Compose the config as Hydra will (about 0.3 s, nothing resolved); an unknown key or an override that
    cannot be parsed as one line naming the key, with a did-you-mean (Hydra's own messages span several lines)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    overrides = [a for a in overrides if not a.lstrip("+~").startswith("hydra")]
    if any(a.startswith("-") for a in overrides):  # --multirun, --cfg, --help ...: left to Hydra
        return None

    def _compose(args):
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name, overrides=args)

    try:
        _compose(overrides)
        return None
    except HydraException as err:
        cause, text = err.__cause__, str(err)
    one_line = " ".join(ln.strip() for ln in text.splitlines() if ln.strip() and "hydra.cc/docs" not in ln)
    key = getattr(cause, "full_key", None)
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and key:
        arg = next((a for a in overrides if a.lstrip("+~").partition("=")[0] == key), None)
        parent, _, leaf = key.rpartition(".")
        try:
            node = _compose([a for a in overrides if a != arg])
            node = OmegaConf.select(node, parent) if parent else node
            keys = sorted(node) if isinstance(node, DictConfig) else []
        except Exception:  # noqa: BLE001  (only for the list of keys)
            keys = []
        near = difflib.get_close_matches(leaf, keys, 1, cutoff=0.5)
        hint = f"; did you mean {'.'.join(filter(None, [parent, near[0]]))}?" if near else ""
        return f"{key}: no such key{hint} (allowed: {', '.join(keys)})"
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in overrides:
        name = arg.lstrip("+~").partition("=")[0]
        try:
            parser.parse_overrides([arg])
        except HydraException:
            return f"{name}: cannot parse {arg!r}: {one_line}"
        if name and name in text:
            return f"{name}: {one_line}"
    return one_line
