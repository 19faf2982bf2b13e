"""What every config model shares: strict models, one-line errors, YAML reading."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the field."""


class _Strict(BaseModel):
    # allow_inf_nan=False: every float field refuses .inf/.nan (a NaN store is never useful).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_log_range(field: str, value: tuple[float, float], largest: float) -> None:
    """A log-uniform range needs 0 < low ≤ high ≤ largest (one-line ValueError)."""
    low, high = value
    if not 0 < low <= high <= largest:
        raise ValueError(
            f"{field} must satisfy 0 < low ≤ high ≤ {largest}, got [{low}, {high}]; "
            "give [v, v] for a fixed value"
        )


def _format_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function"))
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    detail = f" (got {value!r})" if first["type"] in ("extra_forbidden", "finite_number") else ""
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{source}: {location or '<root>'}: {message}{detail}"


def _read_text(path: Path) -> str:
    """The text of a config file; a directory or an unreadable file is a ConfigError."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML file")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read: {error}".splitlines()[0]) from None


def _parse_yaml(text: str, source: str):
    """YAML text → Python data (None for an empty document); syntax errors in one line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}".splitlines()[0]) from None


def _validate(model: type[BaseModel], data, source: str):
    """``data`` (a mapping) validated as ``model``; anything else, or an invalid field,
    is a one-line :class:`ConfigError` naming ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_error(error, source)) from None
