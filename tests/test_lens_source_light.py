"""Lens and source light relations against their published references."""

import functools

import numpy as np
import pytest

from sbi_lens.lens_light import (
    BERNARDI_2003_R,
    hyde_bernardi_log_sigma_given_magnitude,
    hyde_bernardi_log_size_given_sigma,
    lens_light_from_fundamental_plane,
    light_ellipticity,
    sersic_index,
    size_evolution,
)
from sbi_lens.source_light import sample_schechter_offsets, uv_luminosity_function


def _vdf_sigmas(n, rng):
    """σ drawn from the SDSS early-type velocity dispersion function (Choi et al. 2007)."""
    grid = np.linspace(100.0, 400.0, 3001)
    density = (grid / 161.0) ** 2.32 * np.exp(-((grid / 161.0) ** 2.67)) / grid
    cdf = np.cumsum(density) / density.sum()
    return np.interp(rng.random(n), cdf, grid)


def test_fundamental_plane_conditionals_follow_the_gaussian_algebra():
    """Drawn (log R, μ) at fixed σ have the conditional mean and covariance of the plane."""
    rng = np.random.default_rng(0)
    sigma = np.full(200_000, 250.0)
    mag, size = lens_light_from_fundamental_plane(sigma, rng.standard_normal((200_000, 2)))
    mean, cov = BERNARDI_2003_R.conditional(np.log10([250.0]))
    assert np.log10(size).mean() == pytest.approx(mean[0, 0], abs=2e-3)
    assert np.log10(size).std() == pytest.approx(np.sqrt(cov[0, 0]), rel=0.01)
    # Brighter at larger size (FP), and within the observed range of massive early types.
    assert np.corrcoef(mag, np.log10(size))[0, 1] < -0.3
    assert -23.5 < np.median(mag) < -22.0


def test_population_matches_hyde_bernardi_relations():
    """An SDSS-like population drawn from the plane reproduces Hyde & Bernardi (2009):
    ⟨log σ | M_r⟩ within 0.03 dex where the sample is rich, ⟨log R_e | σ⟩ within 30 %."""
    rng = np.random.default_rng(1)
    sigma = _vdf_sigmas(400_000, rng)
    mag, size = lens_light_from_fundamental_plane(sigma, rng.standard_normal((400_000, 2)))
    for m in (-21.5, -22.0, -22.5, -23.0):
        rows = np.abs(mag - m) < 0.1
        measured = np.median(np.log10(sigma[rows]))
        assert measured == pytest.approx(hyde_bernardi_log_sigma_given_magnitude(m), abs=0.03)
    for s in (200.0, 250.0, 300.0):
        rows = np.abs(sigma - s) < 5
        ratio = 10 ** (np.median(np.log10(size[rows])) - hyde_bernardi_log_size_given_sigma(s))
        assert 1 / 1.3 < ratio < 1.3, (s, ratio)


def test_sizes_shrink_with_redshift_as_van_der_wel_2008():
    assert size_evolution(np.array([1.0]), np.array([1.0]))[0] == pytest.approx(1 / 1.97, rel=0.01)


def test_size_evolution_leaves_sizes_at_their_reference_redshift():
    """Sizes measured at z_ref (the SDSS plane's z ≈ 0.1) are unchanged there, and the
    ratio between two redshifts does not depend on z_ref."""
    z = np.array([0.1, 0.3, 1.0])
    size = size_evolution(np.full(3, 4.0), z, -0.98, reference_z=0.1)
    assert size[0] == pytest.approx(4.0)
    assert size[2] / size[1] == pytest.approx((2.0 / 1.3) ** -0.98)


def test_sersic_index_scatter_and_bounds():
    n = sersic_index(np.random.default_rng(2).standard_normal(100_000))
    assert np.median(n) == pytest.approx(4.0, rel=0.01) and n.min() >= 2 and n.max() <= 8


def test_light_is_misaligned_with_the_mass_by_ten_degrees_rms():
    rng = np.random.default_rng(3)
    n = 100_000
    e1, e2 = np.full(n, 0.2), np.zeros(n)  # mass at position angle 0, q = 2/3
    l1, l2 = light_ellipticity(e1, e2, rng.standard_normal((n, 2)))
    angle = np.rad2deg(0.5 * np.arctan2(l2, l1))
    assert angle.std() == pytest.approx(10.0, rel=0.03)
    q_light = (1 - np.hypot(l1, l2)) / (1 + np.hypot(l1, l2))
    assert np.median(q_light) == pytest.approx(2 / 3, rel=0.01)
    assert (q_light / (2 / 3)).std() == pytest.approx(0.11, rel=0.05)


