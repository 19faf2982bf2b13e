"""Cosmological distances and the singular-isothermal-sphere (SIS) relation.

Distances come from :mod:`astropy.cosmology`. Evaluating astropy per lens is slow
(an integral per call), so :class:`DistanceTable` tabulates the line-of-sight comoving
distance D_C(z) once, with its exact derivative D_H / E(z), and interpolates with
cubic Hermite polynomials: relative error below 1e-8 over z ≤ 10 for the default
grid, vectorised, on any torch device, differentiable.

Units: distances in Mpc, angles in arcsec, velocity dispersions in km/s.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from astropy import cosmology as astropy_cosmology
from astropy import units as u
from astropy.constants import c as speed_of_light

__all__ = [
    "DEFAULT_COSMOLOGY",
    "RAD_TO_ARCSEC",
    "SPEED_OF_LIGHT_KM_S",
    "DistanceTable",
    "distance_table",
    "einstein_radius",
    "get_cosmology",
]

SPEED_OF_LIGHT_KM_S = float(speed_of_light.to(u.km / u.s).value)
RAD_TO_ARCSEC = 180.0 / math.pi * 3600.0
DEFAULT_COSMOLOGY = "FlatLambdaCDM(H0=70, Om0=0.3)"


def get_cosmology(name: str = DEFAULT_COSMOLOGY) -> astropy_cosmology.Cosmology:
    """Return an astropy cosmology from a name.

    Args:
        name: one of astropy's realisations (``"Planck18"``, ``"WMAP9"``, ...) or
            ``"FlatLambdaCDM(H0=70, Om0=0.3)"`` with any H0 [km/s/Mpc] and Om0.

    Raises:
        ValueError: the name is neither a known realisation nor a parsable
            FlatLambdaCDM.
    """
    name = name.strip()
    if name in astropy_cosmology.realizations.available:
        return getattr(astropy_cosmology, name)
    if name.startswith("FlatLambdaCDM(") and name.endswith(")"):
        kwargs = {}
        for item in name[len("FlatLambdaCDM(") : -1].split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in ("H0", "Om0", "Tcmb0", "Ob0"):
                raise ValueError(f"cosmology: unknown FlatLambdaCDM parameter {key!r} in {name!r}")
            kwargs[key] = float(value)
        if "H0" not in kwargs or "Om0" not in kwargs:
            raise ValueError(f"cosmology: {name!r} must give both H0 and Om0")
        return astropy_cosmology.FlatLambdaCDM(**kwargs)
    known = ", ".join(astropy_cosmology.realizations.available)
    raise ValueError(
        f"cosmology: unknown name {name!r}; expected one of {known} "
        "or 'FlatLambdaCDM(H0=..., Om0=...)'"
    )


class DistanceTable:
    """Fast, vectorised distances of one astropy cosmology.

    Args:
        cosmology: an astropy cosmology, or its name (see :func:`get_cosmology`).
        z_max: largest redshift tabulated.
        num_points: number of grid nodes on [0, z_max].
    """

    def __init__(
        self,
        cosmology: astropy_cosmology.Cosmology | str = DEFAULT_COSMOLOGY,
        z_max: float = 10.0,
        num_points: int = 2049,
    ):
        if isinstance(cosmology, str):
            cosmology = get_cosmology(cosmology)
        self.cosmology = cosmology
        self.z_max = float(z_max)
        grid = np.linspace(0.0, self.z_max, num_points)
        hubble_distance = float((speed_of_light / cosmology.H0).to(u.Mpc).value)
        self._step = grid[1] - grid[0]
        self._comoving = torch.as_tensor(
            cosmology.comoving_distance(grid).to(u.Mpc).value, dtype=torch.float64
        )
        self._slope = torch.as_tensor(
            hubble_distance * cosmology.inv_efunc(grid), dtype=torch.float64
        )
        self._hubble_distance = hubble_distance
        self._omega_k = float(cosmology.Ok0)

    # ---- interpolation -------------------------------------------------
    def comoving_distance(self, z: torch.Tensor) -> torch.Tensor:
        """Line-of-sight comoving distance D_C(z) [Mpc] for redshifts ``z`` (any shape)."""
        z = torch.as_tensor(z)
        if torch.any(z < 0) or torch.any(z > self.z_max):
            raise ValueError(f"redshift outside the tabulated range [0, {self.z_max}]")
        dtype = z.dtype if z.is_floating_point() else torch.float64
        z64 = z.to(torch.float64)
        values = self._comoving.to(z64.device)
        slopes = self._slope.to(z64.device)
        position = z64 / self._step
        index = torch.clamp(position.floor().long(), 0, values.numel() - 2)
        t = position - index
        h = self._step
        # Cubic Hermite basis on [x_i, x_{i+1}] with exact end-point derivatives.
        t2, t3 = t * t, t * t * t
        h00 = 2 * t3 - 3 * t2 + 1
        h10 = t3 - 2 * t2 + t
        h01 = -2 * t3 + 3 * t2
        h11 = t3 - t2
        out = (
            h00 * values[index]
            + h10 * h * slopes[index]
            + h01 * values[index + 1]
            + h11 * h * slopes[index + 1]
        )
        return out.to(dtype)

    def _transverse(self, comoving: torch.Tensor) -> torch.Tensor:
        """Transverse comoving distance for a line-of-sight comoving distance [Mpc]."""
        if abs(self._omega_k) < 1e-12:
            return comoving
        scale = self._hubble_distance / math.sqrt(abs(self._omega_k))
        if self._omega_k > 0:
            return scale * torch.sinh(comoving / scale)
        return scale * torch.sin(comoving / scale)

    def angular_diameter_distance(self, z: torch.Tensor) -> torch.Tensor:
        """D_A(0, z) [Mpc]."""
        z = torch.as_tensor(z)
        return self._transverse(self.comoving_distance(z)) / (1 + z)

    def angular_diameter_distance_z1z2(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """D_A(z1, z2) [Mpc] between two redshifts, z2 > z1 (Hogg 1999, eq. 19)."""
        z1, z2 = torch.as_tensor(z1), torch.as_tensor(z2)
        d1, d2 = self.comoving_distance(z1), self.comoving_distance(z2)
        if abs(self._omega_k) < 1e-12:
            return (d2 - d1) / (1 + z2)
        dm1, dm2 = self._transverse(d1), self._transverse(d2)
        ok = self._omega_k
        dh = self._hubble_distance
        dm = dm2 * torch.sqrt(1 + ok * (dm1 / dh) ** 2) - dm1 * torch.sqrt(1 + ok * (dm2 / dh) ** 2)
        return dm / (1 + z2)

    def luminosity_distance(self, z: torch.Tensor) -> torch.Tensor:
        """D_L(z) [Mpc]."""
        z = torch.as_tensor(z)
        return self._transverse(self.comoving_distance(z)) * (1 + z)

    def distance_modulus(self, z: torch.Tensor) -> torch.Tensor:
        """Distance modulus μ(z) = 5 log10(D_L / 10 pc) [mag]."""
        return 5.0 * torch.log10(self.luminosity_distance(z)) + 25.0

    def lensing_ratio(self, z_lens: torch.Tensor, z_source: torch.Tensor) -> torch.Tensor:
        """D_ls / D_s, the lensing efficiency (dimensionless), for z_source > z_lens."""
        return self.angular_diameter_distance_z1z2(z_lens, z_source) / (
            self.angular_diameter_distance(z_source)
        )

    def differential_comoving_volume(self, z: torch.Tensor) -> torch.Tensor:
        """dV_c / dz / dΩ [Mpc³ sr⁻¹] (Hogg 1999, eq. 28)."""
        z = torch.as_tensor(z, dtype=torch.float64)
        dm = self._transverse(self.comoving_distance(z))
        e_inv = torch.as_tensor(self.cosmology.inv_efunc(z.cpu().numpy()), dtype=torch.float64)
        return self._hubble_distance * dm**2 * e_inv.to(z.device)

    def einstein_radius_sis(
        self,
        sigma_v: torch.Tensor,
        z_lens: torch.Tensor,
        z_source: torch.Tensor,
    ) -> torch.Tensor:
        """Einstein radius of a singular isothermal sphere.

        θ_E = 4π (σ_v / c)² D_ls / D_s.

        Args:
            sigma_v: velocity dispersion [km/s], any shape broadcastable with the redshifts.
            z_lens: lens redshift.
            z_source: source redshift (> z_lens).

        Returns:
            θ_E [arcsec], broadcast shape.
        """
        sigma_v = torch.as_tensor(sigma_v)
        ratio = self.lensing_ratio(z_lens, z_source)
        theta = 4 * math.pi * (sigma_v / SPEED_OF_LIGHT_KM_S) ** 2 * ratio * RAD_TO_ARCSEC
        return theta.to(sigma_v.dtype if sigma_v.is_floating_point() else torch.float64)


@lru_cache(maxsize=8)
def distance_table(name: str = DEFAULT_COSMOLOGY) -> DistanceTable:
    """A cached :class:`DistanceTable` for a cosmology name."""
    return DistanceTable(name)


def einstein_radius(
    sigma_v: torch.Tensor,
    z_lens: torch.Tensor,
    z_source: torch.Tensor,
    scatter: torch.Tensor | float = 1.0,
    cosmology: str = DEFAULT_COSMOLOGY,
) -> torch.Tensor:
    """Einstein radius θ_E = f² · 4π (σ_v/c)² D_ls/D_s [arcsec].

    Args:
        sigma_v: velocity dispersion [km/s].
        z_lens: lens redshift.
        z_source: source redshift (> z_lens).
        scatter: the factor f relating the SIS velocity dispersion to the measured
            stellar one (SLACS: mean ≈ 1.0, rms ≈ 0.065; Bolton et al. 2008).
        cosmology: cosmology name, see :func:`get_cosmology`.
    """
    table = distance_table(cosmology)
    return torch.as_tensor(scatter) ** 2 * table.einstein_radius_sis(sigma_v, z_lens, z_source)
