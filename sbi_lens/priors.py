"""The prior over θ = (z_lens, z_source, theta_E [arcsec], sigma_v [km/s]).

θ_E is not an independent parameter: it follows from σ_v and the redshifts through
the SIS relation θ_E = f² θ_SIS(σ_v, z_l, z_s), with a scatter factor f ~ N(1, 0.065)
(SLACS, Bolton et al. 2008). The joint density is therefore

    p(θ) = p(z_l) p(z_s | z_l) p(σ_v) p(θ_E | σ_v, z_l, z_s) · 1[θ_E ∈ W] / Z_W,

where z_s | z_l is truncated to z_s > z_l + Δz, W is the optional θ_E acceptance window
and Z_W the probability of the window under the unrestricted prior.

The support is a "box with a sliding floor" (z_s above z_l + Δz). It is exposed as a
torch constraint, and :func:`torch.distributions.biject_to` maps ℝ⁴ onto it, so flows
and MCMC samplers work in an unconstrained space without leakage.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, Transform, biject_to, constraints

from sbi_lens.config import PriorConfig
from sbi_lens.cosmology import distance_table
from sbi_lens.density1d import make_component
from sbi_lens.parameters import (
    PARAMETER_NAMES,
    SIGMA_V,
    THETA_E,
    Z_LENS,
    Z_SOURCE,
    ThetaColumns,
    parameter,
    stack_theta,
    theta_columns,
)

__all__ = ["LensPrior", "LensSupport", "LensSupportTransform"]

_DTYPE = torch.float64


# ------------------------------------------------------------------ support and bijection
class LensSupport(constraints.Constraint):
    """{z_l ∈ [a, b], z_s ∈ [max(c, z_l + Δz), d], θ_E ∈ [e, f], σ_v ∈ [g, h]} (event_dim 1).

    Upper bounds may be +∞ (for θ_E without a window, σ_v or z_s without an upper bound).
    """

    event_dim = 1

    def __init__(self, bounds: torch.Tensor, min_separation: float):
        self.bounds = bounds  # (4, 2) float64: lower, upper per parameter, in θ order
        self.min_separation = float(min_separation)

    def interval(self, name: str) -> tuple[float, float]:
        """(lower, upper) bound of the parameter ``name`` (upper may be +∞)."""
        row = self.bounds[parameter(name).index]
        return float(row[0]), float(row[1])

    def z_source_floor(self, z_lens: torch.Tensor) -> torch.Tensor:
        """Lowest allowed z_source for a given z_lens."""
        return torch.clamp(z_lens + self.min_separation, min=self.interval(Z_SOURCE.name)[0])

    def check(self, value: torch.Tensor) -> torch.Tensor:
        bounds = self.bounds.to(value.device, value.dtype)
        inside = (value >= bounds[:, 0]) & (value <= bounds[:, 1])
        theta = theta_columns(value)
        above_floor = theta.z_source > theta.z_lens + self.min_separation - 1e-6
        return inside.all(-1) & above_floor

    def __repr__(self) -> str:
        return f"LensSupport(bounds={self.bounds.tolist()}, min_separation={self.min_separation})"


def _unit_to_interval(u, low, high):
    """Map ℝ to (low, high) (sigmoid) or (low, ∞) (exp); returns value and log|d value/du|."""
    if math.isinf(high):
        return low + torch.exp(u), u
    s = torch.sigmoid(u)
    return low + (high - low) * s, math.log(high - low) + torch.nn.functional.logsigmoid(
        u
    ) + torch.nn.functional.logsigmoid(-u)


def _interval_to_unit(x, low, high):
    finfo = torch.finfo(x.dtype)
    if isinstance(high, float) and math.isinf(high):
        return torch.log((x - low).clamp_min(finfo.tiny))
    p = ((x - low) / (high - low)).clamp(finfo.tiny, 1 - finfo.eps)
    return torch.log(p) - torch.log1p(-p)


class LensSupportTransform(Transform):
    """Bijection ℝ⁴ → :class:`LensSupport`; z_s is placed between its sliding floor and cap."""

    domain = constraints.real_vector
    bijective = True

    def __init__(self, support: LensSupport, cache_size: int = 0):
        super().__init__(cache_size=cache_size)
        self.support = support

    @property
    def codomain(self):  # type: ignore[override]
        return self.support

    def __eq__(self, other):
        return isinstance(other, LensSupportTransform) and other.support is self.support

    def _forward_with_logdet(self, u: torch.Tensor):
        interval = self.support.interval
        u = theta_columns(u)
        z_lens, ld_zl = _unit_to_interval(u.z_lens, *interval(Z_LENS.name))
        floor = self.support.z_source_floor(z_lens)
        zs_hi = interval(Z_SOURCE.name)[1]
        if math.isinf(zs_hi):
            z_source, ld_zs = floor + torch.exp(u.z_source), u.z_source
        else:
            width = zs_hi - floor
            z_source = floor + width * torch.sigmoid(u.z_source)
            ld_zs = (
                torch.log(width)
                + torch.nn.functional.logsigmoid(u.z_source)
                + torch.nn.functional.logsigmoid(-u.z_source)
            )
        theta_e, ld_te = _unit_to_interval(u.theta_E, *interval(THETA_E.name))
        sigma_v, ld_sv = _unit_to_interval(u.sigma_v, *interval(SIGMA_V.name))
        value = stack_theta(ThetaColumns(z_lens, z_source, theta_e, sigma_v))
        return value, ld_zl + ld_zs + ld_te + ld_sv

    def _call(self, u):
        return self._forward_with_logdet(u)[0]

    def _inverse(self, value):
        interval = self.support.interval
        theta = theta_columns(value)
        floor = self.support.z_source_floor(theta.z_lens)
        zs_hi = interval(Z_SOURCE.name)[1]
        finfo = torch.finfo(value.dtype)
        if math.isinf(zs_hi):
            u_zs = torch.log((theta.z_source - floor).clamp_min(finfo.tiny))
        else:
            p = ((theta.z_source - floor) / (zs_hi - floor)).clamp(finfo.tiny, 1 - finfo.eps)
            u_zs = torch.log(p) - torch.log1p(-p)
        return stack_theta(
            ThetaColumns(
                z_lens=_interval_to_unit(theta.z_lens, *interval(Z_LENS.name)),
                z_source=u_zs,
                theta_E=_interval_to_unit(theta.theta_E, *interval(THETA_E.name)),
                sigma_v=_interval_to_unit(theta.sigma_v, *interval(SIGMA_V.name)),
            )
        )

    def log_abs_det_jacobian(self, u, value):
        return self._forward_with_logdet(u)[1]

    def forward_shape(self, shape):
        return shape

    def inverse_shape(self, shape):
        return shape


@biject_to.register(LensSupport)
def _biject_to_lens_support(constraint: LensSupport) -> Transform:
    return LensSupportTransform(constraint)


# ------------------------------------------------------------------ the prior
class LensPrior(Distribution):
    """Physically tied prior over θ = (z_lens, z_source, theta_E [arcsec], sigma_v [km/s]).

    Args:
        config: the prior's settings (defaults: the ``lsst_gri`` reference prior).
        device: torch device on which samples and log-probabilities live.
        window_samples: log2 of the quasi-Monte-Carlo points used for the window's
            normalising constant Z_W (2^16 gives ~1e-4 relative accuracy).

    Example:
        >>> prior = LensPrior()
        >>> theta = prior.sample((1000,))          # (1000, 4) float32
        >>> log_p = prior.log_prob(theta)          # (1000,)
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        config: PriorConfig | None = None,
        device: str | torch.device = "cpu",
        window_samples: int = 16,
    ):
        self.config = config or PriorConfig()
        self.device = torch.device(device)
        self.table = distance_table(self.config.cosmology)
        cfg = self.config
        self._z_lens = make_component(cfg.z_lens, self.table)
        self._z_source = make_component(cfg.z_source, self.table)
        self._sigma_v = make_component(cfg.sigma_v, self.table)
        self._f_mean, self._f_std = cfg.scatter.mean, cfg.scatter.std
        # f is truncated to f > 0: θ_E = f² θ_SIS must be a one-to-one function of f.
        self._log_f_mass = math.log(
            0.5 * (1 + math.erf(self._f_mean / (self._f_std * math.sqrt(2))))
        )
        window = cfg.theta_E_window or (0.0, math.inf)
        intervals = ThetaColumns(
            z_lens=(self._z_lens.low, self._z_lens.high),
            z_source=(
                max(self._z_source.low, self._z_lens.low + cfg.min_separation),
                self._z_source.high,
            ),
            theta_E=(window[0], window[1]),
            sigma_v=(self._sigma_v.low, self._sigma_v.high),
        )
        bounds = torch.tensor([list(pair) for pair in intervals], dtype=_DTYPE)
        self._support = LensSupport(bounds, cfg.min_separation)
        self._log_window_mass = (
            0.0 if cfg.theta_E_window is None else math.log(self._window_mass(window_samples))
        )
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([4]), validate_args=False)

    # --- torch Distribution API -------------------------------------------------
    @property
    def support(self) -> LensSupport:  # type: ignore[override]
        return self._support

    @property
    def mean(self) -> torch.Tensor:
        return self._moments()[0]

    @property
    def variance(self) -> torch.Tensor:
        return self._moments()[1]

    def sample(
        self,
        sample_shape: torch.Size | tuple = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw θ of shape (*sample_shape, 4), float32, on the prior's device.

        Args:
            sample_shape: leading shape of the draws.
            generator: optional torch generator (CPU) for reproducible draws.
        """
        shape = torch.Size(sample_shape)
        n = int(math.prod(shape))
        out = torch.empty(n, len(PARAMETER_NAMES), dtype=_DTYPE)
        filled = 0
        while filled < n:
            need = n - filled
            batch = self._draw_unrestricted(max(need + need // 2 + 16, 64), generator)
            keep = batch[self._in_window(theta_columns(batch).theta_E)][:need]
            out[filled : filled + len(keep)] = keep
            filled += len(keep)
        return out.reshape(*shape, 4).to(device=self.device, dtype=torch.float32)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Normalised log-density of θ (shape (..., 4)) → (...); -inf outside the support."""
        value64 = value.to(device="cpu", dtype=_DTYPE)
        z_lens, z_source, theta_e, sigma_v = theta_columns(value64)
        inside = self._support.check(value64)
        # Evaluate the pieces at safe points, then mask: keeps NaNs out of the result.
        zl = z_lens.clamp(self._z_lens.low, self._z_lens.high)
        floor = self._support.z_source_floor(zl)
        zs = torch.maximum(z_source, floor + 1e-9).clamp(max=self.table.z_max)
        sv = sigma_v.clamp_min(1e-3)
        te = theta_e.clamp_min(1e-9)
        log_p = (
            self._z_lens.log_density(zl)
            + self._z_source.truncated_log_prob(zs, floor, torch.full_like(zs, self._z_source.high))
            + self._sigma_v.log_density(sv)
            + self._log_theta_e_given(te, sv, zl, zs)
            - self._log_window_mass
        )
        log_p = torch.where(inside, log_p, torch.full_like(log_p, -math.inf))
        return log_p.to(
            device=value.device, dtype=value.dtype if value.is_floating_point() else torch.float32
        )

    # --- pieces --------------------------------------------------------------------
    def theta_sis(self, sigma_v, z_lens, z_source) -> torch.Tensor:
        """SIS Einstein radius [arcsec] for σ_v [km/s] and redshifts (f = 1)."""
        return self.table.einstein_radius_sis(sigma_v, z_lens, z_source)

    def _log_theta_e_given(self, theta_e, sigma_v, z_lens, z_source):
        """log p(θ_E | σ_v, z_l, z_s) with θ_E = f² θ_SIS, f ~ N(μ, s) truncated to f > 0."""
        theta_sis = self.theta_sis(sigma_v, z_lens, z_source)
        f = torch.sqrt(theta_e / theta_sis)
        log_normal = -0.5 * ((f - self._f_mean) / self._f_std) ** 2 - math.log(
            self._f_std * math.sqrt(2 * math.pi)
        )
        # |df/dθ_E| = 1 / (2 sqrt(θ_E θ_SIS)).
        return log_normal - self._log_f_mass - torch.log(2 * torch.sqrt(theta_e * theta_sis))

    def _draw_unrestricted(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        uniforms = torch.rand(n, 3, dtype=_DTYPE, generator=generator)
        normals = torch.randn(n, dtype=_DTYPE, generator=generator)
        z_lens = self._z_lens.icdf(uniforms[:, 0])
        floor = self._support.z_source_floor(z_lens)
        z_source = self._z_source.truncated_sample(
            uniforms[:, 1], floor, torch.full_like(floor, self._z_source.high)
        )
        sigma_v = self._sigma_v.icdf(uniforms[:, 2])
        f = self._f_mean + self._f_std * normals
        theta_e = f.clamp_min(0) ** 2 * self.theta_sis(sigma_v, z_lens, z_source)
        valid = f > 0
        return stack_theta(ThetaColumns(z_lens, z_source, theta_e, sigma_v))[valid]

    def _in_window(self, theta_e: torch.Tensor) -> torch.Tensor:
        window = self.config.theta_E_window
        if window is None:
            return torch.ones_like(theta_e, dtype=torch.bool)
        return (theta_e >= window[0]) & (theta_e <= window[1])

    def _window_mass(self, log2_points: int) -> float:
        """Z_W = E_{z_l, z_s, σ_v}[P(f² θ_SIS ∈ W)], by scrambled Sobol quadrature."""
        engine = torch.quasirandom.SobolEngine(3, scramble=True, seed=0)
        u = engine.draw(2**log2_points, dtype=_DTYPE).clamp(1e-12, 1 - 1e-12)
        z_lens = self._z_lens.icdf(u[:, 0])
        floor = self._support.z_source_floor(z_lens)
        z_source = self._z_source.truncated_sample(
            u[:, 1], floor, torch.full_like(floor, self._z_source.high)
        )
        sigma_v = self._sigma_v.icdf(u[:, 2])
        theta_sis = self.theta_sis(sigma_v, z_lens, z_source)
        low, high = self.config.theta_E_window
        normal = torch.distributions.Normal(
            torch.tensor(self._f_mean, dtype=_DTYPE), torch.tensor(self._f_std, dtype=_DTYPE)
        )
        f_low, f_high = torch.sqrt(low / theta_sis), torch.sqrt(high / theta_sis)
        mass = (normal.cdf(f_high) - normal.cdf(f_low)) / math.exp(self._log_f_mass)
        value = float(mass.mean())
        if value < 1e-6:
            raise ValueError(
                f"theta_E_window {self.config.theta_E_window}: the prior puts almost no mass "
                f"(≈{value:.1e}) in the window; widen it or change sigma_v / redshift ranges"
            )
        return value

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not hasattr(self, "_cached_moments"):
            draws = self.sample((20000,), generator=torch.Generator().manual_seed(0)).double()
            self._cached_moments = (draws.mean(0).float(), draws.var(0).float())
        mean, var = self._cached_moments
        return mean.to(self.device), var.to(self.device)

    @property
    def window_acceptance(self) -> float:
        """Fraction of unrestricted draws that land in the θ_E window (Z_W)."""
        return math.exp(self._log_window_mass)

    def __repr__(self) -> str:
        return f"LensPrior(device={self.device}, support={self._support})"
