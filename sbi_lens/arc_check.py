"""Is there a lensed source in the cutout? A calibrated "no arc" p-value.

The embedding's out-of-distribution test (:mod:`sbi_lens.ood`) compares whole-image
features; an arc carries a few per cent of a cutout's light, so a plain elliptical
with its neighbours looks typical to it. This check asks the question directly: a
small CNN, trained at the end of training on pairs of training lenses and the same
lenses re-rendered without their source (:mod:`sbi_lens.arc_render`), scores how
much a cutout looks like "no arc". It sees each band and, as a colour-difference
lens search does (RingFinder, Gavazzi et al. 2014), each band minus the lens modelled
from the reddest one, where a blue arc stands out of the red lens light.

The score is calibrated like the embedding test: against validation lenses (with
their arcs) the classifier never learnt from, the conformal p-value

    p = (1 + #{null scores ≥ s}) / (1 + n_null)

is valid for a new cutout of the same simulation whatever the classifier learnt
(P(p ≤ α) ≤ α); a good classifier only makes it small for cutouts without an arc.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from sbi_lens.ood import conformal_pvalues

__all__ = [
    "ARC_EPOCHS",
    "ARC_RINGS",
    "ARC_TRAIN_LENSES",
    "ARC_WIDTH",
    "ArcClassifier",
    "ArcReference",
    "annulus_weights",
    "arc_inputs",
    "colour_residuals",
    "fit_arc_reference",
    "train_arc_classifier",
]

#: Channels of the classifier's first layer (the others have twice as many).
ARC_WIDTH = 16
#: Rings around the lens the evidence map is averaged over (1 map pixel wide each).
ARC_RINGS = 8
#: Passes over the training pairs.
ARC_EPOCHS = 10
#: Training lenses re-rendered without their source for the classifier (at most).
ARC_TRAIN_LENSES = 4096
_PAIRS_PER_BATCH = 64
_LEARNING_RATE = 3e-3
_MAD_TO_SIGMA = 1.4826


def _laplacian(image: Tensor) -> Tensor:
    """(N, H, W) five-point Laplacian, zero-padded."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=image.dtype)
    return nn.functional.conv2d(image[:, None], kernel[None, None], padding=1)[:, 0]


