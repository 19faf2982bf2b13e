"""Template photometry against independent references (speclite, sedpy, skypy)."""

import time

import numpy as np
import pytest

from sbi_lens import photometry as ph
from sbi_lens.surveys import SURVEYS, band_filters

LSST_GRI = ("speclite:lsst2023-g", "speclite:lsst2023-r", "speclite:lsst2023-i")
CHECKED = (*LSST_GRI, "speclite:Euclid-VIS", "sedpy:wfc3_ir_f160w")


@pytest.fixture(scope="module")
def lens_photometry():
    return ph.cached_photometry(CHECKED, ph.LENS_REFERENCE)


def _direct_magnitudes(c, z, abs_mag, mu, filters):
    """AB magnitudes of the redshifted spectrum by speclite / sedpy's own integration."""
    import speclite.filters
    from sedpy.observate import Filter, getSED

    wavelength, templates = ph.kcorrect_templates()
    rest = c @ templates  # f_λ at 10 pc per unit mass
    reference = speclite.filters.load_filter(ph.LENS_REFERENCE.split(":")[1])
    mass = 10 ** (-0.4 * abs_mag) / reference.get_ab_maggies(rest, wavelength)
    # f_λ(λ_obs) = L_λ(λ_obs / (1+z)) / (4π D_L² (1+z)), D_L = 10 pc · 10^(μ/5)
    observed = mass * rest * 10 ** (-0.4 * mu) / (1 + z)
    out = []
    for name in filters:
        scheme, _, curve = name.partition(":")
        if scheme == "speclite":
            band = speclite.filters.load_filter(curve)
            out.append(band.get_ab_magnitude(observed, wavelength * (1 + z)))
        else:
            out.append(np.ravel(getSED(wavelength * (1 + z), observed[None], [Filter(curve)]))[0])
    return np.array(out)


def test_tabulated_magnitudes_match_direct_integration(lens_photometry):
    rng = np.random.default_rng(3)
    z = rng.uniform(0.02, 2.5, 12)
    c = rng.dirichlet(np.ones(5), z.size)
    abs_mag = rng.uniform(-23, -19, z.size)
    mu = rng.uniform(36, 46, z.size)
    table = lens_photometry.magnitudes(c, z, abs_mag, mu)
    for k in range(z.size):
        direct = _direct_magnitudes(c[k], z[k], abs_mag[k], mu[k], CHECKED)
        np.testing.assert_allclose(table[k], direct, atol=0.01, err_msg=f"z={z[k]}")


def test_interpolation_error_between_grid_nodes():
    photometry = ph.TemplatePhotometry(LSST_GRI, ph.LENS_REFERENCE, z_max=1.5)
    wavelength, templates = ph.kcorrect_templates()
    z = np.expm1(photometry._dlnz * (np.arange(photometry.redshift.size - 1) + 0.5))
    exact = np.stack(
        [ph._band_maggies(ph.load_bandpass(f), z, wavelength, templates, False) for f in LSST_GRI],
        axis=-1,
    )
    c = np.random.default_rng(0).dirichlet(np.ones(5), z.size)
    band = np.einsum("nt,ntb->nb", c, exact) * (1 + z)[:, None]
    expected = -2.5 * np.log10(band / (c @ photometry._reference[0])[:, None])
    got = photometry.magnitudes(c, z, np.zeros(z.size), np.zeros(z.size))
    assert np.abs(got - expected).max() < 0.005


def test_k_correction_vanishes_at_zero_redshift():
    photometry = ph.TemplatePhotometry(("speclite:sdss2010-r",), ph.LENS_REFERENCE, z_max=0.1)
    c = np.random.default_rng(1).dirichlet(np.ones(5), 50)
    z = np.full(50, 1e-4)
    abs_mag, mu = np.full(50, -21.3), np.full(50, 35.0)
    observed = photometry.magnitudes(c, z, abs_mag, mu)[:, 0]
    np.testing.assert_allclose(observed, -21.3 + 35, atol=0.01)


def _sdss_red_colours(z):
    sdss = tuple(f"speclite:sdss2010-{b}" for b in "gri")
    photometry = ph.cached_photometry(sdss, ph.LENS_REFERENCE)
    rng = np.random.default_rng(7)
    medians = []
    for zz in z:
        zs = np.full(4000, zz)
        m = photometry.magnitudes(ph.HERBEL_RED.draw(zs, rng), zs, np.zeros(4000), np.zeros(4000))
        medians.append(np.median(m[:, :2] - m[:, 1:], axis=0))
    return np.array(medians)  # (nz, 2): g−r, r−i


def test_red_sequence_colour_track_is_smooth_and_realistic():
    # Observed SDSS colours of red galaxies: g−r ≈ 0.9 at z = 0.1, rising to ≈ 1.5–1.7
    # at z ≈ 0.4 (red-sequence / LRG tracks: Blanton et al. 2003; Eisenstein et al.
    # 2001, Fig. 1), r−i rising beyond z ≈ 0.4 as the 4000 Å break enters i.
    z = np.arange(0.1, 1.0001, 0.01)
    colours = _sdss_red_colours(z)
    assert np.abs(np.diff(colours, axis=0)).max() < 0.05
    g_r = colours[:, 0]
    assert 0.85 < g_r[0] < 1.0
    assert g_r[30] > g_r[0] + 0.4 and 1.4 < g_r[30] < 1.8
    assert colours[60, 1] > colours[30, 1] + 0.2


