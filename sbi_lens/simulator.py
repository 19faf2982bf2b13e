"""LensSimulator: multi-band survey images of strong lenses with lenstronomy.

This is the only module that builds lenstronomy keyword arguments. The lenstronomy
models (one ``SimAPI`` and ``ImageModel`` per band and one ``LightModel``) are built
once; per lens only the kwargs change. Rays are shot through the lens mass
(lenstronomy's ``EPL`` + ``SHEAR``, :data:`LENS_MODEL`) by :func:`sbi_lens.mass.ray_shoot`,
the same deflection summed as a short series (≈ 5× faster than lenstronomy's ``hyp2f1``).

The bands share the pixel grid, so the expensive steps are done once per lens: ray
shooting on the supersampled grid and the Sérsic shapes of lens and source (each
evaluated with amplitude 1). A band's image is then, by linearity,
``a_lens · L + a_source · S``, binned to pixels by lenstronomy's own numerics and
convolved with the lens's own PSF in that band (:mod:`sbi_lens.psf`: Moffat or Gaussian,
FWHM drawn per lens and band, nuisance columns ``psf_fwhm_<band>``), exactly as
``ImageModel.image`` does it with ``psf_type='PIXEL'`` and that kernel. Noise
(background from sky and read noise, and Poisson noise of the lens) follows
lenstronomy's noise model, scaled by the lens's own factor (nuisance column
``noise_scale``: ``survey.noise_scale``, times a log-uniform draw when
``survey.noise_scale_range`` is set), and is drawn from an explicit
``numpy.random.Generator``.

Image units: electrons per second per pixel (lenstronomy's default data unit),
sky-subtracted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbi_lens.compat import lenstronomy_bin, lenstronomy_bin_rows
from sbi_lens.config import SimulationConfig
from sbi_lens.cosmology import distance_table
from sbi_lens.mass import ray_shoot
from sbi_lens.neighbours import (
    Neighbours,
    neighbour_pool,
    neighbours_of,
    sersic_unit_flux,
    sersic_unit_images,
)
from sbi_lens.parameters import as_theta_array, theta_columns
from sbi_lens.population import Population, draw_population, nuisance_names
from sbi_lens.psf import convolve, psf_kernels
from sbi_lens.selection import arc_snr, einstein_ring_resolved, passes_selection

__all__ = [
    "LENS_MODEL",
    "LIGHT_MODEL",
    "LensSimulator",
    "SimulationOutput",
    "selection_column_names",
]

# Elliptical power law (γ′ = lens_gamma; 2 is the SIE) + external shear; rendered by
# sbi_lens.mass.ray_shoot, which equals lenstronomy's LensModel(LENS_MODEL) to rounding.
LENS_MODEL = ["EPL", "SHEAR"]
LIGHT_MODEL = ["SERSIC_ELLIPSE"]


@dataclass(frozen=True)
class SimulationOutput:
    """Images of N lenses and the nuisance draws behind them.

    Attributes:
        images: (N, bands, H, W) float32 [e-/s per pixel].
        nuisance: (N, k) float64, columns named by ``nuisance_names``.
        nuisance_names: names of the nuisance columns.
    """

    images: np.ndarray
    nuisance: np.ndarray
    nuisance_names: tuple[str, ...]


def selection_column_names(bands: tuple[str, ...]) -> tuple[str, ...]:
    """Columns the simulator measures on each image: total magnification, best-band arc
    signal-to-noise and the lensed source's apparent AB magnitude per band."""
    return ("magnification", "arc_snr") + tuple(f"source_lensed_mag_{band}" for band in bands)


def _as_rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer)):
        return np.random.default_rng(seed)
    raise ValueError(f"seed must be an int, None or a numpy Generator, got {type(seed).__name__}")


