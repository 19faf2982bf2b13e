"""Lens-search selection: keep a simulated lens only if a search would find it.

Collett (2015, ApJ 811, 20, "The population of galaxy-galaxy strong lenses in
forthcoming optical imaging surveys") calls a lens detectable when, on the noise-free
lens-subtracted image,

* the lensed source has signal-to-noise ≥ 20 in its best band,
* the total magnification of the source is ≥ 3, and
* the Einstein ring is resolved given the seeing and the source size,
  θ_E² > r_s² + (s/2)², s the seeing FWHM, r_s the source half-light radius.

The signal-to-noise sums the source counts over the pixels where the source exceeds
the noise (1σ) and divides by the noise over those pixels; the noise is that of the
whole image (sky, read noise, Poisson noise of lens and source: lenstronomy's model).
LensPop (github.com/tcollett/LensPop, ``SignaltoNoise.py``) instead takes the best
aperture of pixels ranked by source/noise; both agree for arcs well above the noise.

The stored θ of a selected store follow p(θ | found), not the prior: what an amortized
posterior applied to a lens catalogue should learn. Everything here is a pure function;
the rejection loop takes its randomness from the generators it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sbi_lens.config import SelectionConfig

__all__ = [
    "SelectedLenses",
    "arc_snr",
    "einstein_ring_resolved",
    "passes_selection",
    "simulate_selected",
]

MAX_CANDIDATES_PER_ROW = 1000  # a chunk gives up past this many draws per kept lens


def arc_snr(source: np.ndarray, noise_rms: np.ndarray) -> np.ndarray:
    """Signal-to-noise of the lensed source over its pixels above the noise (Collett 2015).

    S/N = Σ_{S>σ} S / sqrt(Σ_{S>σ} σ²); 0 where no pixel has S > σ.

    Args:
        source: (..., H, W) noise-free lens-subtracted image [e-/s per pixel].
        noise_rms: (..., H, W) noise rms of the whole image [e-/s per pixel].

    Returns:
        (...,) signal-to-noise.
    """
    source = np.asarray(source, dtype=float)
    noise_rms = np.asarray(noise_rms, dtype=float)
    mask = source > noise_rms
    signal = np.where(mask, source, 0.0).sum(axis=(-2, -1))
    variance = np.where(mask, noise_rms**2, 0.0).sum(axis=(-2, -1))
    return np.where(variance > 0, signal / np.sqrt(np.maximum(variance, 1e-300)), 0.0)


def einstein_ring_resolved(theta_E, source_size, seeing) -> np.ndarray:
    """Collett (2015) resolution criterion θ_E² > r_s² + (s/2)².

    Args:
        theta_E: (N,) Einstein radius [arcsec].
        source_size: (N,) source half-light radius [arcsec].
        seeing: (N,) or scalar PSF FWHM [arcsec].

    Returns:
        (N,) bool.
    """
    theta_E, source_size, seeing = (
        np.asarray(v, dtype=float) for v in (theta_E, source_size, seeing)
    )
    return theta_E**2 > source_size**2 + (seeing / 2.0) ** 2


def passes_selection(config: SelectionConfig, magnification, snr_best, resolved_best) -> np.ndarray:
    """(N,) bool: the lenses that pass ``config`` (all of them for ``kind: none``).

    Args:
        config: the selection.
        magnification: (N,) total magnification of the source.
        snr_best: (N,) arc signal-to-noise in the best band.
        resolved_best: (N,) bool, ring resolved in the best band.
    """
    snr_best = np.asarray(snr_best, dtype=float)
    if not config.enabled:
        return np.ones(snr_best.shape, dtype=bool)
    keep = (snr_best >= config.min_arc_snr) & (
        np.asarray(magnification, dtype=float) >= config.min_magnification
    )
    if config.resolved:
        keep &= np.asarray(resolved_best, dtype=bool)
    return keep


@dataclass(frozen=True)
class SelectedLenses:
    """The kept lenses of one rejection run, and how many candidates it took.

    Attributes:
        theta: (n, 4) θ of the kept lenses.
        images: (n, bands, H, W) images [e-/s per pixel] (noisy if noise was asked).
        nuisance: (n, k) nuisance and selection columns (``simulator.nuisance_names``).
        num_candidates: θ drawn from the prior to fill the n rows.
        num_rendered: candidates that passed the pre-filter and were rendered.
    """

    theta: np.ndarray
    images: np.ndarray
    nuisance: np.ndarray
    num_candidates: int
    num_rendered: int

    @property
    def acceptance(self) -> float:
        """Fraction of prior draws kept."""
        return len(self.theta) / max(self.num_candidates, 1)


def _batch_size(remaining: int, kept: int, drawn: int, enabled: bool) -> int:
    """Candidates to draw next: about ``remaining`` / (acceptance so far), at least 16.

    The first batch assumes every candidate passes, so a mild selection renders hardly
    more lenses than it keeps; a strict one grows its batches from what it has seen.
    """
    if not enabled or not drawn:
        return remaining
    rate = max(kept / drawn, 1.0 / MAX_CANDIDATES_PER_ROW)
    return int(np.clip(np.ceil(remaining / rate), 16, 4096))


def simulate_selected(
    simulator,
    prior,
    num_rows: int,
    generator: torch.Generator,
    rng: np.random.Generator,
    *,
    noise: bool = True,
) -> SelectedLenses:
    """Draw θ from the prior and nuisance for it until ``num_rows`` lenses pass the selection.

    Candidates come in batches: θ from ``generator``, nuisance from ``rng``; a cheap
    necessary condition (:meth:`LensSimulator.prefilter`) drops hopeless ones before
    rendering. Noise is drawn last, only for the kept lenses, in row order, from a
    stream spawned from ``rng`` first. The result is a pure function of the generators'
    states and the config.

    Args:
        simulator: a :class:`~sbi_lens.simulator.LensSimulator` (its config's selection).
        prior: a :class:`~sbi_lens.priors.LensPrior`.
        num_rows: lenses to keep.
        generator: torch generator of the prior draws.
        rng: numpy generator of the nuisance draws and the noise.
        noise: add noise to the kept images.

    Raises:
        ValueError: fewer than 1 in ``MAX_CANDIDATES_PER_ROW`` candidates pass.
    """
    noise_rng, candidate_rng = rng.spawn(2)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    kept = drawn = rendered = 0
    while kept < num_rows:
        if drawn > MAX_CANDIDATES_PER_ROW * num_rows:
            raise ValueError(
                f"selection: {kept} of {drawn} candidates passed; loosen selection "
                "(min_arc_snr, min_magnification, resolved) or set selection: none"
            )
        size = _batch_size(num_rows - kept, kept, drawn, simulator.config.selection.enabled)
        theta = prior.sample((size,), generator=generator).cpu().numpy().astype(float)
        nuisance = simulator.draw_nuisance(theta, candidate_rng).values
        drawn += size
        hopeful = simulator.prefilter(theta, nuisance)
        if not hopeful.any():
            continue
        theta, nuisance = theta[hopeful], nuisance[hopeful]
        rendered += len(theta)
        images, columns, keep = simulator.render_selected(theta, nuisance)
        take = np.flatnonzero(keep)[: num_rows - kept]
        parts.append((theta[take], images[take], columns[take]))
        kept += len(take)
    theta, images, columns = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    if noise:
        images = simulator.add_noise(images, noise_rng, simulator.noise_scale(columns))
    return SelectedLenses(theta, images, columns, drawn, rendered)
