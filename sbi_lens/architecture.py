"""The estimator a :class:`~sbi_lens.config.TrainConfig` describes: LensResNet + SplineFlow.

Two ways to get it, one architecture:

* :func:`build_estimator` for training: sbi's builder path, which fits the θ
  standardisation and the per-band image scaling on a batch of training data;
* :func:`rebuild_estimator` for loading: the same modules from hyperparameters alone,
  with placeholder normalisation buffers that ``load_state_dict`` then fills (the
  scaling of the embedding and the z-score of the flow are buffers in the state dict).
"""

from __future__ import annotations

import torch

from sbi_lens import PARAMETER_NAMES
from sbi_lens.config import SimulationConfig, TrainConfig

__all__ = ["build_estimator", "rebuild_estimator"]


def _embedding(train: TrainConfig, in_bands: int):
    from sbi_lens.nn.embedding import LensResNet

    return LensResNet(
        in_bands=in_bands,
        out_features=train.embedding.out_features,
        widths=train.embedding.widths,
        blocks_per_stage=train.embedding.blocks_per_stage,
        norm=train.embedding.norm,
        symmetry=train.embedding.symmetry,
        augment=False,  # the trainer augments the batches itself (seeded, switchable)
    )


def _flow_settings(train: TrainConfig) -> dict:
    return {
        "num_blocks": train.flow.num_blocks,
        "hidden_features": train.flow.hidden_features,
        "num_bins": train.flow.num_bins,
        "num_residual_blocks": train.flow.num_residual_blocks,
        "seed": train.seed,
    }


def build_estimator(
    simulation: SimulationConfig,
    train: TrainConfig,
    batch_theta: torch.Tensor,
    batch_x: torch.Tensor,
    prior=None,
):
    """Build a freshly initialised estimator, fitting its normalisation on a batch.

    Seeds torch's global generator with ``train.seed`` first, so the initial weights
    are a function of the config (a resumed run rebuilds the same start).

    Args:
        simulation: the store's simulation config (its prior sets the support).
        train: training config (architecture and seed).
        batch_theta: θ of a few hundred training lenses, (N, 4).
        batch_x: their images, (N, bands, H, W), in flux units.
        prior: the prior, when already built (default: ``LensPrior(simulation.prior)``).

    Returns:
        A :class:`~sbi_lens.nn.flow.SplineFlow` on the CPU.
    """
    from sbi_lens.nn.flow import spline_flow
    from sbi_lens.priors import LensPrior

    prior = prior if prior is not None else LensPrior(simulation.prior)
    torch.manual_seed(train.seed)
    embedding = _embedding(train, in_bands=batch_x.shape[1])
    # Per-band scales from a quarter-million pixels are as good as from all of them.
    embedding.fit_scaling(batch_x, max_pixels=250_000, generator=torch.Generator().manual_seed(0))
    builder = spline_flow(
        prior=prior,
        embedding_net=embedding,
        weight_average_epochs=train.weight_average_epochs,
        **_flow_settings(train),
    )
    return builder(batch_theta, batch_x)


def rebuild_estimator(
    simulation: SimulationConfig,
    train: TrainConfig,
    num_bands: int,
    image_shape: tuple[int, int],
    prior=None,
):
    """The estimator's modules from hyperparameters alone: no data, no dummy batch.

    The weights and the normalisation buffers are placeholders until
    ``load_state_dict`` fills them. torch's global generator is left untouched.

    Args:
        simulation: simulation config the model was trained for (its prior).
        train: training config the model was trained with (architecture, seed).
        num_bands: number of image bands.
        image_shape: (H, W) in pixels.
        prior: the prior, when already built (default: ``LensPrior(simulation.prior)``).

    Returns:
        A :class:`~sbi_lens.nn.flow.SplineFlow` on the CPU, in training mode.
    """
    from sbi_lens.nn.flow import SplineFlow, SupportBijection
    from sbi_lens.priors import LensPrior

    prior = prior if prior is not None else LensPrior(simulation.prior)
    with torch.random.fork_rng(devices=[]):  # placeholder init must not shift user seeds
        return SplineFlow(
            input_shape=(len(PARAMETER_NAMES),),
            condition_shape=(num_bands, *image_shape),
            embedding_net=_embedding(train, in_bands=num_bands),
            context_features=train.embedding.out_features,
            bijection=SupportBijection(prior),
            **_flow_settings(train),
        )
