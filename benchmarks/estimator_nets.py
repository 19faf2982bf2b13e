"""Throughput of the estimator networks on this machine; prints one JSON line.

1. Posterior sampling: ``DirectPosterior.sample_batched`` for ``--num-obs``
   observations × ``--num-samples`` samples, sbi's stock ``nsf`` + ``ResNetEmbedding2D``
   vs ``spline_flow`` + ``LensResNet``, in the same process.
2. Embedding forward+backward throughput on 3×64×64 images: ``LensResNet`` vs sbi's
   ``ResNetEmbedding2D`` and ``CNNEmbedding``.

Nets are untrained (weights at initialisation, eval mode): throughput does not
depend on the weights except through sbi's rejection step, whose acceptance rate
is reported.

Usage: python benchmarks/estimator_nets.py [--num-obs 1000] [--num-samples 1000]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from sbi.inference.posteriors import DirectPosterior
from sbi.neural_nets import posterior_nn
from sbi.neural_nets.embedding_nets import CNNEmbedding, ResNetEmbedding2D
from sbi.utils import BoxUniform

from sbi_lens.nn import LensResNet, spline_flow

LOW = torch.tensor([0.1, 0.5, 0.3, 150.0])
HIGH = torch.tensor([1.0, 3.0, 3.0, 350.0])


def _images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Noise plus a bright ring, shape (n, 3, size, size): only shapes matter here."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    ring = torch.exp(-((r - size / 5) ** 2) / 4.0)
    return 100.0 * ring + torch.randn(n, 3, size, size, generator=generator)


def _time(fn, repeats: int = 1) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def sampling(num_obs: int, num_samples: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    prior = BoxUniform(LOW, HIGH)
    theta = LOW + (HIGH - LOW) * torch.rand(256, 4, generator=g)
    x_train = _images(256, 64, g)
    x_obs = _images(num_obs, 64, g)
    out = {}
    builders = {
        "sbi_nsf_resnet2d": posterior_nn("nsf", embedding_net=ResNetEmbedding2D(c_in=3, c_out=64)),
        "lens_spline_flow": spline_flow(prior=prior, embedding_net=LensResNet(3)),
    }
    for name, builder in builders.items():
        est = builder(theta, x_train).eval()
        posterior = DirectPosterior(est, prior)
        kwargs = dict(show_progress_bars=False)
        posterior.sample_batched((10,), x_obs[:8], **kwargs)  # warm-up
        start = time.perf_counter()
        samples = posterior.sample_batched((num_samples,), x_obs, **kwargs)
        seconds = time.perf_counter() - start
        inside = ((samples > LOW) & (samples < HIGH)).all(-1).float().mean().item()
        raw = est.sample((1000,), x_obs[:100])
        accept = ((raw > LOW) & (raw < HIGH)).all(-1).float().mean().item()
        out[name] = {
            "seconds": round(seconds, 2),
            "samples_per_s": round(num_obs * num_samples / seconds),
            "fraction_in_support_raw": round(accept, 4),
            "fraction_in_support_returned": round(inside, 4),
        }
    out["speedup"] = round(
        out["lens_spline_flow"]["samples_per_s"] / out["sbi_nsf_resnet2d"]["samples_per_s"], 2
    )
    return out


def embeddings(batch: int = 64, repeats: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = _images(batch, 64, g)
    nets = {
        "LensResNet": LensResNet(3, out_features=64).fit_scaling(x),
        "ResNetEmbedding2D": ResNetEmbedding2D(c_in=3, c_out=64),
        "CNNEmbedding": CNNEmbedding(input_shape=(64, 64), in_channels=3, output_dim=64),
    }
    out = {}
    for name, net in nets.items():
        net.train()

        def step(net=net):
            net.zero_grad()
            net(x).square().mean().backward()

        seconds = _time(step, repeats)
        out[name] = {
            "images_per_s_fwd_bwd": round(batch / seconds),
            "parameters": sum(p.numel() for p in net.parameters()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-obs", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--skip-embedding", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"threads": torch.get_num_threads()}
    if not args.skip_sampling:
        result["sampling"] = sampling(args.num_obs, args.num_samples)
    if not args.skip_embedding:
        result["embedding"] = embeddings()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
