"""sbi-lens: amortized inference of strong-lens parameters with sbi."""

__version__ = "0.1.0"

PARAMETER_NAMES = ("z_lens", "z_source", "theta_E", "sigma_v")
PARAMETER_LABELS = ("$z_l$", "$z_s$", r"$\theta_E$ [arcsec]", r"$\sigma_v$ [km/s]")
