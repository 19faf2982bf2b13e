"""Neural networks: the image embedding and the spline-flow estimator."""

from sbi_lens.nn.embedding import LensResNet
from sbi_lens.nn.flow import SplineFlow, SupportBijection, spline_flow

__all__ = ["LensResNet", "SplineFlow", "SupportBijection", "spline_flow"]
