"""The weight average: eval mode evaluates an EMA of the weights, training steps the live ones."""

import copy

import pytest
import torch
from sbi.utils import BoxUniform
from torch import nn

from sbi_lens.nn import LensResNet, spline_flow
from sbi_lens.nn.weight_average import WeightAverage

LOW = torch.tensor([0.1, 0.5, 0.3, 150.0])
HIGH = torch.tensor([1.0, 3.0, 3.0, 350.0])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def averaged_flow(epochs=2.0, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = BoxUniform(LOW, HIGH).sample((n,))
    x = torch.randn(n, 5, generator=g)
    flow = spline_flow(
        prior=BoxUniform(LOW, HIGH),
        num_blocks=2,
        hidden_features=16,
        num_bins=4,
        weight_average_epochs=epochs,
    )(theta, x)
    return flow, theta, x


def run_epoch(flow, optimizer, theta, x, steps, batch=16):
    flow.train()
    for step in range(steps):
        rows = slice(step * batch % len(theta), step * batch % len(theta) + batch)
        optimizer.zero_grad()
        flow.loss(theta[rows], x[rows]).mean().backward()
        optimizer.step()
    flow.eval()


def weights(module):
    return [p.detach().clone() for p in module.parameters()]


def test_average_follows_the_ema_recursion_with_a_horizon_in_epochs():
    """By hand: w̄ ← d·w̄ + (1 − d)·w after each step, d = min((1+t)/(10+t), 1 − 1/(n·h)).

    t counts updates, n is the number of updates in the last epoch (the steps between
    two switches to eval mode) and h the horizon in epochs. Weights that did not change
    since they were last averaged in (the start of an epoch) are not counted twice.
    """
    owner = nn.Linear(1, 1, bias=False)
    average = WeightAverage(epochs=0.5)  # short, so that it binds before the warm-up does
    optimizer = torch.optim.SGD(owner.parameters(), lr=1.0)
    expected, updates, steps_per_epoch, last = None, 0, None, None

    def average_in(w):
        nonlocal expected, updates, last
        if w == last:
            return 0
        if expected is None:
            expected = w
        else:
            d = (1 + updates) / (10 + updates)
            if steps_per_epoch:
                d = min(d, 1 - 1 / (steps_per_epoch * 0.5))
            expected = d * expected + (1 - d) * w
        updates, last = updates + 1, w
        return 1

    for epoch in range(3):
        owner.train()
        average.swap_out(owner)
        steps = 0
        for _ in range(5):
            average.update(owner)  # a training-mode loss: the last step's weights
            steps += average_in(owner.weight.item())
            optimizer.zero_grad()
            (owner.weight.sum() * 0.1 * (epoch + 1)).backward()
            optimizer.step()
        live = owner.weight.item()
        steps += average_in(live)  # entering eval averages in the last step's weights
        average.swap_in(owner)
        steps_per_epoch = steps
        assert owner.weight.item() == pytest.approx(expected, rel=1e-6)
        assert average.is_swapped_in and average.updates == updates
        average.swap_out(owner)
        assert owner.weight.item() == live
        average.swap_in(owner)  # a second switch without training changes nothing
        assert owner.weight.item() == pytest.approx(expected, rel=1e-6)
    assert steps_per_epoch == 5 and average.decay() == pytest.approx(1 - 1 / 2.5)


def test_eval_swaps_the_average_in_and_train_swaps_the_live_weights_back():
    flow, theta, x = averaged_flow()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    run_epoch(flow, optimizer, theta, x, steps=4)
    averaged = weights(flow)
    flow.train()
    live = weights(flow)
    assert any(not torch.equal(a, b) for a, b in zip(averaged, live, strict=True))
    # the optimiser stepped the live weights only: another eval brings the same average
    flow.eval()
    assert all(torch.equal(a, b) for a, b in zip(averaged, weights(flow), strict=True))
    flow.eval()  # twice in a row changes nothing
    assert all(torch.equal(a, b) for a, b in zip(averaged, weights(flow), strict=True))
    flow.train()
    assert all(torch.equal(a, b) for a, b in zip(live, weights(flow), strict=True))


def test_state_dict_in_eval_mode_is_the_averaged_model_and_loading_restarts_the_average():
    flow, theta, x = averaged_flow()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    run_epoch(flow, optimizer, theta, x, steps=4)
    state = copy.deepcopy(flow.state_dict())  # what sbi keeps as the best epoch
    assert not any(k.startswith("weight_average") for k in state)  # same keys as without
    run_epoch(flow, optimizer, theta, x, steps=4)
    flow.load_state_dict(state)  # sbi restores the best epoch in eval mode
    with torch.no_grad():
        loaded = flow.log_prob(theta[:8], x[:8])
    flow.train()  # the loaded weights are now the live ones ...
    flow.eval()  # ... and the average
    with torch.no_grad():
        assert torch.equal(flow.log_prob(theta[:8], x[:8]), loaded)
    # a flow without averaging loads the averaged weights as they are
    plain = spline_flow(prior=BoxUniform(LOW, HIGH), num_blocks=2, hidden_features=16, num_bins=4)(
        theta, x
    )
    plain.load_state_dict(state)
    plain.eval()
    with torch.no_grad():
        assert torch.equal(plain.log_prob(theta[:8], x[:8]), loaded)


def test_batchnorm_running_statistics_are_averaged_too():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    theta = BoxUniform(LOW, HIGH).sample((32,))
    x = torch.rand(32, 1, 32, 32, generator=g) * theta[:, 2, None, None, None]
    embedding = LensResNet(1, out_features=8, widths=(4, 8))
    flow = spline_flow(
        prior=BoxUniform(LOW, HIGH),
        num_blocks=2,
        hidden_features=16,
        embedding_net=embedding,
        weight_average_epochs=1.0,
    )(theta, x)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    run_epoch(flow, optimizer, theta, x, steps=3, batch=8)
    bn = next(m for m in flow.modules() if isinstance(m, nn.BatchNorm2d))
    averaged = bn.running_var.clone()
    flow.train()
    assert not torch.equal(bn.running_var, averaged)
    flow.eval()
    assert torch.equal(bn.running_var, averaged)


def test_npe_trains_and_keeps_the_averaged_best_epoch():
    """sbi's loop: validation, the best epoch and the posterior all use the average."""
    from sbi.inference import NPE

    prior = BoxUniform(LOW, HIGH)
    torch.manual_seed(0)
    theta = prior.sample((300,))
    x = (theta - LOW) / (HIGH - LOW) + 0.05 * torch.randn(300, 4)
    builder = spline_flow(
        prior=prior, num_blocks=2, hidden_features=16, num_bins=4, weight_average_epochs=1.0
    )
    inference = NPE(prior, density_estimator=builder, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(
        max_num_epochs=10, training_batch_size=50, learning_rate=5e-3
    )
    average = estimator.weight_average
    # 270 training lenses in batches of 50, the partial one dropped: 5 steps per epoch
    assert average.updates > 0 and average._steps_per_epoch == 5
    # the returned net is the best epoch's averaged weights, as sbi's state dict kept them
    assert not estimator.training
    best = inference._best_model_state_dict
    assert all(torch.equal(v, estimator.state_dict()[k]) for k, v in best.items())
    samples = inference.build_posterior().sample((200,), x=x[0], show_progress_bars=False)
    assert prior.support.check(samples).all()
    # it learnt: the true θ of a training lens is far more probable than under the prior
    log_q = estimator.log_prob(theta[:50].unsqueeze(0), x[:50]).mean()
    assert log_q > prior.log_prob(theta[:50]).mean() + 1.0


def test_rejects_a_non_positive_horizon():
    with pytest.raises(ValueError, match="horizon"):
        WeightAverage(epochs=0.0)


def test_both_paths_average_by_default_and_a_rebuilt_model_does_not_need_to():
    """spline_flow (sbi's loop) and ``sbi-lens train`` average over 2 epochs by default,
    or as configured; a model rebuilt for inference has no average: its saved weights
    are the average already."""
    import yaml
    from conftest import TINY_SIMULATION

    from sbi_lens.architecture import build_estimator, rebuild_estimator
    from sbi_lens.config import EmbeddingSettings, TrainConfig, parse_config
    from sbi_lens.priors import LensPrior

    g = torch.Generator().manual_seed(0)
    theta = BoxUniform(LOW, HIGH).sample((16,))
    default = spline_flow(prior=BoxUniform(LOW, HIGH), num_blocks=1, hidden_features=8)(
        theta, torch.randn(16, 3, generator=g)
    )
    assert default.weight_average is not None and default.weight_average.epochs == 2.0
    simulation = parse_config(yaml.safe_load(TINY_SIMULATION))
    train = TrainConfig(embedding=EmbeddingSettings(widths=(4, 8), out_features=8))
    theta = LensPrior(simulation.prior).sample((16,))
    x = torch.rand(16, 2, 32, 32, generator=g)
    assert build_estimator(simulation, train, theta, x).weight_average.epochs == 2.0
    off = train.model_copy(update={"weight_average_epochs": None})
    assert build_estimator(simulation, off, theta, x).weight_average is None
    assert rebuild_estimator(simulation, train, 2, (32, 32)).weight_average is None


def test_cost_benchmark_prints_one_line(capsys):
    """benchmarks/weight_average_cost.py runs at a tiny size and prints its JSON line."""
    import json

    from conftest import load_benchmark

    module = load_benchmark("weight_average_cost")
    argv = ["--size", "32", "--batch", "8", "--steps", "2", "--rounds", "1"]
    assert module.main(argv) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["benchmark"] == "weight_average_cost" and record["shape"] == [8, 1, 32, 32]
    assert set(record["ms_per_step"]) == {"with_average", "without"} and record["ratio"] > 0
