"""The four inferred parameters as named records, and the one place that knows their order.

θ = (z_lens, z_source, theta_E [arcsec], sigma_v [km/s]) everywhere: tensors, stores,
plots and tables. Code elsewhere names a parameter (``theta_columns(theta).theta_E``)
instead of indexing the last axis, so the order is written down once, here.

Example:
    >>> import numpy as np
    >>> [p.name for p in PARAMETERS]
    ['z_lens', 'z_source', 'theta_E', 'sigma_v']
    >>> THETA_E.unit, THETA_E.label
    ('arcsec', '$\\\\theta_E$ [arcsec]')
    >>> columns = theta_columns(np.array([[0.5, 2.0, 1.2, 250.0]]))
    >>> float(columns.theta_E[0])
    1.2
    >>> stack_theta(columns).shape
    (1, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "PARAMETERS",
    "PARAMETER_LABELS",
    "PARAMETER_NAMES",
    "PARAMETER_UNITS",
    "SIGMA_V",
    "THETA_E",
    "Z_LENS",
    "Z_SOURCE",
    "Parameter",
    "ThetaColumns",
    "as_theta_array",
    "parameter",
    "stack_theta",
    "theta_columns",
]


@dataclass(frozen=True)
class Parameter:
    """One inferred parameter.

    Attributes:
        name: identifier used in stores, tables and APIs (``theta_E``).
        symbol: short plain-text symbol (``θ_E``).
        unit: unit as text, empty for dimensionless quantities (``arcsec``).
        label: matplotlib label with unit (``$\\theta_E$ [arcsec]``).
        lower: smallest physical value (exclusive where the physics requires it).
        upper: largest physical value (``math.inf``: unbounded).
    """

    name: str
    symbol: str
    unit: str
    label: str
    lower: float = 0.0
    upper: float = math.inf

    @property
    def index(self) -> int:
        """Position of this parameter on the last axis of θ."""
        return PARAMETER_NAMES.index(self.name)

    @property
    def unit_suffix(self) -> str:
        """`` [unit]`` for tables, empty when dimensionless."""
        return f" [{self.unit}]" if self.unit else ""


Z_LENS = Parameter("z_lens", "z_l", "", r"$z_l$")
Z_SOURCE = Parameter("z_source", "z_s", "", r"$z_s$")
THETA_E = Parameter("theta_E", "θ_E", "arcsec", r"$\theta_E$ [arcsec]")
SIGMA_V = Parameter("sigma_v", "σ_v", "km/s", r"$\sigma_v$ [km/s]")

PARAMETERS: tuple[Parameter, ...] = (Z_LENS, Z_SOURCE, THETA_E, SIGMA_V)
PARAMETER_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)
PARAMETER_LABELS: tuple[str, ...] = tuple(p.label for p in PARAMETERS)
PARAMETER_UNITS: dict[str, str] = {p.name: p.unit for p in PARAMETERS}


class ThetaColumns(NamedTuple):
    """The four columns of θ by name; each has θ's shape without the last axis."""

    z_lens: Any
    z_source: Any
    theta_E: Any
    sigma_v: Any


assert ThetaColumns._fields == PARAMETER_NAMES  # the one order, checked at import


def parameter(name: str) -> Parameter:
    """The :class:`Parameter` called ``name``.

    Raises:
        ValueError: no parameter has that name.
    """
    for record in PARAMETERS:
        if record.name == name:
            return record
    raise ValueError(f"unknown parameter {name!r}; expected one of {list(PARAMETER_NAMES)}")


def theta_columns(theta) -> ThetaColumns:
    """Split θ of shape (..., 4) (numpy array or torch tensor) into named columns.

    Raises:
        ValueError: the last axis does not hold the four parameters.
    """
    if theta.shape[-1] != len(PARAMETERS):
        raise ValueError(
            f"theta must have shape (..., {len(PARAMETERS)}) with columns "
            f"{list(PARAMETER_NAMES)}, got {tuple(theta.shape)}"
        )
    return ThetaColumns(*(theta[..., p.index] for p in PARAMETERS))


def as_theta_array(theta):
    """θ as a finite (N, 4) float64 numpy array (a torch tensor or one row (4,) accepted).

    Raises:
        ValueError: another shape, or NaN / inf values.
    """
    import numpy as np

    if hasattr(theta, "detach"):  # torch tensor
        theta = theta.detach().cpu().numpy()
    theta = np.asarray(theta, dtype=float)
    if theta.ndim == 1 and theta.shape[0] == len(PARAMETERS):
        theta = theta[None]
    if theta.ndim != 2 or theta.shape[1] != len(PARAMETERS):
        raise ValueError(
            f"theta must have shape (N, {len(PARAMETERS)}) with columns "
            f"{list(PARAMETER_NAMES)}, got {theta.shape}"
        )
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta contains NaN or inf")
    return theta


def stack_theta(columns: ThetaColumns):
    """Stack named columns back into θ of shape (..., 4) (numpy or torch, as given)."""
    first = columns[0]
    if hasattr(first, "unbind"):  # torch, without importing it for numpy callers
        import torch

        return torch.stack(tuple(columns), dim=-1)
    import numpy as np

    return np.stack(tuple(columns), axis=-1)
