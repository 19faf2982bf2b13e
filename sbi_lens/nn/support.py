"""The data-side front of the flow: the prior's support bijection and standardisation.

θ ─► biject_to(prior.support)⁻¹ ─► z-score: the flow then works in ℝᴰ, so its samples
map back inside the support and nothing is ever rejected.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.distributions import Transform, biject_to

from sbi_lens.compat import reset_cached_inverse

_Z_SCORE_OPTIONS = ("independent", "structured", "transform_to_unconstrained", "none", None)


# --------------------------------------------------------------------------------------
# Support bijection
# --------------------------------------------------------------------------------------


def _move_transform(t: Transform, device: torch.device, dtype: torch.dtype) -> Transform:
    """Return a shallow copy of ``t`` whose tensor attributes live on device/dtype.

    torch ``Transform`` objects are not modules, so ``.to(device)`` does not reach
    the bounds they hold (e.g. the ``low``/``high`` of a box). Sub-transforms of
    composed / independent transforms are moved recursively.
    """
    t = copy.copy(t)
    for name, value in list(vars(t).items()):
        if isinstance(value, Tensor):
            moved = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
            setattr(t, name, moved)
        elif isinstance(value, Transform):
            setattr(t, name, _move_transform(value, device, dtype))
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], Transform):
            setattr(t, name, type(value)(_move_transform(v, device, dtype) for v in value))
    reset_cached_inverse(t)  # the cached inverse would still point to the old tensors
    return t


class SupportBijection(nn.Module):
    """Bijection T from ℝᴰ onto a prior's support, ``T = biject_to(prior.support)``.

    Holds the torch transform and keeps per-(device, dtype) copies of it, so the
    estimator can be moved with ``.to(device)`` like any module.

    Args:
        prior: A distribution with a ``support`` constraint for which
            ``torch.distributions.biject_to`` is registered, or ``None`` for the
            identity (unbounded parameters).
    """

    def __init__(self, prior=None) -> None:
        super().__init__()
        if prior is None:
            self.transform = None
        else:
            support = getattr(prior, "support", None)
            if support is None:
                raise ValueError(
                    f"prior of type {type(prior).__name__} has no `support`; pass a "
                    "torch Distribution (e.g. sbi's BoxUniform or sbi_lens.LensPrior) "
                    "or prior=None for an unbounded parameter space."
                )
            try:
                transform = biject_to(support)
            except NotImplementedError as err:
                raise ValueError(
                    f"no bijection registered for the prior's support {support!r}; "
                    "register one with torch.distributions.biject_to.register."
                ) from err
            self.transform = None if _is_identity(transform) else transform
        self._copies: dict = {}

    @property
    def is_identity(self) -> bool:
        """Whether the bijection is the identity (unbounded support)."""
        return self.transform is None

    def _get(self, like: Tensor) -> Transform:
        key = (like.device, like.dtype)
        if key not in self._copies:
            self._copies[key] = _move_transform(self.transform, like.device, like.dtype)
        return self._copies[key]

    def to_unconstrained(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Map θ from the support to ℝᴰ.

        Args:
            theta: Parameters inside the support, shape ``(*, D)``.

        Returns:
            ``u = T⁻¹(θ)`` of shape ``(*, D)`` and ``log|det ∂u/∂θ|`` of shape ``(*)``.
        """
        if self.transform is None:
            return theta, theta.new_zeros(theta.shape[:-1])
        t = self._get(theta)
        u = t.inv(theta)
        ladj = _sum_event(t.log_abs_det_jacobian(u, theta), theta)
        return u, -ladj

    def to_support(self, u: Tensor) -> Tensor:
        """Map ``u`` of shape ``(*, D)`` from ℝᴰ into the support, ``θ = T(u)``."""
        if self.transform is None:
            return u
        return self._get(u)(u)

    def to_support_and_ladj(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``u`` ``(*, D)`` into the support: ``θ = T(u)`` and ``log|det ∂θ/∂u|`` ``(*)``."""
        if self.transform is None:
            return u, u.new_zeros(u.shape[:-1])
        t = self._get(u)
        theta = t(u)
        return theta, _sum_event(t.log_abs_det_jacobian(u, theta), u)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_copies"] = {}  # device copies are rebuilt lazily
        return state


def _is_identity(t: Transform) -> bool:
    if isinstance(t, torch.distributions.transforms.IndependentTransform):
        return _is_identity(t.base_transform)
    if isinstance(t, torch.distributions.transforms.ComposeTransform):
        return all(_is_identity(p) for p in t.parts)
    return t == torch.distributions.transforms.identity_transform


def _sum_event(ladj: Tensor, theta: Tensor) -> Tensor:
    """Sum a log-det that a transform with ``event_dim=0`` returned per element."""
    if ladj.dim() == theta.dim():
        ladj = ladj.sum(-1)
    return ladj.expand(theta.shape[:-1])


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


class Standardize(nn.Module):
    """Fixed affine map ``(v - shift) / scale``; statistics are buffers.

    Args:
        shift: Shape ``(*event_shape)`` or broadcastable to it.
        scale: Same shape as ``shift``, strictly positive.
    """

    def __init__(self, shift: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, v: Tensor) -> Tensor:
        return (v - self.shift) / self.scale

    def inverse(self, v: Tensor) -> Tensor:
        return v * self.scale + self.shift

    def log_abs_det(self) -> Tensor:
        """``log|det|`` of the forward map (a scalar, for one event)."""
        return -self.scale.log().expand(self.shift.shape).sum()


def _z_score_stats(v: Tensor, mode: str | None) -> tuple[Tensor, Tensor]:
    """Mean and std of ``v`` over its batch, per ``mode``; shapes ``v.shape[1:]``."""
    if mode not in _Z_SCORE_OPTIONS:
        raise ValueError(f"z-score mode must be one of {_Z_SCORE_OPTIONS}, got {mode!r}.")
    event = v.shape[1:]
    if mode in ("none", None) or v.shape[0] < 2:
        return v.new_zeros(event), v.new_ones(event)
    v = v[torch.isfinite(v.flatten(1)).all(dim=1)]
    if mode == "structured":
        mean, std = v.mean().expand(event), v.std().expand(event)
    else:
        mean, std = v.mean(dim=0), v.std(dim=0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.clone(), std.clone()
