"""Locate the configurations shipped with the package (the repository's ``simulations/``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["builtin_config_names", "builtin_config_path"]


def builtin_config_names() -> list[str]:
    """Names of the built-in simulation configs (``quickstart``, ``lsst_gri``, ...)."""
    folder = resources.files("sbi_lens.simulations")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def builtin_config_path(name: str) -> Path | None:
    """Path of a built-in config by name (with or without ``.yaml``), or None."""
    name = name.removesuffix(".yaml")
    candidate = resources.files("sbi_lens.simulations") / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None
