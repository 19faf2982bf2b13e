"""Register the lens spline flow with sbi under a model name ("lens_nsf").

After :func:`register`, ``NPE(prior, density_estimator="lens_nsf")`` and
``posterior_nn("lens_nsf", embedding_net=...)`` build a :class:`~sbi_lens.nn.SplineFlow`.

sbi calls a named builder through ``posterior_nn``, which never sees the prior. The
support bijection therefore comes from the prior given to :func:`register`
(``register(prior=prior)``), or from a ``prior=`` keyword given to ``posterior_nn``
(sbi warns about the unknown keyword but forwards it). Without either, the flow is
unbounded (identity bijection) and sbi's rejection step keeps samples in the support.
Prefer the explicit route, ``NPE(prior, density_estimator=spline_flow(prior=prior))``.

This uses an internal of sbi (``sbi.neural_nets.factory.model_builders``, reached
through :mod:`sbi_lens.compat`); if sbi changes it, :func:`register` raises a
``RuntimeError`` saying so.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from sbi_lens.compat import sbi_model_builders
from sbi_lens.nn.flow import SplineFlow, spline_flow

__all__ = ["NAME", "register", "unregister"]

NAME = "lens_nsf"

# Keywords that sbi's posterior_nn always forwards (its own defaults included).
_SBI_KEYWORDS = (
    "z_score_x",
    "z_score_y",
    "hidden_features",
    "num_transforms",
    "num_bins",
    "embedding_net",
    "num_components",
)


def _make_builder(prior, defaults: dict) -> Callable[..., SplineFlow]:
    """An sbi-style builder ``(batch_x=θ, batch_y=x, **sbi_kwargs) -> SplineFlow``."""

    def build_lens_nsf(
        batch_x: Tensor,
        batch_y: Tensor,
        z_score_x: str | None = "independent",
        z_score_y: str | None = "independent",
        hidden_features: int = 128,
        num_transforms: int = 5,
        num_bins: int = 8,
        embedding_net: nn.Module | None = None,
        num_components: int | None = None,  # mixture models only; ignored
        **kwargs,
    ) -> SplineFlow:
        # In sbi's builders batch_x is θ (the modelled variable) and batch_y is x.
        options = {**defaults, **kwargs}
        if isinstance(embedding_net, nn.Identity):
            embedding_net = None
        # sbi's default "independent" z-scoring of x means "the usual thing": let
        # spline_flow pick (fit LensResNet scaling, or z-score vector x).
        if z_score_y == "independent":
            z_score_y = "auto"
        return spline_flow(
            prior=options.pop("prior", prior),
            num_blocks=num_transforms,
            hidden_features=hidden_features,
            num_bins=num_bins,
            embedding_net=embedding_net,
            z_score_theta=z_score_x,
            z_score_x=z_score_y,
            **options,
        )(batch_x, batch_y)

    build_lens_nsf.sbi_lens = True  # marks builders this module may replace
    return build_lens_nsf


def register(prior=None, name: str = NAME, overwrite: bool = False, **defaults) -> Callable:
    """Make ``density_estimator=name`` build a :class:`~sbi_lens.nn.SplineFlow` in sbi.

    sbi passes ``hidden_features`` (default 50), ``num_transforms`` (5) and
    ``num_bins`` (10) from ``posterior_nn``; they become the flow's width, number of
    blocks and bins. Other :func:`~sbi_lens.nn.spline_flow` options (e.g.
    ``num_residual_blocks``, ``seed``) can be fixed here as ``defaults``.

    Args:
        prior: Prior whose support bijection the flow uses (``None``: identity).
        name: Model name to register.
        overwrite: Replace a builder of that name that sbi_lens did not register.
        **defaults: Further ``spline_flow`` keyword arguments.

    Returns:
        The registered builder.

    Raises:
        RuntimeError: If sbi no longer exposes its builder table.
        ValueError: If ``name`` is taken by another builder and ``overwrite`` is False.
    """
    builders = sbi_model_builders()
    existing = builders.get(name)
    if existing is not None and not getattr(existing, "sbi_lens", False) and not overwrite:
        raise ValueError(
            f"sbi already has a density estimator called {name!r}; pass overwrite=True "
            "or another name."
        )
    builder = _make_builder(prior, defaults)
    builders[name] = builder
    return builder


def unregister(name: str = NAME) -> None:
    """Remove a builder that :func:`register` added (no-op if absent)."""
    builders = sbi_model_builders()
    if getattr(builders.get(name), "sbi_lens", False):
        del builders[name]