def colour_residuals(x: Tensor) -> Tensor:
    """(N, bands - 1, H, W) each band but the reddest, minus the lens modelled from it.

    The lens model is a·red + b·∇²red + c·∇⁴red: its colour, and the difference of the
    bands' PSFs to second order (a wider PSF is the sharper image plus multiples of
    its Laplacians; the PSFs are not known at inference). It is fitted by least squares
    on the central 7×7 pixels, where the lens dominates, as
    :func:`sbi_lens.display.colour_residual` does with one term fewer.

    Args:
        x: (N, bands, H, W) images, bands ordered blue to red, the lens at the centre.
    """
    x = x.double()
    red = x[:, -1]
    h, w = red.shape[-2:]
    core = (slice(None), slice(h // 2 - 3, h // 2 + 4), slice(w // 2 - 3, w // 2 + 4))
    terms = [red, _laplacian(red)]
    terms.append(_laplacian(terms[1]))
    design = torch.stack([term[core].flatten(1) for term in terms], dim=-1)  # (N, 49, 3)
    out = []
    for band in range(x.shape[1] - 1):
        target = x[:, band][core].flatten(1)[..., None]  # (N, 49, 1)
        coef = torch.linalg.lstsq(design, target).solution[..., 0]  # (N, 3)
        model = sum(coef[:, j, None, None] * term for j, term in enumerate(terms))
        out.append(x[:, band] - model)
    return torch.stack(out, dim=1).float() if out else x[:, :0].float()


def arc_inputs(x: Tensor, offset: Tensor, scale: Tensor) -> Tensor:
    """(N, 2·bands - 1, H, W) classifier input: each band and each colour residual,
    divided by the band's noise scale and asinh-stretched.

    Args:
        x: (N, bands, H, W) images in the survey's flux units.
        offset, scale: (bands,) sky level and noise σ of each band.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    bands = torch.asinh((x - offset[:, None, None]) / scale[:, None, None])
    residuals = torch.asinh(colour_residuals(x) / scale[:-1, None, None])
    return torch.cat([bands, residuals], dim=1)


def annulus_weights(size: tuple[int, int], bins: int) -> Tensor:
    """(bins, H, W) weights that average a map over rings 1 pixel wide around its centre
    (ring b holds the pixels at distance b to b + 1; a ring without pixels weighs 0)."""
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2,
                            indexing="ij")  # fmt: skip
    radius = torch.hypot(yy, xx)
    rings = torch.stack([(radius >= b) & (radius < b + 1) for b in range(bins)]).float()
    return rings / rings.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)


class ArcClassifier(nn.Module):
    """Small CNN: a cutout's logit of "no lensed source".

    Two strided convolutions and one at a quarter of the resolution (5×5, 3×3, 3×3;
    GroupNorm, ReLU) make a map of arc evidence; it is averaged over rings around the
    lens (an arc lies on a ring of radius ≈ θ_E, so faint arcs add up along it) and
    its maximum taken (an arc anywhere counts); a two-layer head gives the logit. The
    input scaling (``offset``, ``scale``) is part of the module.

    Args:
        bands: bands of the cutouts.
        width: channels of the first layer (the others have twice as many).
        rings: rings of the map (of 1 map pixel = 4 image pixels each) averaged over.
    """

    def __init__(self, bands: int, width: int = ARC_WIDTH, rings: int = ARC_RINGS) -> None:
        super().__init__()
        self.bands, self.width, self.rings = bands, width, rings
        self.register_buffer("offset", torch.zeros(bands))
        self.register_buffer("scale", torch.ones(bands))

        def block(c_in: int, c_out: int, k: int, stride: int) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)
            return [conv, nn.GroupNorm(4, c_out), nn.ReLU()]

        self.trunk = nn.Sequential(
            *block(2 * bands - 1, width, 5, 2),
            *block(width, 2 * width, 3, 2),
            *block(2 * width, 2 * width, 3, 1),
        )
        features = 2 * width * (rings + 1)
        self.head = nn.Sequential(
            nn.Linear(features, 2 * width), nn.ReLU(), nn.Linear(2 * width, 1)
        )

    def fit_scaling(self, x: Tensor, max_pixels: int = 1_000_000) -> ArcClassifier:
        """Set ``offset`` (median) and ``scale`` (1.4826 × MAD) per band from images.

        Args:
            x: (N, bands, H, W) training images (the first pixels up to ``max_pixels``
                per band are used).
        """
        pixels = torch.as_tensor(x, dtype=torch.float32).transpose(0, 1).reshape(self.bands, -1)
        pixels = pixels[:, :max_pixels]
        offset = pixels.median(dim=1).values
        scale = _MAD_TO_SIGMA * (pixels - offset[:, None]).abs().median(dim=1).values
        self.offset.copy_(offset)
        self.scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))
        return self

    def pooled(self, inputs: Tensor) -> Tensor:
        """(N, 2·width·(rings + 1)) ring averages and maximum of the evidence map of
        (N, 2·bands - 1, H, W) :func:`arc_inputs`."""
        h = self.trunk(inputs)
        weights = annulus_weights(h.shape[-2:], self.rings).to(h)
        rings = torch.einsum("nchw,bhw->ncb", h, weights).flatten(1)
        return torch.cat([rings, h.amax(dim=(-2, -1))], dim=1)

    def forward(self, inputs: Tensor) -> Tensor:
        """(N,) logits from (N, 2·bands - 1, H, W) :func:`arc_inputs`."""
        return self.head(self.pooled(inputs))[:, 0]

    def logits(self, x, batch_size: int = 256) -> Tensor:
        """(N,) float64 "no arc" logits of (N, bands, H, W) images (numpy or tensor),
        averaged over the 8 rotations and flips of each (the classifier learnt all
        orientations; the average is less noisy than one view)."""
        return _batches(self, x, batch_size, self._d4_mean)

    def _d4_mean(self, inputs: Tensor) -> Tensor:
        views = [torch.rot90(inputs, turns, dims=(-2, -1)) for turns in range(4)]
        views += [view.flip(-1) for view in views]
        return torch.stack([self(view) for view in views]).mean(dim=0)


def _batches(module: ArcClassifier, x, batch_size: int, fn) -> Tensor:
    """``fn(inputs)`` over (N, bands, H, W) images in batches, in eval mode, as float64."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            parts = [
                fn(arc_inputs(np.asarray(x[i : i + batch_size]), module.offset, module.scale))
                for i in range(0, len(x), batch_size)
            ]
    finally:
        module.train(was_training)
    return torch.cat(parts).double() if parts else torch.empty(0, dtype=torch.float64)


def _d4(batch: Tensor, generator: torch.Generator) -> Tensor:
    """The batch rotated by a random multiple of 90° and flipped half the time."""
    turns = int(torch.randint(4, (1,), generator=generator))
    batch = torch.rot90(batch, turns, dims=(-2, -1))
    return batch.flip(-1) if bool(torch.rand(1, generator=generator) < 0.5) else batch


def train_arc_classifier(
    with_arc, without_arc, *, epochs: int = ARC_EPOCHS, width: int = ARC_WIDTH, seed: int = 0
) -> ArcClassifier:
    """Train the classifier on pairs: lens i with its arc (label 0) and without (label 1).

    Each batch holds both versions of the same lenses, so what separates them is the
    arc, not the lens; random rotations and flips (lenses have no preferred
    orientation) stretch the data. Adam with a one-cycle schedule.

    Args:
        with_arc: (N, bands, H, W) training cutouts.
        without_arc: (N, bands, H, W) the same lenses without their lensed source.
        epochs: passes over the pairs.
        width: channels of the first layer.
        seed: seed of the initial weights, batch order and augmentations.
    """
    with_arc = torch.as_tensor(np.asarray(with_arc), dtype=torch.float32)
    without_arc = torch.as_tensor(np.asarray(without_arc), dtype=torch.float32)
    if with_arc.shape != without_arc.shape or with_arc.dim() != 4 or len(with_arc) < 2:
        raise ValueError(
            f"with_arc has shape {tuple(with_arc.shape)} and without_arc "
            f"{tuple(without_arc.shape)}: need the same (N ≥ 2, bands, H, W) for both"
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ArcClassifier(with_arc.shape[1], width).fit_scaling(with_arc)
    inputs = torch.cat([arc_inputs(part, model.offset, model.scale)
                        for part in (with_arc, without_arc)])  # fmt: skip
    labels = torch.cat([torch.zeros(len(with_arc)), torch.ones(len(with_arc))])
    pairs = min(_PAIRS_PER_BATCH, len(with_arc))
    steps = max(epochs * (len(with_arc) // pairs), 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=_LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, _LEARNING_RATE, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(with_arc), generator=generator)
        for start in range(0, len(order) - pairs + 1, pairs):
            lenses = order[start : start + pairs]
            rows = torch.cat([lenses, lenses + len(with_arc)])
            batch = _d4(inputs[rows], generator)
            loss = nn.functional.binary_cross_entropy_with_logits(model(batch), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@dataclass(frozen=True)
class ArcReference:
    """The trained classifier and the calibrated null distribution of its score.

    Attributes:
        classifier: the :class:`ArcClassifier`.
        null_scores: (M,) "no arc" logits of held-out lenses with their arcs, ascending.
        num_train: lenses (each with and without its source) the classifier learnt from.
    """

    classifier: ArcClassifier
    null_scores: Tensor
    num_train: int = 0

    @classmethod
    def fit(cls, classifier: ArcClassifier, null, num_train: int = 0) -> ArcReference:
        """Calibrate ``classifier`` on (M ≥ 1, bands, H, W) held-out cutouts with arcs."""
        if len(null) < 1:
            raise ValueError("null has 0 cutouts: needs at least one held-out lens")
        return cls(classifier, torch.sort(classifier.logits(null)).values, int(num_train))

    @property
    def smallest_pvalue(self) -> float:
        """The smallest p-value the null set can give, ``1 / (1 + n_null)``."""
        return 1.0 / (1.0 + len(self.null_scores))

    def pvalues(self, x) -> np.ndarray:
        """(N,) p-values that each (bands, H, W) cutout holds a lensed source like the
        training lenses' (small: no arc seen)."""
        return conformal_pvalues(self.null_scores.numpy(), self.classifier.logits(x).numpy())

    def store_test(self, x) -> tuple[float, float]:
        """Whole-sample test: do these cutouts look less like "arc" than held-out lenses?

        Args:
            x: (N, bands, H, W) the sample's cutouts.

        Returns:
            (one-sided Mann-Whitney U p-value, share of cutouts with p < 0.05).
        """
        from scipy.stats import mannwhitneyu

        scores = self.classifier.logits(x).numpy()
        null = self.null_scores.numpy()
        pvalue = mannwhitneyu(scores, null, alternative="greater").pvalue
        fraction = float(np.mean(conformal_pvalues(null, scores) < 0.05))
        return float(pvalue), fraction

    def to_dict(self) -> dict:
        """Tensors and ints only, for ``torch.save`` / ``torch.load(weights_only=True)``."""
        return {
            "bands": self.classifier.bands,
            "width": self.classifier.width,
            "rings": self.classifier.rings,
            "state": self.classifier.state_dict(),
            "null_scores": self.null_scores,
            "num_train": self.num_train,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ArcReference:
        """Inverse of :meth:`to_dict`."""
        classifier = ArcClassifier(int(data["bands"]), int(data["width"]), int(data["rings"]))
        classifier.load_state_dict(data["state"])
        return cls(classifier.eval(), data["null_scores"].double(), int(data.get("num_train", 0)))


def fit_arc_reference(
    store,
    train_chunks,
    null_chunks,
    *,
    num_train: int = ARC_TRAIN_LENSES,
    num_null: int = 2048,
    epochs: int = ARC_EPOCHS,
    seed: int = 0,
) -> ArcReference | None:
    """The arc check of a trained model, from its training store.

    Args:
        store: the training :class:`~sbi_lens.store.SimulationStore`.
        train_chunks: chunks whose lenses are re-rendered without their source and
            train the classifier (training chunks).
        null_chunks: chunks held out from training (validation chunks): the null set.
        num_train: at most this many training pairs.
        num_null: at most this many null lenses.
        epochs: passes of the classifier over the pairs.
        seed: seed of the re-rendered noise and of the classifier's training.

    Returns:
        The reference, or None when the store's simulator cannot re-render its lenses
        (a store not written by :class:`~sbi_lens.simulator.LensSimulator`) or the
        chunks hold too few lenses (< 2 pairs, < 1 null lens).
    """
    from sbi_lens.arc_render import can_render, read_pairs
    from sbi_lens.ood import read_lenses

    if not can_render(store):
        return None
    rng = np.random.default_rng([seed, 0xA7C])
    with_arc, without_arc = read_pairs(store, train_chunks, num_train, rng)
    null = read_lenses(store, null_chunks, num_null)
    if len(with_arc) < 2 or len(null) < 1:
        return None
    classifier = train_arc_classifier(with_arc, without_arc, epochs=epochs, seed=seed)
    return ArcReference.fit(classifier, null, num_train=len(with_arc))