class LensSimulator:
    """Simulate survey images of galaxy–galaxy strong lenses given θ.

    Args:
        config: simulation settings (prior cosmology, survey, population).

    Example:
        >>> from sbi_lens import LensPrior, load_config
        >>> config = load_config("lsst_gri")
        >>> theta = LensPrior(config.prior).sample((2,))    # (2, 4)
        >>> out = LensSimulator(config).simulate(theta, seed=0)
        >>> out.images.shape
        (2, 3, 64, 64)
    """

    def __init__(self, config: SimulationConfig):
        from lenstronomy.LightModel.light_model import LightModel
        from lenstronomy.SimulationAPI.sim_api import SimAPI

        self.config = config
        survey = config.survey
        self._table = distance_table(config.prior.cosmology)
        self._pixel_scale = survey.image_pixel_scale()
        self._num_pixels = survey.num_pixels
        self.kwargs_band = survey.band_settings()
        self.kwargs_model = {
            "lens_model_list": list(LENS_MODEL),
            "source_light_model_list": list(LIGHT_MODEL),
            "lens_light_model_list": list(LIGHT_MODEL),
        }
        self.kwargs_numerics = {
            "supersampling_factor": survey.supersampling,
            "supersampling_convolution": False,
        }
        self._sims = [SimAPI(survey.num_pixels, kw, self.kwargs_model) for kw in self.kwargs_band]
        self._image_models = [sim.image_model_class(self.kwargs_numerics) for sim in self._sims]
        self._numerics = [model.ImageNumerics for model in self._image_models]
        self._light_model = LightModel(list(LIGHT_MODEL))
        self._x, self._y = self._numerics[0].coordinates_evaluate
        self._population_names = nuisance_names(survey.bands)
        self._nuisance_names = self._population_names + selection_column_names(survey.bands)
        self._index = {name: i for i, name in enumerate(self._nuisance_names)}
        self._fwhm_columns = [self._index[f"psf_fwhm_{band}"] for band in survey.bands]
        self._noise_scale = float(survey.noise_scale)
        self._noise_column = self._index["noise_scale"]
        self._background = np.array([sim.background_noise for sim in self._sims])
        self._subpixel_area = (self._pixel_scale / survey.supersampling) ** 2
        self._pool = None  # the neighbour pool, built on first use (once per process)
        self._pixel_area = self._pixel_scale**2

    # ------------------------------------------------------------------ properties
    @property
    def bands(self) -> tuple[str, ...]:
        """Band names, in channel order."""
        return tuple(self.config.survey.bands)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(bands, H, W) of one lens."""
        return (len(self.bands), self._num_pixels, self._num_pixels)

    @property
    def pixel_scale(self) -> float:
        """Pixel size [arcsec]."""
        return self._pixel_scale

    @property
    def nuisance_names(self) -> tuple[str, ...]:
        """Names of the nuisance columns of :meth:`simulate`'s output (and of a store):
        the population's draws, then :func:`selection_column_names`."""
        return self._nuisance_names

    @property
    def population_names(self) -> tuple[str, ...]:
        """Names of the drawn nuisance columns (the first columns of :attr:`nuisance_names`)."""
        return self._population_names

    @property
    def pixel_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) angular coordinates [arcsec] of the pixel centres, each (H, W)."""
        return self._image_models[0].Data.pixel_coordinates

    @property
    def background_rms(self) -> np.ndarray:
        """(bands,) background noise rms per pixel [e-/s] (sky + read noise) at
        ``survey.noise_scale``; a lens's own is its ``noise_scale`` / ``survey.noise_scale``
        times this."""
        return self._noise_scale * self._background

    def noise_scale(self, nuisance) -> np.ndarray:
        """(N,) noise rms factor of each lens, its nuisance column ``noise_scale``.

        Raises:
            ValueError: a factor is not positive and finite.
        """
        scale = np.asarray(nuisance, dtype=float)[:, self._noise_column]
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise ValueError(
                f"nuisance column noise_scale must be > 0, got {scale.min()}; "
                "set it to survey.noise_scale for a lens of the nominal depth"
            )
        return scale

    def psf_fwhm(self, nuisance) -> np.ndarray:
        """(N, bands) PSF FWHM [arcsec] of each lens and band, from its nuisance columns."""
        return np.asarray(nuisance, dtype=float)[:, self._fwhm_columns]

    def psf_kernels(self, fwhm: np.ndarray) -> np.ndarray:
        """(bands, n, n) pixel kernels (unit sum) of one lens from its (bands,) FWHM
        [arcsec], on the widest band's odd grid (at most the cutout)."""
        psf = self.config.survey.psf
        return psf_kernels(
            psf.profile, fwhm, self._pixel_scale, beta=psf.beta, max_size=self._num_pixels
        )

    # ------------------------------------------------------------------ kwargs
    def draw_nuisance(self, theta, rng: np.random.Generator) -> Population:
        """Nuisance draws for θ (see :func:`sbi_lens.population.draw_population`)."""
        prior = self.config.prior
        return draw_population(
            as_theta_array(theta),
            self.config.population,
            self.config.survey,
            self._table,
            rng,
            z_max=(prior.z_lens.high, prior.z_source.high),
            neighbours=self.config.neighbours,
            cosmology=prior.cosmology,
        )

    def _shape_kwargs(self, theta_row: np.ndarray, row: np.ndarray):
        col = self._index
        centre_x, centre_y = float(row[col["lens_center_x"]]), float(row[col["lens_center_y"]])
        e1, e2 = float(row[col["lens_e1"]]), float(row[col["lens_e2"]])
        kwargs_lens = [
            {
                "theta_E": float(theta_columns(theta_row).theta_E),
                "gamma": float(row[col["lens_gamma"]]),
                "e1": e1,
                "e2": e2,
                "center_x": centre_x,
                "center_y": centre_y,
            },
            {
                "gamma1": float(row[col["shear_gamma1"]]),
                "gamma2": float(row[col["shear_gamma2"]]),
                "ra_0": 0.0,
                "dec_0": 0.0,
            },
        ]
        kwargs_lens_light = {
            "R_sersic": float(row[col["lens_R_sersic"]]),
            "n_sersic": float(row[col["lens_sersic_n"]]),
            "e1": float(row[col["lens_light_e1"]]),
            "e2": float(row[col["lens_light_e2"]]),
            "center_x": centre_x,
            "center_y": centre_y,
        }
        kwargs_source = {
            "R_sersic": float(row[col["source_R_sersic"]]),
            "n_sersic": float(self.config.population.source_sersic_index),
            "e1": float(row[col["source_e1"]]),
            "e2": float(row[col["source_e2"]]),
            "center_x": float(row[col["source_x"]]),
            "center_y": float(row[col["source_y"]]),
        }
        return kwargs_lens, kwargs_lens_light, kwargs_source

    def _amplitudes(self, row, kwargs_lens_light, kwargs_source) -> tuple[np.ndarray, np.ndarray]:
        """(bands,) lenstronomy 'amp' of lens and source from the apparent magnitudes."""
        from lenstronomy.Util import data_util

        lens_norm = self._light_model.total_flux([kwargs_lens_light], norm=True)[0]
        source_norm = self._light_model.total_flux([kwargs_source], norm=True)[0]
        lens_amp, source_amp = [], []
        for band, kwargs in zip(self.bands, self.kwargs_band, strict=True):
            zero_point = kwargs["magnitude_zero_point"]
            lens_mag = row[self._index[f"lens_mag_{band}"]]
            source_mag = row[self._index[f"source_mag_{band}"]]
            lens_amp.append(data_util.magnitude2cps(lens_mag, zero_point) / lens_norm)
            source_amp.append(data_util.magnitude2cps(source_mag, zero_point) / source_norm)
        return np.array(lens_amp), np.array(source_amp)

    def neighbours(self, nuisance_row) -> Neighbours | None:
        """The neighbouring galaxies of one lens (None when it has none).

        A pure function of the row's ``neighbour_count``, ``neighbour_seed`` and lens
        centre (:func:`sbi_lens.neighbours.neighbours_of`).
        """
        row = np.asarray(nuisance_row, dtype=float)
        count = int(row[self._index["neighbour_count"]])
        if count == 0:
            return None
        config, survey = self.config.neighbours, self.config.survey
        if self._pool is None:
            self._pool = neighbour_pool(config, survey, self.config.prior.cosmology)
        pool = self._pool
        centre = (row[self._index["lens_center_x"]], row[self._index["lens_center_y"]])
        half_side = 0.5 * self._num_pixels * self._pixel_scale
        seed = int(row[self._index["neighbour_seed"]])
        return neighbours_of(pool, seed, count, centre, half_side, config.exclusion_radius)

    def _neighbour_amplitudes(self, neighbours: Neighbours) -> np.ndarray:
        """(bands, K) lenstronomy 'amp' of each neighbour from its magnitudes."""
        zero_points = np.array([kw["magnitude_zero_point"] for kw in self.kwargs_band])
        counts = 10.0 ** (-0.4 * (neighbours.magnitudes.T - zero_points[:, None]))  # e-/s
        return counts / sersic_unit_flux(neighbours)[None, :]

    def _binned_neighbours(self, nuisance_row) -> list | None:
        """Per band, the binned, unconvolved light of the lens's neighbours (as
        :func:`~sbi_lens.compat.lenstronomy_bin` returns it), or None."""
        neighbours = self.neighbours(nuisance_row)
        if neighbours is None:
            return None
        # float32: exp is ~15× faster than in float64, and 1e-7 of a neighbour's light
        # is far below the noise (images are stored as float32 anyway).
        unit = sersic_unit_images(neighbours, self._x, self._y, dtype=np.float32)  # (K, P)
        amplitudes = self._neighbour_amplitudes(neighbours).astype(np.float32)
        light = amplitudes @ unit  # (bands, P), by linearity
        return lenstronomy_bin_rows(self._numerics[0], light)

    def lenstronomy_kwargs(self, theta_row, nuisance_row, band: str) -> dict:
        """The lenstronomy kwargs that render one lens in one band.

        Args:
            theta_row: (4,) θ of the lens.
            nuisance_row: (k,) its nuisance values (columns as :attr:`nuisance_names`).
            band: one of :attr:`bands`.

        Returns:
            dict with ``kwargs_lens``, ``kwargs_source``, ``kwargs_lens_light`` (lists of
            dicts, amplitudes in lenstronomy's 'amp' for this band; the lens light is
            followed by one SERSIC_ELLIPSE per neighbouring galaxy), ``kwargs_band``
            (``kwargs_single_band`` with ``psf_type='PIXEL'`` and the lens's PSF kernel in
            ``kernel_point_source``), ``kwargs_model`` and ``kwargs_numerics``, enough to
            rebuild the image with ``SimAPI(...).image_model_class(...).image(...)``.
        """
        if band not in self.bands:
            raise ValueError(f"band {band!r} is not simulated; expected one of {self.bands}")
        theta_row = as_theta_array(theta_row)[0]
        row = np.asarray(nuisance_row, dtype=float)
        kwargs_lens, kwargs_lens_light, kwargs_source = self._shape_kwargs(theta_row, row)
        lens_amp, source_amp = self._amplitudes(row, kwargs_lens_light, kwargs_source)
        b = self.bands.index(band)
        lens_light = [{"amp": float(lens_amp[b]), **kwargs_lens_light}]
        kwargs_model = {key: list(value) for key, value in self.kwargs_model.items()}
        neighbours = self.neighbours(row)
        if neighbours is not None:
            lens_light += neighbours.lenstronomy_kwargs(self._neighbour_amplitudes(neighbours)[b])
            kwargs_model["lens_light_model_list"] += list(LIGHT_MODEL) * len(neighbours)
        return {
            "kwargs_lens": kwargs_lens,
            "kwargs_source": [{"amp": float(source_amp[b]), **kwargs_source}],
            "kwargs_lens_light": lens_light,
            "kwargs_band": {
                **self.kwargs_band[b],
                "seeing": float(row[self._fwhm_columns[b]]),
                "psf_type": "PIXEL",
                "kernel_point_source": self.psf_kernels(row[self._fwhm_columns])[b],
                "point_source_supersampling_factor": 1,
            },
            "kwargs_model": kwargs_model,
            "kwargs_numerics": dict(self.kwargs_numerics),
        }

    # ------------------------------------------------------------------ images
    def _check_nuisance(self, theta: np.ndarray, nuisance) -> np.ndarray:
        """(N, k_population) drawn columns; the selection columns, if given, are ignored."""
        nuisance = np.asarray(nuisance, dtype=float)
        widths = (len(self._population_names), len(self._nuisance_names))
        if nuisance.ndim != 2 or len(nuisance) != len(theta) or nuisance.shape[1] not in widths:
            raise ValueError(
                f"nuisance must have shape ({len(theta)}, {widths[0]}) or "
                f"({len(theta)}, {widths[1]}), got {nuisance.shape}"
            )
        return nuisance[:, : widths[0]]

    def render_parts(self, theta, nuisance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise-free images, their lensed-source part, and the source's magnification.

        Lens and source light are binned and convolved separately (the image is their
        sum): the source-only (lens-subtracted) image comes at no extra cost. The
        neighbouring galaxies are unlensed and belong to the lens-light part.

        Args:
            theta: (N, 4) θ.
            nuisance: (N, k) nuisance values, columns as :attr:`population_names`
                (or :attr:`nuisance_names`; the selection columns are then ignored).

        Returns:
            images (N, bands, H, W) and source (N, bands, H, W) float64 [e-/s per pixel];
            magnification (N,): lensed source flux in the cutout / unlensed flux.
        """
        theta = as_theta_array(theta)
        nuisance = self._check_nuisance(theta, nuisance)
        images = np.empty((len(theta), *self.image_shape))
        sources = np.empty_like(images)
        magnification = np.empty(len(theta))
        light = self._light_model
        for i in range(len(theta)):
            kwargs_lens, kwargs_lens_light, kwargs_source = self._shape_kwargs(
                theta[i], nuisance[i]
            )
            lens_amp, source_amp = self._amplitudes(nuisance[i], kwargs_lens_light, kwargs_source)
            beta_x, beta_y = ray_shoot(self._x, self._y, kwargs_lens)
            source = light.surface_brightness(beta_x, beta_y, [{"amp": 1.0, **kwargs_source}])
            lens = light.surface_brightness(self._x, self._y, [{"amp": 1.0, **kwargs_lens_light}])
            unit_flux = light.total_flux([{"amp": 1.0, **kwargs_source}])[0]
            magnification[i] = source.sum() * self._subpixel_area / unit_flux
            # The bands share the pixel grid: bin once, convolve with the lens's PSF per band
            # (lenstronomy's re_size_convolve: binned surface brightness × pixel area).
            # Neighbours are unlensed light, convolved together with the lens light.
            binned_lens, binned_source = (
                lenstronomy_bin(self._numerics[0], flux)[0] for flux in (lens, source)
            )
            lens_light = lens_amp[:, None, None] * binned_lens  # (bands, H, W)
            neighbours = self._binned_neighbours(nuisance[i])
            if neighbours is not None:
                lens_light = lens_light + np.stack([low for low, _ in neighbours])
            kernels = self.psf_kernels(nuisance[i, self._fwhm_columns])  # (bands, n, n)
            lens_b = convolve(lens_light, kernels)
            source_b = convolve(binned_source[None], kernels)
            sources[i] = source_amp[:, None, None] * source_b * self._pixel_area
            images[i] = lens_b * self._pixel_area + sources[i]
        return images, sources, magnification

    def render(self, theta, nuisance) -> np.ndarray:
        """Noise-free images (N, bands, H, W) float64 [e-/s per pixel]; see :meth:`render_parts`."""
        return self.render_parts(theta, nuisance)[0]

    def selection_columns(self, theta, nuisance, images, sources, magnification):
        """Selection columns (:func:`selection_column_names`) and whether the best band's
        ring is resolved.

        Returns:
            columns (N, 2 + bands) float64 and resolved (N,) bool.
        """
        theta = as_theta_array(theta)
        snr = arc_snr(sources, self.noise_rms(images, self.noise_scale(nuisance)))  # (N, bands)
        best = np.argmax(snr, axis=1)
        source_size = np.asarray(nuisance)[:, self._index["source_R_sersic"]]
        resolved = einstein_ring_resolved(
            theta_columns(theta).theta_E,
            source_size,
            self.psf_fwhm(nuisance)[np.arange(len(best)), best],
        )
        source_mag = np.stack(
            [np.asarray(nuisance)[:, self._index[f"source_mag_{band}"]] for band in self.bands],
            axis=1,
        )
        with np.errstate(divide="ignore"):
            lensed_mag = source_mag - 2.5 * np.log10(magnification)[:, None]
        lensed_mag = np.minimum(np.nan_to_num(lensed_mag, posinf=99.0), 99.0)
        columns = np.column_stack([magnification, snr[np.arange(len(best)), best], lensed_mag])
        return columns, resolved

    def render_selected(self, theta, nuisance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise-free images, all nuisance columns, and which lenses pass the selection.

        Returns:
            images (N, bands, H, W), nuisance (N, k) as :attr:`nuisance_names`, keep (N,) bool.
        """
        nuisance = self._check_nuisance(as_theta_array(theta), nuisance)
        images, sources, magnification = self.render_parts(theta, nuisance)
        columns, resolved = self.selection_columns(theta, nuisance, images, sources, magnification)
        keep = passes_selection(self.config.selection, columns[:, 0], columns[:, 1], resolved)
        return images, np.concatenate([nuisance, columns], axis=1), keep

    def prefilter(self, theta, nuisance) -> np.ndarray:
        """(N,) bool: a necessary condition of the selection, without rendering.

        A lens can pass only if its ring is resolved in its sharpest band (its own PSF
        FWHM; when the selection asks for it) and, for a positive S/N threshold, if some
        band has a pixel where the source exceeds the lens's background rms (its own
        ``noise_scale``): lensing conserves surface
        brightness and binning and the PSF only lower the peak, so no pixel of the
        source image exceeds its unlensed central surface brightness × pixel area.
        """
        theta = as_theta_array(theta)
        nuisance = self._check_nuisance(theta, nuisance)
        selection = self.config.selection
        keep = np.ones(len(theta), dtype=bool)
        if not selection.enabled:
            return keep
        if selection.resolved:
            source_size = nuisance[:, self._index["source_R_sersic"]]
            keep &= einstein_ring_resolved(
                theta_columns(theta).theta_E, source_size, self.psf_fwhm(nuisance).min(axis=1)
            )
        if selection.min_arc_snr > 0:
            scale = self.noise_scale(nuisance)
            for i in np.flatnonzero(keep):
                _, kwargs_lens_light, kwargs_source = self._shape_kwargs(theta[i], nuisance[i])
                _, source_amp = self._amplitudes(nuisance[i], kwargs_lens_light, kwargs_source)
                centre = (kwargs_source["center_x"], kwargs_source["center_y"])
                peak = self._light_model.surface_brightness(
                    *centre, [{"amp": 1.0, **kwargs_source}]
                )
                peak_pixel = source_amp * float(peak) * self._pixel_scale**2
                keep[i] = bool(np.any(peak_pixel > scale[i] * self._background))
        return keep

    def noise_rms(self, images: np.ndarray, scale=None) -> np.ndarray:
        """Per-pixel noise rms [e-/s] of noise-free images (N, bands, H, W).

        lenstronomy's model: σ² = background² + (Poisson) max(image, 0) / t_exp, times
        the lens's noise factor².

        Args:
            images: (N, bands, H, W) noise-free images [e-/s per pixel].
            scale: (N,) noise rms factor of each lens (:meth:`noise_scale` of its
                nuisance); None: ``survey.noise_scale`` for every lens.
        """
        rms = np.empty_like(images, dtype=float)
        for b, sim in enumerate(self._sims):
            rms[:, b] = sim.estimate_noise(np.array(images[:, b], dtype=float))
        if scale is None:
            rms *= self._noise_scale
        elif np.shape(scale) == (len(rms),):
            rms *= np.asarray(scale, dtype=float)[:, None, None, None]
        else:
            raise ValueError(f"scale must have shape ({len(rms)},), got {np.shape(scale)}")
        return rms

    def add_noise(self, images: np.ndarray, rng: np.random.Generator, scale=None) -> np.ndarray:
        """Noise-free images (N, bands, H, W) plus background and Poisson noise from ``rng``,
        at the lenses' (N,) noise factors ``scale`` (None: ``survey.noise_scale``)."""
        return images + self.noise_rms(images, scale) * rng.standard_normal(images.shape)

    def simulate(self, theta, seed=None, *, nuisance=None, noise: bool = True) -> SimulationOutput:
        """Simulate images of lenses with parameters θ (no selection: every θ is kept).

        Args:
            theta: (N, 4) numpy array or torch tensor, θ = (z_lens, z_source,
                theta_E [arcsec], sigma_v [km/s]).
            seed: int, None or ``numpy.random.Generator``; the nuisance draws and then the
                noise are taken from it, so the same seed gives the same output.
            nuisance: optional (N, k) nuisance values to use instead of drawing them
                (columns as :attr:`population_names` or :attr:`nuisance_names`).
            noise: add background and Poisson noise.

        Returns:
            :class:`SimulationOutput` with float32 images (N, bands, H, W) and the
            nuisance columns :attr:`nuisance_names` (selection columns measured here).

        Raises:
            ValueError: bad θ shape/values, seed type or nuisance shape.
        """
        theta = as_theta_array(theta)
        rng = _as_rng(seed)
        if nuisance is None:
            nuisance = self.draw_nuisance(theta, rng).values
        images, nuisance, _ = self.render_selected(theta, nuisance)
        if noise:
            images = self.add_noise(images, rng, self.noise_scale(nuisance))
        return SimulationOutput(
            images=images.astype(np.float32),
            nuisance=nuisance,
            nuisance_names=self._nuisance_names,
        )
