"""Validated configuration models (pydantic) for simulations and training.

A simulation YAML maps onto :class:`SimulationConfig`, a training YAML onto
:class:`TrainConfig`. Every model forbids unknown keys, so a typo is reported with the
field's path instead of being silently ignored; every error is one line naming the file.
"""

from sbi_lens.config.base import ConfigError
from sbi_lens.config.population import NeighbourConfig, PopulationConfig, SelectionConfig
from sbi_lens.config.simulation import (
    ComovingVolumeDist,
    PriorConfig,
    PsfConfig,
    ScatterConfig,
    SimulationConfig,
    SurveyConfig,
    TruncatedNormalDist,
    UniformDist,
    VelocityDispersionFunctionDist,
    load_config,
    parse_config,
)
from sbi_lens.config.training import (
    ArcCheckSettings,
    EmbeddingSettings,
    FlowSettings,
    TrainConfig,
    load_train_config,
    parse_train_config,
)

__all__ = [
    "ArcCheckSettings",
    "ComovingVolumeDist",
    "ConfigError",
    "EmbeddingSettings",
    "FlowSettings",
    "NeighbourConfig",
    "PopulationConfig",
    "PriorConfig",
    "PsfConfig",
    "ScatterConfig",
    "SelectionConfig",
    "SimulationConfig",
    "SurveyConfig",
    "TrainConfig",
    "TruncatedNormalDist",
    "UniformDist",
    "VelocityDispersionFunctionDist",
    "load_config",
    "load_train_config",
    "parse_config",
    "parse_train_config",
]
