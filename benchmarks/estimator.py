"""SplineFlow + LensResNet against stock sbi estimators at equal data and budget.

Trains each estimator with the same loop (AdamW, same batch size, same wall-clock
budget per model, same data in the same order) on a simulation store, then measures
on held-out lenses of another store:

* ``heldout_mean_log_prob``: mean log q(θ | x) of the true θ (nats, higher is better);
* ``r2``: R² of the posterior mean per parameter;
* ``train_samples_per_s``: training throughput;
* ``posterior_samples_per_s``: ``DirectPosterior.sample_batched`` for
  ``--num-obs`` observations × ``--num-samples`` samples.

Prints one JSON line. Example (stores from ``sbi-lens simulate quickstart``):

    python benchmarks/estimator.py train.zarr test.zarr --seconds 240
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def _stock(kind: str, batch_theta, batch_x, prior):
    from sbi.neural_nets import posterior_nn
    from sbi.neural_nets.embedding_nets import CNNEmbedding, ResNetEmbedding2D

    channels, height, width = batch_x.shape[1:]
    if kind == "resnet":
        embedding = ResNetEmbedding2D(c_in=channels, c_out=64)
    else:
        embedding = CNNEmbedding(input_shape=(height, width), in_channels=channels, output_dim=64)
    builder = posterior_nn(
        "nsf", embedding_net=embedding, hidden_features=128, num_transforms=5, z_score_x="none"
    )
    # sbi z-scores nothing for images here; give the stock nets the same asinh-scaled
    # input ours sees, so the comparison is of architectures, not of preprocessing.
    return builder(batch_theta, _asinh(batch_x))


def _asinh(x):
    median = x.transpose(0, 1).reshape(x.shape[1], -1).median(dim=1).values
    return torch.asinh(x - median[None, :, None, None])


def _ours(batch_theta, batch_x, prior):
    from sbi_lens.nn import LensResNet, spline_flow

    return spline_flow(prior=prior, embedding_net=LensResNet(in_bands=batch_x.shape[1]))(
        batch_theta, batch_x
    )


def _train(estimator, theta, x, seconds, batch_size, transform, seed):
    optimizer = torch.optim.AdamW(estimator.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    seen, start = 0, time.perf_counter()
    estimator.train()
    while time.perf_counter() - start < seconds:
        order = torch.randperm(len(theta), generator=generator)
        for first in range(0, len(order) - batch_size + 1, batch_size):
            index = order[first : first + batch_size]
            loss = estimator.loss(theta[index], transform(x[index])).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(estimator.parameters(), 5.0)
            optimizer.step()
            seen += len(index)
            if time.perf_counter() - start >= seconds:
                break
    return seen / (time.perf_counter() - start)


@torch.no_grad()
def _evaluate(estimator, prior, theta, x, transform, num_obs, num_samples):
    from sbi.inference.posteriors import DirectPosterior

    from sbi_lens import PARAMETER_NAMES

    estimator.eval()
    log_prob = torch.cat(
        [
            estimator.log_prob(theta[i : i + 256][None], transform(x[i : i + 256]))[0]
            for i in range(0, len(theta), 256)
        ]
    )
    posterior = DirectPosterior(posterior_estimator=estimator, prior=prior)
    xs = transform(x[:num_obs])
    start = time.perf_counter()
    samples = posterior.sample_batched((num_samples,), xs, show_progress_bars=False)
    rate = samples.shape[0] * samples.shape[1] / (time.perf_counter() - start)
    mean = samples.mean(0)
    truth = theta[:num_obs]
    r2 = 1 - ((mean - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    finite = torch.isfinite(log_prob)
    return {
        "heldout_mean_log_prob": float(log_prob[finite].mean()),
        "heldout_nonfinite": int((~finite).sum()),
        "r2": dict(zip(PARAMETER_NAMES, map(float, r2), strict=True)),
        "posterior_samples_per_s": rate,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_store")
    parser.add_argument("test_store")
    parser.add_argument("--seconds", type=float, default=240, help="training budget per model")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-obs", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--models", default="ours,sbi_nsf_resnet,sbi_nsf_cnn")
    args = parser.parse_args(argv)

    from sbi_lens.priors import LensPrior
    from sbi_lens.store import SimulationStore

    train_store, test_store = (
        SimulationStore.open(args.train_store),
        SimulationStore.open(args.test_store),
    )
    prior = LensPrior(train_store.config.prior)
    theta, x = (torch.as_tensor(a) for a in train_store.load(limit=args.num_train))
    test_theta, test_x = (
        torch.as_tensor(a) for a in test_store.load(limit=max(args.num_obs, 1000))
    )
    results = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        if name == "ours":
            estimator, transform = _ours(theta[:512], x[:512], prior), (lambda v: v)
        else:
            estimator = _stock("resnet" if "resnet" in name else "cnn", theta[:512], x[:512], prior)
            transform = _asinh
        rate = _train(estimator, theta, x, args.seconds, args.batch_size, transform, seed=0)
        results[name] = {
            "train_samples_per_s": rate,
            "parameters": sum(p.numel() for p in estimator.parameters()),
            **_evaluate(
                estimator, prior, test_theta, test_x, transform, args.num_obs, args.num_samples
            ),
        }
    ours = results.get("ours")
    ratios = {}
    if ours is not None:
        for name, other in results.items():
            if name == "ours":
                continue
            ratios[name] = {
                "log_prob_gain_nats": ours["heldout_mean_log_prob"]
                - other["heldout_mean_log_prob"],
                "train_speed_ratio": ours["train_samples_per_s"] / other["train_samples_per_s"],
                "sampling_speed_ratio": ours["posterior_samples_per_s"]
                / other["posterior_samples_per_s"],
            }
    print(
        json.dumps(
            {
                "benchmark": "estimator",
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                "train_lenses": len(theta),
                "test_lenses": len(test_theta),
                "seconds_per_model": args.seconds,
                "batch_size": args.batch_size,
                "results": results,
                "ours_vs": ratios,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
