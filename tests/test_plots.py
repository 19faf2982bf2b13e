"""Figures are written, non-trivial, and have the expected panels."""

import csv
import math
from pathlib import Path

import matplotlib.image
import pytest
import torch
from torch.distributions import Normal

from sbi_lens.diagnostics import run_diagnostics
from sbi_lens.plots import (
    plot_coverage,
    plot_montage,
    plot_posterior_corner,
    plot_predicted_vs_true,
    plot_sbc_ranks,
    plot_tarp_curve,
    plot_training_curve,
    write_report_figures,
)

MIN_BYTES = 10_000


class _Posterior:
    """Slightly over-confident Gaussian posterior of θ ~ N(0, I), x = θ + 0.5 ε."""

    def _dist(self, x):
        return Normal(x / 1.25, 0.8 * math.sqrt(0.2))

    def sample_batched(self, sample_shape, x, **kwargs):
        return self._dist(x).sample(sample_shape)

    def log_prob_batched(self, theta, x, **kwargs):
        return self._dist(x).log_prob(theta).sum(-1)


@pytest.fixture(scope="module")
def report():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(200, 4, generator=gen)
    x = theta + 0.5 * torch.randn(200, 4, generator=gen)
    return run_diagnostics(_Posterior(), theta, x, num_samples=200, c2st=False, seed=0)


def _check_png(path: Path) -> None:
    assert path.suffix == ".png" and path.is_file()
    assert path.stat().st_size > MIN_BYTES
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 200


def _count_axes(path: Path, builder) -> int:
    """Number of visible axes of the figure a plot function saves."""
    import matplotlib.figure

    seen = []
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen.append(sum(ax.get_visible() for ax in fig.axes))
        return original(fig, *args, **kwargs)

    matplotlib.figure.Figure.savefig = spy
    try:
        builder(path)
    finally:
        matplotlib.figure.Figure.savefig = original
    _check_png(path)
    return seen[-1]


def test_predicted_vs_true_has_four_panels(report, tmp_path):
    n = _count_axes(
        tmp_path / "pvt.png",
        lambda p: plot_predicted_vs_true(
            report.estimates, p, parameter_names=report.parameter_names
        ),
    )
    assert n == 4


def test_coverage_plot(report, tmp_path):
    assert _count_axes(tmp_path / "cov.png", lambda p: plot_coverage(report.coverage, p)) == 1


def test_sbc_hist_has_one_panel_per_parameter(report, tmp_path):
    n = _count_axes(
        tmp_path / "sbc.png",
        lambda p: plot_sbc_ranks(report.sbc, p, parameter_names=report.parameter_names),
    )
    assert n == 4
    _check_png(
        plot_sbc_ranks(
            report.sbc, tmp_path / "cdf.png", parameter_names=report.parameter_names, kind="cdf"
        )
    )


def test_tarp_plot(report, tmp_path):
    assert _count_axes(tmp_path / "tarp.png", lambda p: plot_tarp_curve(report.tarp, p)) == 1


def test_corner_plot(report, tmp_path):
    samples = torch.randn(500, 4)
    n = _count_axes(
        tmp_path / "corner.png",
        lambda p: plot_posterior_corner(
            samples, report.estimates.theta[0], p, parameter_names=report.parameter_names
        ),
    )
    assert n >= 4  # diagonal plus upper triangle (sbi may hide the lower one)


def test_training_curve_from_csv_and_mapping(tmp_path):
    csv_path = tmp_path / "history.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "val_loss"])
        for e in range(1, 11):
            w.writerow([e, 5 / e, 5 / e + 0.1 * e / 10])
    _check_png(plot_training_curve(csv_path, tmp_path / "a.png"))
    _check_png(plot_training_curve({"train_loss": [3.0, 2.0, 1.5]}, tmp_path / "b.png"))
    with pytest.raises(ValueError, match="train_loss"):
        plot_training_curve({"loss": [1.0]}, tmp_path / "c.png")


