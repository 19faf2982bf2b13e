"""The blocks of the spline flow: residual conditioner, spline coupling, LU block.

Each block maps data → base in ``forward`` (with ``log|det|``) and base → data in
``inverse_and_ladj`` (with the inverse's ``log|det|``), so samples and their density
come out of one sampling pass. Splines, LU-linear maps and permutations are zuko
transforms; this module only composes them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from zuko.transforms import LULinearTransform, MonotonicRQSTransform, PermutationTransform

__all__ = ["FlowBlock", "ResidualConditioner", "SplineCoupling"]


class ResidualConditioner(nn.Module):
    """Residual MLP mapping (θ_a, context) to spline parameters.

    The context enters only through the first layer, so its contribution can be
    computed once per observation (:meth:`context_bias`) and broadcast over all
    samples drawn for that observation.

    Args:
        in_features: Dimension of the untouched half θ_a.
        context_features: Dimension of the image embedding.
        out_features: Number of spline parameters produced.
        hidden_features: Width H of the residual blocks.
        num_residual_blocks: Number of pre-activation residual blocks.
        activation: Activation module class.
    """

    def __init__(
        self,
        in_features: int,
        context_features: int,
        out_features: int,
        hidden_features: int = 128,
        num_residual_blocks: int = 1,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        # With D = 1 there is no untouched half: the context alone sets the spline.
        self.input_layer = (
            nn.Linear(in_features, hidden_features, bias=False) if in_features > 0 else None
        )
        self.context_layer = nn.Linear(context_features, hidden_features)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                activation(),
                nn.Linear(hidden_features, hidden_features),
                activation(),
                nn.Linear(hidden_features, hidden_features),
            )
            for _ in range(num_residual_blocks)
        )
        self.output_layer = nn.Sequential(activation(), nn.Linear(hidden_features, out_features))
        # Zero output: every spline starts as the identity, so training starts from
        # the (standardised) base distribution instead of a random warp.
        nn.init.zeros_(self.output_layer[-1].weight)
        nn.init.zeros_(self.output_layer[-1].bias)
        for block in self.blocks:  # residual branches start small
            nn.init.uniform_(block[-1].weight, -1e-3, 1e-3)
            nn.init.zeros_(block[-1].bias)

    def context_bias(self, context: Tensor) -> Tensor:
        """First-layer contribution of the context, shape ``(*, H)``."""
        return self.context_layer(context)

    def forward(self, theta_a: Tensor, context_bias: Tensor) -> Tensor:
        """Spline parameters.

        Args:
            theta_a: Conditioning half, shape ``(*, d_a)``.
            context_bias: Output of :meth:`context_bias`, broadcastable to ``(*, H)``.

        Returns:
            Parameters of shape ``(*, out_features)``.
        """
        h = context_bias if self.input_layer is None else self.input_layer(theta_a) + context_bias
        if h.shape[:-1] != theta_a.shape[:-1]:
            h = h.expand(*theta_a.shape[:-1], h.shape[-1])
        for block in self.blocks:
            h = h + block(h)
        return self.output_layer(h)


class SplineCoupling(nn.Module):
    """Rational-quadratic spline coupling: ``y_b = RQS(x_b; φ(x_a, c))``, ``y_a = x_a``.

    The spline is zuko's :class:`~zuko.transforms.MonotonicRQSTransform` (identity
    outside ``[-bound, bound]``).

    Args:
        features: Dimension D of θ.
        context_features: Dimension of the image embedding.
        num_bins: Number of spline bins K.
        hidden_features: Width of the residual conditioner.
        num_residual_blocks: Depth of the residual conditioner.
        bound: Spline (co)domain bound B.
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        num_bins: int = 8,
        hidden_features: int = 128,
        num_residual_blocks: int = 1,
        bound: float = 5.0,
    ) -> None:
        super().__init__()
        self.split = features // 2  # D = 1 leaves x_a empty: context-only conditioner
        self.num_bins = num_bins
        self.bound = bound
        self.conditioner = ResidualConditioner(
            self.split,
            context_features,
            (features - self.split) * (3 * num_bins - 1),
            hidden_features,
            num_residual_blocks,
        )

    def _spline(self, x_a: Tensor, context_bias: Tensor) -> MonotonicRQSTransform:
        phi = self.conditioner(x_a, context_bias)
        phi = phi.unflatten(-1, (-1, 3 * self.num_bins - 1))
        k = self.num_bins
        return MonotonicRQSTransform(
            phi[..., :k], phi[..., k : 2 * k], phi[..., 2 * k :], bound=self.bound
        )

    def forward(self, x: Tensor, context_bias: Tensor) -> tuple[Tensor, Tensor]:
        """Data → base direction. Returns ``y`` ``(*, D)`` and ``log|det|`` ``(*)``."""
        x_a, x_b = x[..., : self.split], x[..., self.split :]
        y_b, ladj = self._spline(x_a, context_bias).call_and_ladj(x_b)
        return torch.cat((x_a, y_b), dim=-1), ladj.sum(-1)

    def inverse(self, y: Tensor, context_bias: Tensor) -> Tensor:
        """Base → data direction, ``(*, D) -> (*, D)``."""
        y_a, y_b = y[..., : self.split], y[..., self.split :]
        x_b = self._spline(y_a, context_bias).inv(y_b)
        return torch.cat((y_a, x_b), dim=-1)

    def inverse_and_ladj(self, y: Tensor, context_bias: Tensor) -> tuple[Tensor, Tensor]:
        """Base → data, with ``log|det ∂x/∂y|``: ``(*, D)`` → ``(*, D)``, ``(*)``.

        The conditioner (the costly part) runs once; the spline's log-det comes from
        zuko's forward ``call_and_ladj`` at the recovered ``x_b``, negated.
        """
        y_a, y_b = y[..., : self.split], y[..., self.split :]
        spline = self._spline(y_a, context_bias)
        x_b = spline.inv(y_b)
        _, ladj = spline.call_and_ladj(x_b)
        return torch.cat((y_a, x_b), dim=-1), -ladj.sum(-1)