def test_uv_luminosity_function_follows_the_measurements():
    m_star, alpha = uv_luminosity_function(np.array([0.055, 0.7, 3.05, 6.0]))
    np.testing.assert_allclose(m_star, [-18.05, -19.84, -20.97, -21.17])
    np.testing.assert_allclose(alpha, [-1.21, -1.60, -1.73, -1.76])


def test_uv_luminosity_function_has_the_evolution_arnouts_2005_state():
    """Arnouts et al. (2005) abstract: ΔM* ≈ −2.0 mag from z = 0 to 1 and ≈ −1.0 mag from
    z = 1 to 3; slopes −1.65 ≤ α ≤ −1.2 below z ≈ 1.2."""
    m_star, alpha = uv_luminosity_function(np.array([0.055, 0.3, 0.5, 0.7, 1.0, 3.05]))
    assert m_star[4] - m_star[0] == pytest.approx(-2.0, abs=0.15)
    assert m_star[5] - m_star[4] == pytest.approx(-1.0, abs=0.2)
    assert np.all((alpha[:5] >= -1.65) & (alpha[:5] <= -1.19))


@pytest.mark.parametrize("alpha", [-1.2, -1.73])
def test_schechter_sampler_matches_the_density(alpha):
    x = sample_schechter_offsets(alpha, (-2.0, 3.0), np.random.default_rng(4).random(200_000))
    grid = np.linspace(-2.0, 3.0, 11)
    fine = np.linspace(-2.0, 3.0, 20001)
    density = (10 ** (-0.4 * fine)) ** (alpha + 1) * np.exp(-(10 ** (-0.4 * fine)))
    expected = np.array(
        [density[(fine >= a) & (fine < b)].sum() for a, b in zip(grid[:-1], grid[1:], strict=True)]
    )
    counts, _ = np.histogram(x, grid)
    np.testing.assert_allclose(counts / counts.sum(), expected / expected.sum(), atol=0.004)


def _plane_covariance(plane=BERNARDI_2003_R):
    """(3, 3) covariance of (log R_e, log σ, μ_e) of the plane."""
    std = np.array([plane.std_log_size, plane.std_log_sigma, plane.std_surface_brightness])
    corr = np.array(
        [
            [1.0, plane.corr_size_sigma, plane.corr_size_sb],
            [plane.corr_size_sigma, 1.0, plane.corr_sigma_sb],
            [plane.corr_size_sb, plane.corr_sigma_sb, 1.0],
        ]
    )
    return corr * np.outer(std, std)


def test_bernardi_2003_gaussian_gives_their_published_plane_and_projections():
    """The trivariate Gaussian reproduces the r* relations Bernardi et al. (2003) state in
    their abstracts: the plane R_o ∝ σ^1.49±0.05 I_o^−0.75±0.01 (paper III, orthogonal
    fit = the covariance's smallest eigenvector) and σ ∝ L^0.25±0.012, R_o ∝ L^0.63±0.025,
    R_o ∝ I_o^−0.75±0.02 (paper II, regressions)."""
    cov = _plane_covariance()
    normal = np.linalg.eigh(cov)[1][:, 0]
    sigma_exponent = -normal[1] / normal[0]
    intensity_exponent = normal[2] / normal[0] / 0.4  # μ = −2.5 log10 I + const
    assert sigma_exponent == pytest.approx(1.49, abs=0.06)
    assert intensity_exponent == pytest.approx(-0.75, abs=0.02)
    log_l = np.array([2.0, 0.0, -0.4])  # log10 L = 2 log R − 0.4 μ + const
    var_l = log_l @ cov @ log_l
    assert (cov @ log_l)[1] / var_l == pytest.approx(0.25, abs=0.012)
    assert (cov @ log_l)[0] / var_l == pytest.approx(0.63, abs=0.025)
    assert cov[0, 2] / cov[2, 2] / 0.4 == pytest.approx(0.75, abs=0.02)


