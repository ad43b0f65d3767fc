"""OmegaConf resolvers the configs use (registered on import of wan2.tasks / train.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def latest_export(name: str, outputs_dir: str = "outputs", fallback: str = "") -> str:
    """``outputs/<name>/latest/export`` if it exists, else ``fallback`` if that exists (the shipped base),
    else the outputs path (config validation then says how to make it)."""
    newest = Path(outputs_dir) / name / "latest" / "export"
    if newest.is_dir():
        return str(newest)
    if fallback and Path(fallback).is_dir():
        return fallback
    return str(newest)


def register() -> None:
    if not OmegaConf.has_resolver("wan2.latest_export"):
        OmegaConf.register_new_resolver("wan2.latest_export", latest_export)


register()
