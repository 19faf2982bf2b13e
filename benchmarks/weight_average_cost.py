"""What the weight average costs a training step: the drop-in with and without it.

Builds ``spline_flow(prior=box, embedding_net=LensResNet(bands))`` twice from the same
seed, one with ``weight_average_epochs=2`` (the default) and one with ``None``, and times
Adam steps on random images in interleaved rounds in one process (the best round of
each, since the machine is shared). Prints one JSON line:

    python benchmarks/weight_average_cost.py [--bands 1] [--size 48] [--batch 200]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _flow(average: float | None, bands: int, size: int, batch: int):
    from sbi.utils import BoxUniform

    from sbi_lens.nn import LensResNet, spline_flow

    torch.manual_seed(0)
    prior = BoxUniform(torch.zeros(4), torch.ones(4))
    theta = prior.sample((batch,))
    x = torch.rand(batch, bands, size, size)
    builder = spline_flow(
        prior=prior, embedding_net=LensResNet(in_bands=bands), weight_average_epochs=average
    )
    return builder(theta, x), theta, x


def _seconds_per_step(flow, theta, x, steps: int) -> float:
    optimizer = torch.optim.Adam(flow.parameters(), lr=5e-4)
    flow.train()
    tick = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        flow.loss(theta, x).mean().backward()
        optimizer.step()
    seconds = time.perf_counter() - tick
    flow.eval()  # the epoch's end: swaps the average in (and out at the next round)
    return seconds / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", type=int, default=1)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {
        "with_average": _flow(2.0, args.bands, args.size, args.batch),
        "without": _flow(None, args.bands, args.size, args.batch),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, (flow, theta, x) in runs.items():
            best[name] = min(best[name], _seconds_per_step(flow, theta, x, args.steps))
    parameters = sum(p.numel() for p in runs["without"][0].parameters())
    record = {
        "benchmark": "weight_average_cost",
        "shape": [args.batch, args.bands, args.size, args.size],
        "parameters": parameters,
        "threads": args.threads,
        "ms_per_step": {name: round(1e3 * s, 2) for name, s in best.items()},
        "ratio": round(best["with_average"] / best["without"], 4),
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