class FlowBlock(nn.Module):
    """One block: random permutation → LU-linear → RQS coupling.

    Args:
        features: Dimension D of θ.
        context_features: Dimension of the image embedding.
        generator: Source of the random permutation.
        **coupling_kwargs: Passed to :class:`SplineCoupling`.
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        generator: torch.Generator | None = None,
        **coupling_kwargs,
    ) -> None:
        super().__init__()
        self.register_buffer("order", torch.randperm(features, generator=generator))
        # L (with diagonal) and U (unit diagonal) packed in one matrix, as zuko does.
        self.lu = nn.Parameter(torch.eye(features))
        self.coupling = SplineCoupling(features, context_features, **coupling_kwargs)

    def _linear(self) -> LULinearTransform:
        return LULinearTransform(self.lu)

    def forward(self, x: Tensor, context_bias: Tensor) -> tuple[Tensor, Tensor]:
        """Data → base. ``x`` ``(*, D)`` → ``(y, log|det|)`` with shapes ``(*, D)``, ``(*)``."""
        x = PermutationTransform(self.order)(x)
        linear = self._linear()
        y = linear(x)
        ladj = linear.log_abs_det_jacobian(x, y)
        y, ladj_c = self.coupling(y, context_bias)
        return y, ladj + ladj_c

    def _inverse_linear(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Undo LU-linear and permutation; returns x and the (constant) ``log|det|``."""
        # A 4×4 solve once, then one matmul for all samples: much faster than a
        # batched triangular solve over millions of rows.
        linear = self._linear()
        inv = torch.linalg.inv(linear.L @ linear.U)
        ladj = -torch.diagonal(linear.L).abs().log().sum()
        return PermutationTransform(self.order).inv(x @ inv.mT), ladj

    def inverse(self, y: Tensor, context_bias: Tensor) -> Tensor:
        """Base → data, ``(*, D) -> (*, D)``."""
        return self._inverse_linear(self.coupling.inverse(y, context_bias))[0]

    def inverse_and_ladj(self, y: Tensor, context_bias: Tensor) -> tuple[Tensor, Tensor]:
        """Base → data with ``log|det ∂x/∂y|``: ``(*, D)`` → ``(*, D)``, ``(*)``."""
        x, ladj = self.coupling.inverse_and_ladj(y, context_bias)
        x, ladj_linear = self._inverse_linear(x)
        return x, ladj + ladj_linear