def test_montage(tmp_path):
    x = torch.rand(6, 3, 24, 24)
    theta = torch.tensor([[0.5, 2.0, 1.2, 250.0]]).repeat(6, 1)
    _check_png(plot_montage(x, theta, out=tmp_path / "m.png", bands=["g", "r", "i"]))
    _check_png(plot_montage(x[:, :1], theta, out=tmp_path / "m1.png"))
    with pytest.raises(ValueError, match="theta"):
        plot_montage(x, theta[:, :3], out=tmp_path / "bad.png")


def test_write_report_figures(report, tmp_path):
    paths = write_report_figures(
        report,
        tmp_path / "report",
        lens_samples=torch.randn(300, 4),
        lens_index=1,
        history={"epoch": [1, 2, 3], "train_loss": [3, 2, 1], "val_loss": [3.2, 2.4, 2.0]},
    )
    assert set(paths) == {
        "predicted_vs_true", "coverage", "sbc_ranks", "tarp", "posterior_corner",
        "training_curve",
    }  # fmt: skip
    for path in paths.values():
        assert path.parent == tmp_path / "report"
        _check_png(path)
    with pytest.raises(ValueError, match="lens_index"):
        write_report_figures(report, tmp_path, lens_samples=torch.randn(10, 4), lens_index=999)


def test_no_figures_left_open(report, tmp_path):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    write_report_figures(report, tmp_path)
    assert len(plt.get_fignums()) == before


def test_colour_residual_removes_the_lens_and_keeps_a_blue_arc():
    """A red lens seen with a wider PSF in the blue band vanishes from the colour-
    difference image; a blue arc at 1.2″ stays at full brightness."""
    import numpy as np

    from sbi_lens.display import colour_residual

    yy, xx = np.mgrid[:48, :48] - 24.0
    r2 = xx**2 + yy**2
    red_lens = 100 * np.exp(-r2 / (2 * 2.0**2))
    blue_lens = 30 * np.exp(-r2 / (2 * 2.2**2)) * (2.0 / 2.2) ** 2  # same flux ratio, wider PSF
    arc = 2 * np.exp(-((np.sqrt(r2) - 6.0) ** 2) / 2.0) * (xx > 0)
    noise = np.random.default_rng(0).normal(0, 0.05, (2, 48, 48))
    shown = colour_residual(blue_lens + arc + noise[0], red_lens + 0.1 * arc + noise[1])
    assert shown[24, 24] < 0.2  # lens core removed
    assert np.median(shown[(np.abs(np.sqrt(r2) - 6) < 1) & (xx > 2)]) > 0.6  # arc kept


def test_psf_matched_colour_residual_removes_a_lens_seen_with_moffat_psfs():
    """With the bands' PSFs known, cross-convolution makes the lens vanish to rounding,
    where the two-term blur model leaves a ring from the Moffat wings."""
    import numpy as np

    from sbi_lens.display import colour_residual
    from sbi_lens.psf import convolve, psf_kernel

    yy, xx = np.mgrid[:64, :64] - 32.0
    lens = 1e3 * np.exp(-7.67 * ((np.hypot(xx, yy) / 8.0) ** 0.25 - 1))  # de Vaucouleurs
    blue_psf, red_psf = (psf_kernel("moffat", fwhm, 0.2, beta=4.765) for fwhm in (0.9, 0.6))
    blue, red = 0.3 * convolve(lens, blue_psf), convolve(lens, red_psf)
    arc = 3 * np.exp(-((np.hypot(xx, yy) - 8.0) ** 2) / 2.0) * (xx > 0)
    noise = np.random.default_rng(0).normal(0, 0.05, (2, 64, 64))
    matched = colour_residual(blue + arc + noise[0], red + noise[1], (blue_psf, red_psf))
    ring = (np.abs(np.hypot(xx, yy) - 8) < 1.5) & (xx < -2)  # where there is no arc
    on_arc = (np.abs(np.hypot(xx, yy) - 8) < 1) & (xx > 2)
    assert np.median(matched[on_arc]) > 0.5
    assert np.median(matched[ring]) < 0.25
