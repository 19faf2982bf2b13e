"""Residual CNN that embeds multi-band lens cutouts into a feature vector.

Input scaling is part of the network: ``asinh((x - offset_b) / scale_b)`` per band b,
with offset/scale (sky level and noise level) fixed from training data by
:meth:`LensResNet.fit_scaling`. The asinh stretch is linear around the noise level
and logarithmic for bright pixels, so faint arcs and a bright lens galaxy both land
in a range a CNN handles (astronomers use the same stretch for display,
Lupton et al. 1999).

Symmetry: θ does not change when a cutout is rotated by k·90° or flipped. With
``symmetry="d4"`` the network is invariant to these eight transforms by construction
(group pooling: the trunk embeds all eight views and their pooled features are
averaged over the group before the linear head), so the symmetry holds in any
training loop, sbi's own included, not only where images are augmented.
``"c4"`` averages over the four rotations only (half the cost; not flip-invariant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["SYMMETRIES", "LensResNet"]

_MAD_TO_SIGMA = 1.4826  # MAD → σ for Gaussian noise
SYMMETRIES = ("none", "c4", "d4")


def _elements(symmetry: str, square: bool = True) -> list[tuple[bool, int]]:
    """The group's elements as (flip, quarter turns), flip-major, rotation-minor (so
    elements with an odd number of quarter turns, which swap H and W, sit at odd
    indices); only those that keep the shape when ``square`` is False."""
    flips = (False, True) if symmetry == "d4" else (False,)
    return [(f, k) for f in flips for k in range(4) if square or k % 2 == 0]


def _view(x: Tensor, flip: bool, turns: int) -> Tensor:
    """``x`` (…, H, W) flipped left-right (if ``flip``), then turned ``turns`` × 90°."""
    return torch.rot90(torch.flip(x, dims=(-1,)) if flip else x, turns, dims=(-2, -1))


def _group_views(x: Tensor, symmetry: str) -> list[Tensor]:
    """The views of ``x`` (B, C, H, W) the group pooling averages over, in the order
    of :func:`_elements`."""
    return [_view(x, f, k) for f, k in _elements(symmetry)]


def _random_view(x: Tensor) -> Tensor:
    """Each image of ``x`` (B, C, H, W) in one of its D4 views, drawn uniformly (only
    the views of the same shape for H ≠ W) from torch's global RNG; each image is
    transformed once."""
    elements = _elements("d4", square=x.shape[-1] == x.shape[-2])
    pick = torch.randint(len(elements), (x.shape[0],), device=x.device)
    out = torch.empty_like(x)
    for index, (flip, turns) in enumerate(elements):
        rows = (pick == index).nonzero(as_tuple=True)[0]
        if len(rows):
            out[rows] = _view(x[rows], flip, turns)
    return out


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'group', 'batch' or 'none', got {kind!r}.")


class _BasicBlock(nn.Module):
    """Two 3×3 convolutions with a skip connection (1×1 conv when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
        )
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(norm, c_out)
            )
        else:
            self.skip = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.skip(x))


