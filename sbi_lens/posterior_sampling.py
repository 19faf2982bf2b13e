"""Batched posterior draws (and their log-densities) for the diagnostics.

One pass where the estimator allows it: a :class:`~sbi_lens.nn.SplineFlow` returns
samples and their log-density together, so the joint HPD coverage costs no second
evaluation of the network. Other posteriors are sampled, then evaluated (two passes).

Shapes follow sbi's convention: samples ``(S, N, D)`` (sample, lens, parameter),
truths ``(N, D)``, observations ``(N, *event_shape)``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from sbi.inference import DirectPosterior
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
from torch import Tensor

from sbi_lens.compat import posterior_device
from sbi_lens.coverage import hpd_levels_from_log_prob

__all__ = [
    "PosteriorAccess",
    "draw_posterior_samples",
    "draw_samples_and_hpd_levels",
    "joint_hpd_levels",
    "seeded",
]


class PosteriorAccess:
    """Uniform batched sampling / log density for sbi posteriors and estimators.

    ``one_pass`` is True for an sbi ``ConditionalDensityEstimator`` and for a
    ``DirectPosterior`` whose estimator declares ``samples_in_support`` (its samples
    never leave the prior's support, so sbi's rejection step and leakage correction
    are no-ops and the estimator's density is the posterior's).
    """

    def __init__(self, posterior: Any):
        self.posterior = posterior
        self.is_estimator = isinstance(posterior, ConditionalDensityEstimator)
        if not self.is_estimator and not hasattr(posterior, "sample_batched"):
            raise ValueError(
                "posterior: expected an sbi posterior with `sample_batched` (e.g. "
                "DirectPosterior) or a ConditionalDensityEstimator, got "
                f"{type(posterior).__name__}"
            )
        self.estimator: ConditionalDensityEstimator | None = None
        if self.is_estimator:
            self.estimator = posterior
        elif isinstance(posterior, DirectPosterior):
            inner = posterior.posterior_estimator
            if getattr(inner, "samples_in_support", False):
                self.estimator = inner

    @property
    def one_pass(self) -> bool:
        """Whether samples and log-densities come from one call."""
        return self.estimator is not None

    @property
    def has_log_prob(self) -> bool:
        return self.is_estimator or hasattr(self.posterior, "log_prob_batched")

    def _to_device(self, t: Tensor) -> Tensor:
        """Moves a float32 copy of ``t`` to the posterior's device (GPU-trained models)."""
        if self.estimator is not None:
            param = next(self.estimator.parameters(), None)
            device = param.device if param is not None else None
        elif isinstance(self.posterior, NeuralPosterior):
            device = posterior_device(self.posterior)
        else:
            device = None
        return t.to(device=device, dtype=torch.float32)

    @torch.no_grad()
    def sample(self, num_samples: int, x: Tensor) -> Tensor:
        """Returns (S, B, D) samples for observations x of shape (B, ...)."""
        x = self._to_device(x)
        if self.is_estimator:
            self.posterior.eval()
            return self.posterior.sample(torch.Size((num_samples,)), condition=x)
        with warnings.catch_warnings():
            # sbi caps its internal batch for memory and says so every call; harmless here.
            warnings.filterwarnings("ignore", message="Capping max_sampling_batch_size")
            return self.posterior.sample_batched(
                torch.Size((num_samples,)), x=x, show_progress_bars=False
            )

    @torch.no_grad()
    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """Returns (S, B) log densities (up to a per-x constant) of theta (S, B, D)."""
        theta, x = self._to_device(theta), self._to_device(x)
        if self.is_estimator:
            self.posterior.eval()
            return self.posterior.log_prob(theta, condition=x)
        if isinstance(self.posterior, DirectPosterior):
            # Normalising adds a per-x constant, irrelevant for HPD ranks.
            return self.posterior.log_prob_batched(theta, x=x, norm_posterior=False)
        return self.posterior.log_prob_batched(theta, x=x)

    @torch.no_grad()
    def sample_and_log_prob(
        self, num_samples: int, x: Tensor, theta: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One pass: samples (S, B, D), their log q (S, B) and log q of the truths (B,)."""
        assert self.estimator is not None
        x = self._to_device(x)
        self.estimator.eval()
        samples, log_q = self.estimator.sample_and_log_prob(torch.Size((num_samples,)), condition=x)
        # Same x tensor: a SplineFlow reuses the embedding it just computed.
        log_true = self.estimator.log_prob(self._to_device(theta)[None], condition=x)[0]
        return samples, log_q, log_true


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Runs a block with torch's global RNG seeded, restoring its state afterwards.

    sbi's sampling and checks draw from the global RNG and take no generator.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_sizes(num_samples: int, batch_size: int) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples: expected a positive integer, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")


def _check_chunk(chunk: Tensor, num_samples: int, batch: int) -> Tensor:
    if chunk.ndim != 3 or chunk.shape[:2] != (num_samples, batch):
        raise ValueError(
            f"posterior samples: expected shape ({num_samples}, {batch}, D), "
            f"got {tuple(chunk.shape)}"
        )
    return chunk.detach().float().cpu()


def draw_posterior_samples(
    posterior: Any,
    x: Tensor,
    num_samples: int = 1000,
    *,
    batch_size: int = 512,
    seed: int | None = 0,
) -> Tensor:
    """Draws posterior samples for many observations with batched sampling.

    Args:
        posterior: sbi posterior with ``sample_batched`` (e.g. ``DirectPosterior``)
            or an sbi ``ConditionalDensityEstimator``.
        x: Observations, (N, *event_shape), e.g. (N, bands, H, W) images.
        num_samples: Samples per observation S.
        batch_size: Observations sampled per call.
        seed: Seed of torch's global RNG during sampling (state restored after);
            None uses the current state.

    Returns:
        Samples of shape (S, N, D), float32 on the CPU.
    """
    _check_sizes(num_samples, batch_size)
    access = PosteriorAccess(posterior)
    chunks = []
    with seeded(seed):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            chunks.append(_check_chunk(access.sample(num_samples, xb), num_samples, len(xb)))
    return torch.cat(chunks, dim=1)


def joint_hpd_levels(
    posterior: Any,
    samples: Tensor,
    theta: Tensor,
    x: Tensor,
    *,
    batch_size: int = 512,
) -> Tensor:
    """Credibility level of the smallest HPD region containing each truth (second pass).

    Evaluates the posterior density of every sample and truth; see
    :func:`~sbi_lens.coverage.hpd_levels_from_log_prob` for the definition.

    Args:
        posterior: Posterior with ``log_prob_batched`` or a conditional estimator.
        samples: Posterior samples, (S, N, D).
        theta: True parameters, (N, D).
        x: Observations, (N, *event_shape).
        batch_size: Lenses evaluated per log-density call.

    Returns:
        Levels in (0, 1), shape (N,) float64.
    """
    _check_sizes(1, batch_size)
    access = PosteriorAccess(posterior)
    if not access.has_log_prob:
        raise ValueError(
            f"posterior: {type(posterior).__name__} has no `log_prob_batched`; "
            "the joint HPD coverage needs the posterior density"
        )
    levels = []
    for start in range(0, theta.shape[0], batch_size):
        stop = start + batch_size
        both = torch.cat([theta[None, start:stop].to(samples.dtype), samples[:, start:stop]])
        log_q = access.log_prob(both, x[start:stop]).detach().cpu()
        levels.append(hpd_levels_from_log_prob(log_q[1:], log_q[0]))
    return torch.cat(levels)


def draw_samples_and_hpd_levels(
    posterior: Any,
    theta: Tensor,
    x: Tensor,
    num_samples: int = 1000,
    *,
    batch_size: int = 512,
    seed: int | None = 0,
    joint: bool = True,
) -> tuple[Tensor, Tensor | None, dict[str, float]]:
    """Samples every lens's posterior and, if ``joint``, each truth's HPD level.

    Uses one pass (samples with their log-densities) when the posterior allows it
    (see :class:`PosteriorAccess`), else samples then evaluates the density.

    Args:
        posterior: sbi posterior or ``ConditionalDensityEstimator``.
        theta: True parameters, (N, D).
        x: Observations, (N, *event_shape).
        num_samples: Samples per lens S.
        batch_size: Lenses per call.
        seed: Seed of torch's global RNG while sampling; None: current state.
        joint: Whether to compute the HPD levels (None is returned if the
            posterior has no density).

    Returns:
        Samples (S, N, D) float32 on the CPU, HPD levels (N,) float64 or None, and
        timings in seconds: ``sampling`` and ``log_prob`` (the extra density work).
    """
    import time

    _check_sizes(num_samples, batch_size)
    access = PosteriorAccess(posterior)
    if not (joint and access.one_pass):
        t0 = time.perf_counter()
        samples = draw_posterior_samples(
            posterior, x, num_samples, batch_size=batch_size, seed=seed
        )
        t_sample, hpd, t0 = time.perf_counter() - t0, None, time.perf_counter()
        if joint and access.has_log_prob:
            hpd = joint_hpd_levels(posterior, samples, theta, x, batch_size=batch_size)
        elif joint:
            warnings.warn(
                f"{type(posterior).__name__} has no log_prob_batched; skipping joint coverage",
                stacklevel=3,
            )
        return samples, hpd, {"sampling": t_sample, "log_prob": time.perf_counter() - t0}
    chunks, levels, t0 = [], [], time.perf_counter()
    with seeded(seed):
        for start in range(0, x.shape[0], batch_size):
            xb, tb = x[start : start + batch_size], theta[start : start + batch_size]
            samples, log_q, log_true = access.sample_and_log_prob(num_samples, xb, tb)
            chunks.append(_check_chunk(samples, num_samples, len(xb)))
            levels.append(hpd_levels_from_log_prob(log_q.cpu(), log_true.cpu()))
    timings = {"sampling": time.perf_counter() - t0, "log_prob": 0.0}
    return torch.cat(chunks, dim=1), torch.cat(levels), timings
