"""What is drawn per lens besides θ: the nuisance population, the neighbouring galaxies
and the lens-search selection (sections ``population``, ``neighbours``, ``selection``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sbi_lens.config.base import _check_log_range, _Strict

__all__ = ["NeighbourConfig", "PopulationConfig", "SelectionConfig"]


class PopulationConfig(_Strict):
    """Scatter and ranges of the nuisance population (relations in docs/physics.md).

    Magnitudes are AB; sizes in kpc before conversion to arcsec; A_V in magnitudes.

    Attributes:
        lens_ellipticity_std: std of each lenstronomy ellipticity component e1, e2 of the
            lens mass.
        shear_std: std of each external-shear component.
        lens_centre_std: std of the lens centre around the cutout centre [arcsec].
        lens_evolution: passive brightening of the lens dM_r/dz [mag per unit redshift].
        lens_size_evolution: exponent of (1+z) in the lens size at fixed σ_v and
            luminosity (van der Wel et al. 2008: −0.98).
        lens_size_reference_z: redshift at which the fundamental-plane sizes hold (the
            SDSS sample's median z ≈ 0.1, Bernardi et al. 2003); size evolution is
            applied relative to it.
        lens_sersic_median, lens_sersic_scatter_dex: Sérsic index of the lens light.
        light_misalignment_deg: rms of the light–mass position-angle difference
            (Koopmans et al. 2006: ≈10°).
        light_axis_ratio_scatter: rms of q_light / q_mass (Koopmans et al. 2006: 0.11).
        lens_sed_concentration: κ scaling the Dirichlet α of Herbel et al.'s red model:
            massive early types form a tighter sequence than all red galaxies.
        lens_colour_sigma_slope: rest-frame g−r reddening per dex of σ_v (colour–σ
            relation, Bernardi et al. 2003 IV and 2005), applied as an effective
            attenuation.
        lens_colour_sigma_pivot: σ_v [km/s] with no colour–σ reddening.
        lens_colour_scatter: intrinsic rest-frame g−r scatter at fixed σ_v [mag] (as an
            effective attenuation tilt, like the colour–σ relation).
        lens_colour_scatter_range: (low, high) [mag] or None (default: the fixed
            ``lens_colour_scatter``). When set, each lens draws its own scatter
            log-uniform in the range (replacing ``lens_colour_scatter``): training
            marginalises over the scatter (docs/robustness.md, "Marginalising").
        lens_band_scatter: rms [mag] of an intrinsic lens magnitude offset drawn
            independently in each band (one stream per band name): the part of the
            red-sequence colour scatter that no single tilt describes, so two colours
            cannot pin z_l and a tilt at once (docs/physics.md, "SED").
        lens_band_scatter_range: (low, high) [mag] or None (default: the fixed
            ``lens_band_scatter``): each lens draws its own per-band rms log-uniform in
            the range, as ``lens_colour_scatter_range`` does for the tilt.
        lens_dusty_fraction, lens_dusty_av: share of dusty early types and the range of
            their A_V [mag].
        lens_young_fraction, lens_young_mass_share: share of early types with a young
            (blue-galaxy) component, and that component's stellar-mass share.
        source_mag_range: drawn M_UV − M*(z) range [mag] (bright, faint); the lens-search
            selection, not this range, keeps only detectable sources.
        source_size_scatter_dex: rms of log10 R_e of the source [dex].
        source_sersic_index: Sérsic index of the source light.
        source_ellipticity_std: std of each source ellipticity component.
        source_dust_av_mean: mean A_V of the exponential distribution of source dust.
        source_max_offset: largest source-plane offset from the lens centre, in units of θ_E.
        lens_slope_mean, lens_slope_std: mean and intrinsic scatter of the 3D logarithmic
            density slope γ′ of the lens mass (elliptical power law; SLACS, Auger et al.
            2010: 2.078, 0.16). ``lens_slope_std: 0`` fixes γ′ at the mean; mean 2 and
            std 0 give back the SIE.
        lens_slope_range: (low, high) truncation of the γ′ distribution, within 1.2–2.8
            (the power law needs 1 < γ′ < 3; lenstronomy's EPL fits use 1.5–2.5).
    """

    lens_ellipticity_std: float = Field(0.1, ge=0, le=0.3)
    shear_std: float = Field(0.03, ge=0, le=0.2)
    lens_centre_std: float = Field(0.05, ge=0)
    lens_evolution: float = Field(1.2, ge=0, le=3)
    lens_size_evolution: float = Field(-0.98, ge=-3, le=1)
    lens_size_reference_z: float = Field(0.1, ge=0, le=0.5)
    lens_sersic_median: float = Field(4.0, ge=1, le=8)
    lens_sersic_scatter_dex: float = Field(0.1, ge=0, le=0.5)
    light_misalignment_deg: float = Field(10.0, ge=0, le=90)
    light_axis_ratio_scatter: float = Field(0.11, ge=0, le=0.5)
    lens_sed_concentration: float = Field(200.0, gt=0, le=1000)
    lens_colour_sigma_slope: float = Field(0.26, ge=0, le=1)
    lens_colour_sigma_pivot: float = Field(180.0, gt=0)
    lens_colour_scatter: float = Field(0.025, ge=0, le=0.15)
    lens_colour_scatter_range: tuple[float, float] | None = None
    lens_band_scatter: float = Field(0.015, ge=0, le=0.1)
    lens_band_scatter_range: tuple[float, float] | None = None
    lens_dusty_fraction: float = Field(0.10, ge=0, le=1)
    lens_dusty_av: tuple[float, float] = (0.2, 1.0)
    lens_young_fraction: float = Field(0.05, ge=0, le=1)
    lens_young_mass_share: float = Field(0.05, ge=0, le=1)
    source_mag_range: tuple[float, float] = (-2.0, 2.0)
    source_size_scatter_dex: float = Field(0.2, ge=0)
    source_sersic_index: float = Field(1.0, ge=0.5, le=8)
    source_ellipticity_std: float = Field(0.15, ge=0, le=0.3)
    source_dust_av_mean: float = Field(0.4, ge=0, le=2)
    source_max_offset: float = Field(0.6, gt=0, le=1.0)
    lens_slope_mean: float = Field(2.078, ge=1.2, le=2.8)
    lens_slope_std: float = Field(0.16, ge=0, le=0.5)
    lens_slope_range: tuple[float, float] = (1.5, 2.5)

    @model_validator(mode="after")
    def _ranges(self):
        low, high = self.lens_slope_range
        if not 1.2 <= low <= self.lens_slope_mean <= high <= 2.8:
            raise ValueError(
                "lens_slope_range must satisfy 1.2 ≤ low ≤ lens_slope_mean ≤ high ≤ 2.8, "
                f"got ({low}, {high}) with mean {self.lens_slope_mean}"
            )
        bright, faint = self.source_mag_range
        if not bright < faint:
            raise ValueError(
                "source_mag_range must be (bright, faint) with bright < faint, "
                f"got {bright}, {faint}"
            )
        low, high = self.lens_dusty_av
        if not 0 <= low <= high <= 3:
            raise ValueError(f"lens_dusty_av must satisfy 0 ≤ low ≤ high ≤ 3, got {low}, {high}")
        if self.lens_dusty_fraction + self.lens_young_fraction > 1:
            raise ValueError("lens_dusty_fraction + lens_young_fraction must be ≤ 1")
        if self.lens_colour_scatter_range is not None:
            _check_log_range("lens_colour_scatter_range", self.lens_colour_scatter_range, 0.15)
        if self.lens_band_scatter_range is not None:
            _check_log_range("lens_band_scatter_range", self.lens_band_scatter_range, 0.1)
        return self


class SelectionConfig(_Strict):
    """Which simulated lenses a lens search would find (docs/physics.md, "Selection").

    ``collett2015`` keeps a lens only if, on the noise-free lens-subtracted image, the
    lensed source has signal-to-noise ≥ ``min_arc_snr`` in its best band, the total
    magnification is ≥ ``min_magnification`` and (``resolved``) the Einstein ring is
    resolved, θ_E² > r_s² + (s/2)² with s the best band's seeing FWHM (Collett 2015,
    ApJ 811, 20). ``none`` keeps every draw: the stored θ then follow the prior.
    """

    kind: Literal["collett2015", "none"] = "collett2015"
    min_arc_snr: float = Field(20.0, ge=0, le=1000)
    min_magnification: float = Field(3.0, ge=1, le=100)
    resolved: bool = True

    @property
    def enabled(self) -> bool:
        """True unless ``kind`` is ``none``."""
        return self.kind != "none"


class NeighbourConfig(_Strict):
    """Unrelated galaxies in the cutout (docs/physics.md, "Neighbouring galaxies").

    Attributes:
        enabled: draw neighbours; when false the neighbour columns are 0 / 99 / 0.
        density_scale: multiplies the mean number per cutout (from the Herbel et al.
            2017 luminosity functions to ``magnitude_limit``).
        density_scale_range: (low, high) of a per-lens multiplier of ``density_scale``,
            drawn log-uniform (lens environments vary, docs/physics.md); the default
            [1, 1] keeps every lens at ``density_scale``.
        exclusion_radius: no neighbour centre within this distance of the lens
            centre [arcsec] (a closer galaxy would be deblended as part of the lens).
        magnitude_limit: faintest neighbour, AB in the survey's reddest band; ``None``
            takes that band's 5σ point-source depth from lenstronomy's settings.
    """

    enabled: bool = False
    density_scale: float = Field(1.0, ge=0, le=20)
    density_scale_range: tuple[float, float] = (1.0, 1.0)
    exclusion_radius: float = Field(2.0, ge=0, le=10)
    magnitude_limit: float | None = Field(None, ge=15, le=32)

    @model_validator(mode="after")
    def _ranges(self):
        _check_log_range("density_scale_range", self.density_scale_range, 20.0)
        return self