class LensResNet(nn.Module):
    """Residual CNN embedding for ``(bands, H, W)`` cutouts, any H, W ≥ ``min_size``.

    Layout: asinh input scaling → strided 5×5 stem (halves H, W) → one stage per
    entry of ``widths`` (each after the first halves H, W) → global average and max
    pooling → linear layer to ``out_features``.

    Args:
        in_bands: Number of bands (channels) the images have.
        out_features: Length of the embedding vector.
        widths: Channels per stage.
        blocks_per_stage: Residual blocks per stage.
        norm: ``"batch"`` (default), ``"group"`` (batch-size independent, the same
            in train and eval) or ``"none"``. Batch norm generalises far better: on
            2,000 one-band lenses, held-out log q 1.386 against 1.042 with group norm
            in sbi's loop (both augmented), 1.501 against 1.191 with ``sbi-lens
            train`` (docs/estimator.md). Like any batch norm it uses its running
            statistics in eval mode, which sbi's posteriors and sbi-lens set.
        min_size: Smallest accepted image side in pixels.
        symmetry: ``"none"`` (default), ``"d4"`` (exactly invariant to the 8 rotations
            and flips, at 8× the trunk's cost) or ``"c4"`` (to the 4 rotations, 4×).
        augment: in training mode (default on), pass each image through one random
            rotation or flip of the square (uniform over the 8; over the 4 that keep H
            and W for non-square images) before the trunk: data augmentation inside
            the network, so that any loop that trains it (sbi's ``NPE.train``
            included) learns the lens parameters' invariance, as ``sbi-lens train``
            does with its own (seeded) augmentation, which builds the network with
            ``augment=False``. Eval mode is unaffected. Draws from torch's global RNG.
    """

    def __init__(
        self,
        in_bands: int = 3,
        out_features: int = 64,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
        norm: str = "batch",
        min_size: int = 32,
        symmetry: str = "none",
        augment: bool = True,
    ) -> None:
        super().__init__()
        if symmetry not in SYMMETRIES:
            raise ValueError(f"symmetry must be one of {', '.join(SYMMETRIES)}; got {symmetry!r}.")
        if in_bands < 1:
            raise ValueError(f"in_bands must be >= 1, got {in_bands}.")
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}.")
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}.")
        self.in_bands = in_bands
        self.out_features = out_features
        self.min_size = min_size
        self.symmetry = symmetry
        self.augment = bool(augment)

        self.register_buffer("offset", torch.zeros(in_bands))
        self.register_buffer("scale", torch.ones(in_bands))
        self.register_buffer("fitted", torch.tensor(False))

        self.stem = nn.Sequential(
            nn.Conv2d(in_bands, widths[0], 5, stride=2, padding=2, bias=False),
            _norm(norm, widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(_BasicBlock(c_in, c_out, stride, norm))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(2 * c_in, out_features)

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit_scaling` has set the input scaling."""
        return bool(self.fitted)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"LensResNet expects images of shape (batch, bands, H, W); got a "
                f"tensor of rank {x.dim()} with shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_bands:
            raise ValueError(
                f"LensResNet was built for {self.in_bands} band(s); got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})."
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"images must be at least {self.min_size}×{self.min_size} pixels; got "
                f"{x.shape[-2]}×{x.shape[-1]}."
            )

    @torch.no_grad()
    def fit_scaling(
        self,
        x: Tensor,
        max_pixels: int = 2_000_000,
        generator: torch.Generator | None = None,
    ) -> LensResNet:
        """Fix per-band offset (median) and scale (1.4826 × MAD, i.e. noise σ) from data.

        Falls back to the standard deviation, then to 1, for bands whose MAD is 0
        (e.g. noiseless simulations).

        Args:
            x: Training images, shape ``(N, bands, H, W)``, in the survey's flux units.
            max_pixels: At most this many pixels per band are used (random subset).
            generator: Source of randomness for the subset.

        Returns:
            ``self``, with the buffers ``offset``, ``scale`` (shape ``(bands,)``) set.
        """
        self._check(x)
        pixels = x.detach().float().transpose(0, 1).reshape(self.in_bands, -1)
        if not torch.isfinite(pixels).all():
            raise ValueError("fit_scaling got non-finite pixel values (NaN or inf).")
        if pixels.shape[1] > max_pixels:
            idx = torch.randperm(pixels.shape[1], generator=generator)[:max_pixels]
            pixels = pixels[:, idx]
        offset = pixels.median(dim=1).values
        mad = (pixels - offset[:, None]).abs().median(dim=1).values
        scale = _MAD_TO_SIGMA * mad
        std = pixels.std(dim=1)
        scale = torch.where(scale > 0, scale, std)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.offset.copy_(offset)
        self.scale.copy_(scale)
        self.fitted.fill_(True)
        return self

    def scale_input(self, x: Tensor) -> Tensor:
        """``asinh((x - offset) / scale)`` per band; shape preserved."""
        return torch.asinh((x - self.offset[:, None, None]) / self.scale[:, None, None])

    def forward(self, x: Tensor) -> Tensor:
        """Embed images.

        Args:
            x: Images of shape ``(batch, bands, H, W)`` in flux units.

        Returns:
            Features of shape ``(batch, out_features)``.
        """
        self._check(x)
        z = self.scale_input(x)  # per-pixel, so it commutes with rotations and flips
        if self.augment and self.training:
            z = _random_view(z)
        pooled = self._pooled(z) if self.symmetry == "none" else self._group_pooled(z)
        return self.head(pooled)

    def _pooled(self, z: Tensor) -> Tensor:
        """Trunk + global mean and max pooling: (B, bands, H, W) → (B, 2·channels)."""
        h = self.stages(self.stem(z))
        return torch.cat((h.mean(dim=(-2, -1)), h.amax(dim=(-2, -1))), dim=-1)

    def _group_pooled(self, z: Tensor) -> Tensor:
        """Pooled features averaged over the group's views of each image.

        The mean over a group orbit is the same whichever view of the image came in,
        so the result is invariant whatever the trunk does (strided convolutions are
        not equivariant on even grids; the average does not need them to be). The
        views run as one batch (|G|·B, bands, H, W); non-square images in two, since
        a quarter turn swaps H and W. With BatchNorm in training mode each pass still
        holds whole orbits, so the batch statistics, too, are the same for any view.
        """
        views = _group_views(z, self.symmetry)
        square = z.shape[-1] == z.shape[-2]
        passes = [views] if square else [views[0::2], views[1::2]]
        total = 0.0
        for group in passes:
            features = self._pooled(torch.cat(group))
            total = total + features.unflatten(0, (len(group), z.shape[0])).sum(dim=0)
        return total / len(views)
