import time

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.constants import c
from astropy.cosmology import FlatLambdaCDM, LambdaCDM, Planck18

from sbi_lens.cosmology import DistanceTable, einstein_radius, get_cosmology


@pytest.fixture(scope="module")
def redshift_pairs():
    rng = np.random.default_rng(1)
    z_lens = rng.uniform(0.05, 1.5, 2000)
    z_source = z_lens + rng.uniform(0.05, 3.0, 2000)
    return z_lens, z_source


@pytest.mark.parametrize(
    "cosmology",
    [FlatLambdaCDM(H0=70, Om0=0.3), Planck18, LambdaCDM(H0=68, Om0=0.3, Ode0=0.6)],
    ids=["flat", "planck18", "open"],
)
def test_distances_agree_with_astropy(cosmology, redshift_pairs):
    z_lens, z_source = redshift_pairs
    table = DistanceTable(cosmology)
    zl, zs = torch.tensor(z_lens), torch.tensor(z_source)
    pairs = [
        (table.angular_diameter_distance(zs), cosmology.angular_diameter_distance(z_source)),
        (table.luminosity_distance(zl), cosmology.luminosity_distance(z_lens)),
        (
            table.angular_diameter_distance_z1z2(zl, zs),
            cosmology.angular_diameter_distance_z1z2(z_lens, z_source),
        ),
    ]
    for mine, reference in pairs:
        np.testing.assert_allclose(mine.numpy(), reference.to(u.Mpc).value, rtol=1e-6)
    np.testing.assert_allclose(
        table.distance_modulus(zl).numpy(), cosmology.distmod(z_lens).value, atol=1e-6
    )


def test_einstein_radius_matches_direct_formula(redshift_pairs):
    z_lens, z_source = redshift_pairs
    cosmology = FlatLambdaCDM(H0=70, Om0=0.3)
    sigma_v = np.linspace(150, 400, len(z_lens))
    scatter = np.linspace(0.9, 1.1, len(z_lens))
    d_ls = cosmology.angular_diameter_distance_z1z2(z_lens, z_source)
    d_s = cosmology.angular_diameter_distance(z_source)
    expected = (
        scatter**2
        * 4
        * np.pi
        * ((sigma_v * u.km / u.s) / c).decompose().value ** 2
        * (d_ls / d_s).decompose().value
        * u.rad.to(u.arcsec)
    )
    mine = einstein_radius(
        torch.tensor(sigma_v), torch.tensor(z_lens), torch.tensor(z_source), torch.tensor(scatter)
    )
    np.testing.assert_allclose(mine.numpy(), expected, rtol=1e-6)


def test_vectorised_speed():
    table = DistanceTable()
    n = 100_000
    z_lens = torch.rand(n, dtype=torch.float64) + 0.1
    z_source = z_lens + 0.3 + 2 * torch.rand(n, dtype=torch.float64)
    sigma_v = 180 + 170 * torch.rand(n, dtype=torch.float64)
    table.einstein_radius_sis(sigma_v, z_lens, z_source)
    start = time.perf_counter()
    table.einstein_radius_sis(sigma_v, z_lens, z_source)
    assert time.perf_counter() - start < 0.5


def test_cosmology_names():
    assert get_cosmology("Planck18") is Planck18
    flat = get_cosmology("FlatLambdaCDM(H0=67.5, Om0=0.31)")
    assert flat.H0.value == 67.5 and flat.Om0 == 0.31
    with pytest.raises(ValueError, match="unknown name"):
        get_cosmology("Planck99")
    with pytest.raises(ValueError, match="H0 and Om0"):
        get_cosmology("FlatLambdaCDM(H0=70)")


def test_out_of_range_redshift_is_refused():
    with pytest.raises(ValueError, match="outside the tabulated range"):
        DistanceTable(z_max=5).comoving_distance(torch.tensor([6.0]))