def test_igm_makes_a_g_dropout_at_z_3p5():
    filters = tuple(f"speclite:lsst2023-{b}" for b in "ugr")
    c = np.tile(np.array(ph.HERBEL_BLUE.alpha0) * ph.HERBEL_BLUE.weight, (1, 1))
    args = (c / c.sum(), np.array([3.5]), np.array([-21.0]), np.array([46.0]))
    clear = ph.TemplatePhotometry(filters, ph.SOURCE_REFERENCE, z_max=4).magnitudes(*args)[0]
    foggy = ph.TemplatePhotometry(filters, ph.SOURCE_REFERENCE, igm=True, z_max=4)
    u, g, r = foggy.magnitudes(*args)[0]
    assert u - g > 2.5 and g - r > 0.5
    assert r == pytest.approx(clear[2], abs=0.01)  # r (rest 1230–1600 Å) barely absorbed
    assert g - r > clear[1] - clear[2] + 0.4


def test_madau_transmission_limits():
    assert ph.madau_igm_transmission(np.array([1216.0 * 3.01]), 2.0)[0] == 1.0
    blue = ph.madau_igm_transmission(np.array([1100.0 * 4.5, 850.0 * 4.5]), 3.5)
    assert 0.3 < blue[0] < 0.9 and blue[1] < 0.15  # Madau 1995, Fig. 3


def test_dust_reddens_and_interpolates_in_log_flux():
    grid = np.arange(0.0, 2.01, 0.1)
    photometry = ph.TemplatePhotometry(LSST_GRI, ph.SOURCE_REFERENCE, dust_grid=grid, z_max=3)
    exact = ph.TemplatePhotometry(
        LSST_GRI, ph.SOURCE_REFERENCE, dust_grid=(0.0, 0.55, 1.0), z_max=3
    )
    c = np.random.default_rng(2).dirichlet(np.ones(5), 20)
    z = np.full(20, 1.7)
    args = (c, z, np.full(20, -20.0), np.full(20, 45.0))
    at = photometry.magnitudes(*args, dust_av=np.full(20, 0.55))
    np.testing.assert_allclose(at, exact.magnitudes(*args, dust_av=np.full(20, 0.55)), atol=0.005)
    clear = photometry.magnitudes(*args, dust_av=np.zeros(20))
    assert np.all(np.diff(at - clear, axis=1) < 0)  # bluer bands dimmed more: redder


def test_dirichlet_model_matches_skypy_moments():
    from skypy.galaxies.spectrum import dirichlet_coefficients

    z = np.full(40000, 0.6)
    model = ph.HERBEL_BLUE
    ours = model.draw(z, np.random.default_rng(5))
    state = np.random.get_state()
    try:
        np.random.seed(11)
        theirs = dirichlet_coefficients(z, model.alpha0, model.alpha1, model.z1, model.weight)
    finally:
        np.random.set_state(state)
    error = 5 * theirs.std(axis=0) / np.sqrt(z.size)
    assert np.all(np.abs(ours.mean(axis=0) - theirs.mean(axis=0)) < error)
    np.testing.assert_allclose(ours.std(axis=0), theirs.std(axis=0), rtol=0.05)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0)


def test_draws_are_reproducible():
    z = np.linspace(0, 2, 7)
    a = ph.HERBEL_RED.draw(z, np.random.default_rng(9))
    np.testing.assert_array_equal(a, ph.HERBEL_RED.draw(z, np.random.default_rng(9)))


def test_ten_thousand_objects_in_three_bands_are_fast():
    photometry = ph.cached_photometry(LSST_GRI, ph.LENS_REFERENCE)
    rng = np.random.default_rng(4)
    z = rng.uniform(0.05, 2.0, 10_000)
    c = ph.HERBEL_RED.draw(z, rng)
    args = (c, z, np.full(z.size, -21.0), np.full(z.size, 42.0))
    photometry.magnitudes(*args)
    start = time.perf_counter()
    photometry.magnitudes(*args)
    assert time.perf_counter() - start < 0.1


def test_every_survey_band_has_a_loadable_filter_curve():
    for name, table in SURVEYS.items():
        for identifier in band_filters(name, tuple(table.bands)):
            bandpass = ph.load_bandpass(identifier)
            assert bandpass.response.max() > 0 and bandpass.wavelength[0] > 0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="filter 'speclite:nope'"):
        ph.load_bandpass("speclite:nope")
    photometry = ph.cached_photometry(LSST_GRI, ph.LENS_REFERENCE)
    with pytest.raises(ValueError, match="redshift"):
        photometry.magnitudes(np.ones((1, 5)), np.array([7.0]), np.zeros(1), np.zeros(1))
    with pytest.raises(ValueError, match="dust_av"):
        photometry.magnitudes(np.ones((1, 5)), np.ones(1), np.zeros(1), np.zeros(1), np.ones(1))