def _slacs_table():
    """The 59 SLACS lenses of Auger et al. (2009) (tests/data/slacs_auger2009.csv)."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / "slacs_auger2009.csv"
    return np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding=None, skip_header=4)


def _slacs_subset():
    """SLACS lenses with 0.1 ≤ z_l ≤ 0.35 and 200 ≤ σ ≤ 320 km/s (Auger et al. 2009)."""
    table = _slacs_table()
    z, sigma = table["z_lens"], table["sigma_v_kms"]
    return table[(z >= 0.1) & (z <= 0.35) & (sigma >= 200) & (sigma <= 320)]


def _petrosian_de_vaucouleurs():
    """(Petrosian flux / total flux, Petrosian half-light radius / R_e) of a circular
    de Vaucouleurs profile under SDSS's definitions (Blanton et al. 2001; Strauss et al.
    2002, §3.2): the Petrosian ratio is the mean surface brightness in the annulus
    0.8–1.25 r over the mean inside r; r_P is where it equals 0.2; the Petrosian flux is
    the flux inside 2 r_P. Seeing is ignored (it raises the fraction of small galaxies)."""
    from scipy.optimize import brentq
    from scipy.special import gammainc, gammaincinv

    b = gammaincinv(8, 0.5)

    def enclosed(r):  # fraction of the total flux inside r [R_e]
        return gammainc(8, b * r**0.25)

    def ratio(r):
        return (enclosed(1.25 * r) - enclosed(0.8 * r)) / (1.25**2 - 0.8**2) / enclosed(r)

    fraction = enclosed(2 * brentq(lambda r: ratio(r) - 0.2, 0.05, 50.0))
    return fraction, brentq(lambda r: enclosed(r) - fraction / 2, 1e-3, 10.0)


def _sdss_spectroscopic_target(g, r, i, size_arcsec):
    """Whether SDSS targeted a galaxy for spectroscopy, as SLACS's parent sample needs
    (Bolton et al. 2006: LRG and MAIN samples), from its total AB model magnitudes.

    MAIN: Petrosian r < 17.77 and Petrosian half-light surface brightness μ_50 < 24.5
    (Strauss et al. 2002, abstract). LRG Cut I (Eisenstein et al. 2001; as in SDSS
    SkyServer's sample query "SX10"): r_P < 19.2, r_P < 13.1 + c∥/0.3, |c⊥| < 0.2 and
    μ_50 < 24.2, with c∥ = 0.7(g−r) + 1.2(r−i−0.18), c⊥ = (r−i) − (g−r)/4 − 0.18 from
    model colours. Cut II (z > 0.4) is outside the SLACS subset's range.
    """
    fraction, half = _petrosian_de_vaucouleurs()
    petro = r - 2.5 * np.log10(fraction)
    mu_50 = petro + 2.5 * np.log10(2 * np.pi * (half * size_arcsec) ** 2)
    c_par = 0.7 * (g - r) + 1.2 * (r - i - 0.18)
    c_perp = (r - i) - (g - r) / 4 - 0.18
    main = (petro < 17.77) & (mu_50 < 24.5)
    lrg = (petro < 19.2) & (petro < 13.1 + c_par / 0.3) & (np.abs(c_perp) < 0.2) & (mu_50 < 24.2)
    return main | lrg


SLACS_COPIES = 200


@functools.lru_cache(maxsize=1)
def _drawn_like_slacs(copies=SLACS_COPIES):
    """Lenses drawn at the SLACS subset's own z_l and σ_v (``copies`` per lens, in lens
    order): (M_V, R_e [kpc], whether SDSS would have targeted them for spectroscopy).

    M_V is the drawn (passively evolved) M_r plus the rest-frame V − r of the mean red
    template (speclite); SDSS g, r, i are the drawn M_r through the same template with
    the lens's drawn effective A_V (its colour offset), at the drawn distance modulus.
    """
    import speclite.filters
    import torch

    from sbi_lens.config import SimulationConfig
    from sbi_lens.cosmology import distance_table
    from sbi_lens.photometry import (
        HERBEL_RED,
        LENS_REFERENCE,
        cached_photometry,
        kcorrect_templates,
    )
    from sbi_lens.population import LENS_DUST_GRID, draw_population

    slacs = _slacs_subset()
    config = SimulationConfig()
    table = distance_table(config.prior.cosmology)
    z = np.repeat(slacs["z_lens"].astype(float), copies)
    sigma = np.repeat(slacs["sigma_v_kms"].astype(float), copies)
    theta = np.column_stack([z, z + 0.5, np.full(z.size, 1.2), sigma])
    population = draw_population(
        theta, config.population, config.survey, table, np.random.default_rng(3)
    )
    wavelength, templates = kcorrect_templates()
    weights = HERBEL_RED.alpha(np.array([0.0]))[0] * np.asarray(HERBEL_RED.weight)
    old = weights @ templates
    v_minus_r = speclite.filters.load_filter("bessell-V").get_ab_magnitude(
        old, wavelength
    ) - speclite.filters.load_filter("sdss2010-r").get_ab_magnitude(old, wavelength)
    abs_mag_r = population.column("lens_abs_mag_r")
    size_arcsec = population.column("lens_R_sersic")
    sdss = cached_photometry(
        ("speclite:sdss2010-g", "speclite:sdss2010-r", "speclite:sdss2010-i"),
        LENS_REFERENCE,
        dust_grid=tuple(LENS_DUST_GRID),
        z_max=0.5,
    )
    g, r, i = sdss.magnitudes(
        np.tile(weights / weights.sum(), (z.size, 1)),
        z,
        abs_mag_r,
        table.distance_modulus(torch.as_tensor(z)).numpy(),
        population.column("lens_dust_av"),
    ).T
    size = size_arcsec / table.cosmology.arcsec_per_kpc_proper(z).value
    return abs_mag_r + v_minus_r, size, _sdss_spectroscopic_target(g, r, i, size_arcsec)


def _median_one_per_lens(values, keep, copies=SLACS_COPIES):
    """Median of ``values`` over ``keep`` with equal total weight for each SLACS lens:
    the median of a sample that has one targeted galaxy at each lens's (z_l, σ_v)."""
    keep = keep.reshape(-1, copies)
    weight = (keep / keep.sum(axis=1, keepdims=True)).ravel()
    order = np.argsort(values)
    cumulative = np.cumsum(weight[order])
    return values[order][np.searchsorted(cumulative, cumulative[-1] / 2)]


