"""One-dimensional densities with cdf and inverse cdf, truncatable per sample.

The prior's redshift and velocity-dispersion components: uniform, truncated normal,
and densities tabulated on a grid (comoving volume, the velocity-dispersion function).
All work in float64 on tensors; inverse-cdf sampling makes truncation to a per-sample
interval (z_s above z_l + Δz) exact.
"""

from __future__ import annotations

import math

import torch

from sbi_lens.config import (
    ComovingVolumeDist,
    TruncatedNormalDist,
    UniformDist,
    VelocityDispersionFunctionDist,
)
from sbi_lens.cosmology import DistanceTable

__all__ = [
    "Component1D",
    "TabulatedComponent",
    "TruncatedNormalComponent",
    "UniformComponent",
    "make_component",
]

_DTYPE = torch.float64


def _tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


class Component1D:
    """A 1-D density with cdf and inverse cdf, so it can be truncated per sample."""

    low: float
    high: float  # may be math.inf

    def log_density(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def cdf(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def icdf(self, q: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def truncated_log_prob(self, x, low, high) -> torch.Tensor:
        """log density of x under the component truncated to [low, high] (tensors)."""
        mass = (self.cdf(high) - self.cdf(low)).clamp_min(_tiny(_DTYPE))
        inside = (x >= low) & (x <= high)
        log_p = self.log_density(x) - torch.log(mass)
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))

    def truncated_sample(self, uniform, low, high) -> torch.Tensor:
        """Inverse-cdf draw from the component truncated to [low, high]."""
        c_low, c_high = self.cdf(low), self.cdf(high)
        return self.icdf(c_low + uniform * (c_high - c_low)).clamp(low, high)


class UniformComponent(Component1D):
    def __init__(self, low: float, high: float):
        self.low, self.high = float(low), float(high)

    def log_density(self, x):
        inside = (x >= self.low) & (x <= self.high)
        value = torch.full_like(x, -math.log(self.high - self.low))
        return torch.where(inside, value, torch.full_like(x, -math.inf))

    def cdf(self, x):
        return ((x - self.low) / (self.high - self.low)).clamp(0.0, 1.0)

    def icdf(self, q):
        return self.low + q * (self.high - self.low)


class TruncatedNormalComponent(Component1D):
    def __init__(self, mean: float, std: float, low: float, high: float | None):
        self.mean, self.std = float(mean), float(std)
        self.low = float(low)
        self.high = math.inf if high is None else float(high)
        normal = torch.distributions.Normal(torch.tensor(self.mean, dtype=_DTYPE), self.std)
        self._normal = normal
        self._c_low = float(normal.cdf(torch.tensor(self.low, dtype=_DTYPE)))
        self._c_high = float(normal.cdf(torch.tensor(self.high, dtype=_DTYPE)))
        if self._c_high - self._c_low < 1e-12:
            raise ValueError(
                f"truncated_normal: [{self.low}, {self.high}] holds no mass of "
                f"N({self.mean}, {self.std})"
            )

    def log_density(self, x):
        z = (x - self.mean) / self.std
        log_p = -0.5 * z * z - math.log(self.std * math.sqrt(2 * math.pi))
        log_p = log_p - math.log(self._c_high - self._c_low)
        inside = (x >= self.low) & (x <= self.high)
        return torch.where(inside, log_p, torch.full_like(x, -math.inf))

    def _phi(self, x):
        return 0.5 * (1 + torch.erf((x - self.mean) / (self.std * math.sqrt(2))))

    def cdf(self, x):
        return ((self._phi(x) - self._c_low) / (self._c_high - self._c_low)).clamp(0.0, 1.0)

    def icdf(self, q):
        p = self._c_low + q * (self._c_high - self._c_low)
        p = p.clamp(1e-300, 1 - 1e-16)
        return self.mean + self.std * math.sqrt(2) * torch.erfinv(2 * p - 1)


class TabulatedComponent(Component1D):
    """A density tabulated on a fine grid; piecewise-linear density, exact matching cdf."""

    def __init__(self, grid: torch.Tensor, density: torch.Tensor, device=None):
        grid = torch.as_tensor(grid, dtype=_DTYPE, device=device)
        density = torch.as_tensor(density, dtype=_DTYPE, device=device).clamp_min(0)
        step = grid[1:] - grid[:-1]
        cell_mass = 0.5 * (density[1:] + density[:-1]) * step
        total = cell_mass.sum()
        self._grid = grid
        self._density = density / total
        self._cdf = torch.cat(
            [torch.zeros(1, dtype=_DTYPE, device=device), torch.cumsum(cell_mass / total, 0)]
        )
        self.low, self.high = float(grid[0]), float(grid[-1])

    def _cell(self, x):
        index = torch.searchsorted(self._grid, x.contiguous(), right=True) - 1
        return index.clamp(0, self._grid.numel() - 2)

    def log_density(self, x):
        i = self._cell(x)
        x0, x1 = self._grid[i], self._grid[i + 1]
        t = ((x - x0) / (x1 - x0)).clamp(0, 1)
        value = self._density[i] * (1 - t) + self._density[i + 1] * t
        inside = (x >= self.low) & (x <= self.high)
        return torch.where(inside, torch.log(value), torch.full_like(x, -math.inf))

    def cdf(self, x):
        x = x.clamp(self.low, self.high)
        i = self._cell(x)
        x0 = self._grid[i]
        h = self._grid[i + 1] - x0
        d0, d1 = self._density[i], self._density[i + 1]
        s = x - x0
        # Integral of the linear density from x0 to x.
        return (self._cdf[i] + d0 * s + 0.5 * (d1 - d0) / h * s * s).clamp(0, 1)

    def icdf(self, q):
        q = q.clamp(0, 1)
        i = (torch.searchsorted(self._cdf, q.contiguous(), right=True) - 1).clamp(
            0, self._grid.numel() - 2
        )
        x0 = self._grid[i]
        h = self._grid[i + 1] - x0
        d0, d1 = self._density[i], self._density[i + 1]
        remaining = (q - self._cdf[i]).clamp_min(0)
        a = 0.5 * (d1 - d0) / h
        # Solve a s² + d0 s = remaining for s in [0, h], stably.
        disc = (d0 * d0 + 4 * a * remaining).clamp_min(0)
        s = 2 * remaining / (d0 + torch.sqrt(disc)).clamp_min(_tiny(_DTYPE))
        return (x0 + s.clamp(min=torch.zeros_like(h), max=h)).clamp(self.low, self.high)


def make_component(spec, table: DistanceTable, num_points: int = 4097, device=None) -> Component1D:
    """Build a 1-D component from its config model."""
    if isinstance(spec, UniformDist):
        return UniformComponent(spec.low, spec.high)
    if isinstance(spec, TruncatedNormalDist):
        return TruncatedNormalComponent(spec.mean, spec.std, spec.low, spec.high)
    grid = torch.linspace(spec.low, spec.high, num_points, dtype=_DTYPE)
    if isinstance(spec, ComovingVolumeDist):
        density = table.differential_comoving_volume(grid)
    elif isinstance(spec, VelocityDispersionFunctionDist):
        ratio = grid / spec.sigma_star
        density = ratio**spec.alpha * torch.exp(-(ratio**spec.beta)) / grid
    else:  # pragma: no cover - guarded by the config's discriminator
        raise ValueError(f"unknown distribution kind {spec!r}")
    return TabulatedComponent(grid, density, device=device)