def test_petrosian_magnitude_of_a_de_vaucouleurs_profile():
    """SDSS Petrosian magnitudes hold ≈ 80 % of a de Vaucouleurs galaxy's flux (Blanton
    et al. 2001; Strauss et al. 2002), within a half-light radius ≈ 0.7 R_e."""
    fraction, half = _petrosian_de_vaucouleurs()
    assert fraction == pytest.approx(0.80, abs=0.03)
    assert 0.6 < half < 0.8


def test_auger_2009_luminosities_are_at_the_observed_epoch():
    """The tabulated M_V are not evolution-corrected to z = 0: at fixed stellar mass,
    log M*/L_V falls with z_l as old populations fade (−0.4 × the population's passive
    brightening, 1.2 mag per unit z: −0.48 dex), and it would not if L_V had been
    corrected."""
    from sbi_lens.config import PopulationConfig

    table = _slacs_table()
    z, log_mass = table["z_lens"], table["log_Mstar_chab"]
    log_ml = log_mass + 0.4 * (table["M_V"] - 4.83)  # M_V,sun = 4.83
    design = np.column_stack([np.ones_like(z), z, log_mass - 11.3])
    coefficients, *_ = np.linalg.lstsq(design, log_ml, rcond=None)
    residual = log_ml - design @ coefficients
    error = np.sqrt(np.linalg.inv(design.T @ design)[1, 1] * residual.var(ddof=3))
    assert coefficients[1] < -2 * error  # falls: not corrected to z = 0
    fading = -0.4 * PopulationConfig().lens_evolution
    assert abs(coefficients[1] - fading) < 2 * error  # as passive evolution predicts


def test_sdss_target_selection_makes_lenses_larger_and_brighter_at_fixed_sigma():
    """At each SLACS lens's (z_l, σ_v) the flux limit keeps the brighter members of the
    plane, which are also the larger ones."""
    magnitude, size, keep = _drawn_like_slacs()
    assert 0.3 < keep.mean() < 0.95
    assert _median_one_per_lens(magnitude, keep) < np.median(magnitude) - 0.2
    assert _median_one_per_lens(size, keep) > 1.15 * np.median(size)


def test_slacs_like_lenses_have_the_luminosity_of_auger_2009():
    """Median rest-frame M_V of lenses drawn at the SLACS subset's (z_l, σ_v) and targeted
    by SDSS is within 0.3 mag of the subset's median (Auger et al. 2009; −22.64 for 42
    lenses). Both at the observed epoch (see the test above)."""
    slacs = _slacs_subset()
    assert len(slacs) == 42
    magnitude, _, keep = _drawn_like_slacs()
    median = _median_one_per_lens(magnitude, keep)
    assert median == pytest.approx(np.median(slacs["M_V"]), abs=0.3)


def test_slacs_like_lenses_have_the_size_of_auger_2009():
    """Median R_e of the same SLACS-like lenses within 30 % of the subset's median (6.9 kpc)."""
    slacs = _slacs_subset()
    _, size, keep = _drawn_like_slacs()
    ratio = _median_one_per_lens(size, keep) / np.median(slacs["R_e_kpc"])
    assert 1 / 1.3 < ratio < 1.3
