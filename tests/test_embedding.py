"""LensResNet: shapes, input validation, input scaling fitted from data."""

import pytest
import torch

from sbi_lens.nn import LensResNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def survey_like(n=16, bands=3, size=48, sky=(5.0, 20.0, 0.0), noise=(1.0, 3.0, 0.5), seed=0):
    """Sky + Gaussian noise per band + a few very bright point-like sources."""
    g = torch.Generator().manual_seed(seed)
    sky_t = torch.tensor(sky[:bands]).view(1, bands, 1, 1)
    noise_t = torch.tensor(noise[:bands]).view(1, bands, 1, 1)
    x = sky_t + noise_t * torch.randn(n, bands, size, size, generator=g)
    x[:, :, size // 2, size // 2] += 1e5  # dynamic range of a bright lens galaxy
    return x


@pytest.mark.parametrize("shape", [(32, 32), (48, 48), (64, 64), (33, 70)])
def test_output_shape_any_size(shape):
    net = LensResNet(in_bands=2, out_features=12, widths=(4, 8))
    out = net(torch.randn(3, 2, *shape))
    assert out.shape == (3, 12)


def test_configurable_depth_and_width():
    net = LensResNet(in_bands=1, out_features=5, widths=(4, 8, 16, 16), blocks_per_stage=2)
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 5)
    assert LensResNet(1, widths=(4,), norm="batch")(torch.randn(2, 1, 32, 32)).shape == (2, 64)


def test_clear_errors_for_wrong_input():
    net = LensResNet(in_bands=3, widths=(4,))
    with pytest.raises(ValueError, match="3 band"):
        net(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="rank 3"):
        net(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="at least 32"):
        net(torch.randn(2, 3, 16, 40))
    with pytest.raises(ValueError, match="norm"):
        LensResNet(3, norm="layer")
    with pytest.raises(ValueError, match="non-finite"):
        net.fit_scaling(torch.full((2, 3, 32, 32), float("nan")))


def test_fit_scaling_recovers_sky_and_noise():
    x = survey_like(n=64)
    net = LensResNet(3, widths=(4,))
    assert not net.is_fitted
    net.fit_scaling(x, generator=torch.Generator().manual_seed(0))
    assert net.is_fitted
    assert torch.allclose(net.offset, torch.tensor([5.0, 20.0, 0.0]), atol=0.02)
    assert torch.allclose(net.scale, torch.tensor([1.0, 3.0, 0.5]), rtol=0.02)
    state = net.state_dict()
    assert {"offset", "scale", "fitted"} <= set(state)
    other = LensResNet(3, widths=(4,))
    other.load_state_dict(state)
    assert other.is_fitted and torch.equal(other.scale, net.scale)


def test_scaled_input_copes_with_dynamic_range():
    x = survey_like(n=8)
    net = LensResNet(3, widths=(4,)).fit_scaling(x)
    scaled = net.scale_input(x)
    # Noise lands at unit scale, a 1e5-count source at ~asinh(1e5 / σ) ≈ 12, not 1e5.
    assert scaled.abs().max() < 15
    # Sky noise becomes asinh(ε), ε ~ N(0, 1), whose std is 0.79.
    assert 0.75 < scaled[..., :10, :10].std().item() < 0.83
    assert torch.isfinite(net(x)).all()


def test_embedding_independent_of_flux_units():
    """Fitting on data in other units (x · c) gives the same embedding."""
    x = survey_like(n=8)
    net = LensResNet(3, widths=(4, 8), augment=False).fit_scaling(x)
    other = LensResNet(3, widths=(4, 8), augment=False)
    other.load_state_dict(net.state_dict())
    other.fit_scaling(1000.0 * x)
    assert torch.allclose(net(x), other(1000.0 * x), atol=1e-4)


def test_defaults_are_batch_norm_and_in_network_augmentation():
    net = LensResNet(1)
    assert net.augment and isinstance(net.stem[1], torch.nn.BatchNorm2d)


def test_group_norm_makes_embedding_batch_independent():
    x = survey_like(n=4)
    net = LensResNet(3, widths=(4, 8), norm="group", augment=False).fit_scaling(x)
    assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)
    net.eval()
    assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)


def test_backward_reaches_all_parameters():
    net = LensResNet(2, out_features=4, widths=(4, 8))
    net(torch.randn(4, 2, 32, 32)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


# ---- symmetry: group pooling over rotations and flips ---------------------------------


def dihedral_transforms():
    """The eight symmetries of a square, from transposes and flips (not from rot90)."""
    flips = [(), (-1,), (-2,), (-2, -1)]
    plain = [lambda x, d=d: torch.flip(x, d) if d else x for d in flips]
    swapped = [lambda x, d=d: torch.flip(x.transpose(-2, -1), d) if d else x.transpose(-2, -1)
               for d in flips]  # fmt: skip
    return plain + swapped


@pytest.mark.parametrize("norm", ["group", "batch"])
@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("shape", [(32, 32), (35, 35), (32, 40)])
def test_d4_embedding_is_invariant_to_all_eight_transforms(norm, train_mode, shape):
    """Exact invariance, in train and eval mode; BatchNorm's batch statistics included."""
    torch.manual_seed(0)
    net = LensResNet(2, out_features=6, widths=(4, 8), norm=norm, symmetry="d4")
    x = survey_like(n=3, bands=2, size=max(shape))[..., : shape[0], : shape[1]]
    net.fit_scaling(x)
    net.train(train_mode)
    with torch.no_grad():
        reference = net(x)
        outputs = [net(g(x)) for g in dihedral_transforms()]
    assert not torch.allclose(reference[0], reference[1], atol=1e-3)  # not a constant
    for out in outputs:
        assert torch.allclose(out, reference, atol=1e-5, rtol=1e-5)


def test_c4_embedding_is_invariant_to_rotations_only():
    torch.manual_seed(0)
    net = LensResNet(1, out_features=6, widths=(4, 8), symmetry="c4").eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        reference = net(x)
        for k in (1, 2, 3):
            assert torch.allclose(net(torch.rot90(x, k, dims=(-2, -1))), reference, atol=1e-5)
        assert not torch.allclose(net(torch.flip(x, (-1,))), reference, atol=1e-3)


def test_d4_is_the_group_average_of_the_plain_network():
    """Same weights: d4(x) = mean over the eight views of none(g·x) (the head is linear)."""
    torch.manual_seed(1)
    plain = LensResNet(2, out_features=5, widths=(4, 8)).eval()
    pooled = LensResNet(2, out_features=5, widths=(4, 8), symmetry="d4").eval()
    pooled.load_state_dict(plain.state_dict())  # same parameters and buffers
    x = torch.randn(3, 2, 32, 32)
    with torch.no_grad():
        expected = torch.stack([plain(g(x)) for g in dihedral_transforms()]).mean(dim=0)
        assert torch.allclose(pooled(x), expected, atol=1e-5)


def test_symmetry_none_is_the_network_as_before():
    """symmetry="none" builds the same weights and computes stem → stages → pool → head."""
    torch.manual_seed(2)
    default = LensResNet(2, out_features=5, widths=(4, 8))
    torch.manual_seed(2)
    none = LensResNet(2, out_features=5, widths=(4, 8), symmetry="none")
    state, other = default.state_dict(), none.state_dict()
    assert state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)
    default.eval(), none.eval()  # no random views
    x = torch.randn(4, 2, 32, 32)
    h = none.stages(none.stem(torch.asinh(x)))
    by_hand = none.head(torch.cat((h.mean(dim=(-2, -1)), h.amax(dim=(-2, -1))), dim=-1))
    assert torch.allclose(none(x), by_hand, atol=1e-6)
    assert torch.equal(none(x), default(x))


def test_unknown_symmetry_is_refused():
    with pytest.raises(ValueError, match="symmetry must be one of none, c4, d4; got 'd8'"):
        LensResNet(1, symmetry="d8")


@pytest.mark.filterwarnings("ignore:Maximum number of epochs")
def test_d4_estimator_trains_in_sbis_own_loop():
    """spline_flow + LensResNet(symmetry="d4") in NPE(...).train(); the posterior is invariant."""
    from sbi.inference import NPE
    from sbi.utils import BoxUniform

    from sbi_lens.nn import spline_flow

    torch.manual_seed(0)
    prior = BoxUniform(torch.tensor([0.1, 0.5, 0.5, 150.0]), torch.tensor([0.9, 3.0, 2.5, 350.0]))
    theta = prior.sample((48,))
    x = theta[:, 2, None, None, None] * torch.rand(48, 1, 32, 32)
    embedding = LensResNet(1, out_features=8, widths=(4, 8), symmetry="d4")
    builder = spline_flow(prior=prior, num_blocks=2, hidden_features=16, embedding_net=embedding)
    inference = NPE(prior, density_estimator=builder, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(
        max_num_epochs=2, training_batch_size=16
    )
    assert estimator.embedding_net is embedding and embedding.is_fitted
    posterior = inference.build_posterior()
    samples = posterior.sample((20,), x=x[0], show_progress_bars=False)
    log_q = posterior.log_prob(samples, x=x[0])
    for g in dihedral_transforms():
        assert torch.allclose(posterior.log_prob(samples, x=g(x[:1])[0]), log_q, atol=1e-4)


def test_symmetry_survives_the_model_folder_round_trip(tmp_path):
    """model.json records the symmetry; a model.json without it loads as "none"."""
    import json
    from types import SimpleNamespace

    import yaml
    from conftest import TINY_SIMULATION

    from sbi_lens.architecture import build_estimator
    from sbi_lens.config import EmbeddingSettings, TrainConfig, parse_config
    from sbi_lens.model_folder import ModelFolder
    from sbi_lens.priors import LensPrior
    from sbi_lens.store import SCHEMA_VERSION
    from sbi_lens.streaming import augment_dihedral

    simulation = parse_config(yaml.safe_load(TINY_SIMULATION))
    train = TrainConfig(embedding=EmbeddingSettings(widths=(4, 8), out_features=8, symmetry="d4"))
    theta = LensPrior(simulation.prior).sample((32,))
    x = survey_like(n=32, bands=2, size=32)
    estimator = build_estimator(simulation, train, theta, x).eval()
    layout = SimpleNamespace(bands=("g", "r"), image_shape=(32, 32), pixel_scale=0.2)
    store = SimpleNamespace(layout=layout, config=simulation, path=tmp_path / "store",
                            seed=0, fingerprint="test",
                            attrs={"schema_version": SCHEMA_VERSION})  # fmt: skip
    folder = ModelFolder(tmp_path / "model")
    folder.write_info(store, train, "trained")
    folder.save_best(estimator.state_dict())

    # sbi-lens train's D4 augmentation leaves such a model's loss unchanged (to round-off).
    augmented = augment_dihedral(x, torch.Generator().manual_seed(0))
    assert not torch.equal(augmented, x)
    with torch.no_grad():
        assert torch.allclose(estimator.train().loss(theta, augmented),
                              estimator.loss(theta, x), atol=1e-4)  # fmt: skip
    estimator.eval()

    loaded = folder.load_estimator()
    assert loaded.embedding_net.symmetry == "d4"
    with torch.no_grad():
        assert torch.allclose(loaded.log_prob(theta[None, :4], x[:4]),
                              estimator.log_prob(theta[None, :4], x[:4]), atol=1e-5)  # fmt: skip

    raw = json.loads(folder.info_path.read_text())
    del raw["train_config"]["embedding"]["symmetry"]  # a model.json from before the option
    folder.info_path.write_text(json.dumps(raw))
    assert folder.info.train.embedding.symmetry == "none"
    assert folder.load_estimator().embedding_net.symmetry == "none"


def test_augment_shows_each_image_one_random_view_in_training_only():
    """augment=True: in train mode each image is embedded as one of its eight D4 views
    (the plain network's output on that view), all eight drawn over many calls; eval
    mode is the plain network."""
    torch.manual_seed(3)
    plain = LensResNet(1, out_features=4, widths=(4,), norm="group").eval()
    augmented = LensResNet(1, out_features=4, widths=(4,), norm="group", augment=True)
    augmented.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        views = torch.stack([plain(g(x))[0] for g in dihedral_transforms()])  # (8, 4)
        assert torch.equal(augmented.eval()(x), plain(x))
        augmented.train()
        seen = set()
        for _ in range(200):
            out = augmented(x)[0]
            match = (views - out).abs().amax(dim=1) < 1e-5
            assert match.sum() >= 1  # one of the views (symmetric views may coincide)
            seen.add(int(match.nonzero()[0]))
    assert seen == set(range(8))


def test_augment_keeps_the_shape_of_non_square_images():
    net = LensResNet(2, out_features=3, widths=(4,), augment=True).train()
    assert net(torch.randn(5, 2, 32, 40)).shape == (5, 3)


@pytest.mark.filterwarnings("ignore:Maximum number of epochs")
def test_default_embedding_in_sbis_loop_gives_a_deterministic_posterior():
    """BatchNorm and in-network augmentation act in training only: after sbi's
    ``NPE.train()`` the posterior of one observation is the same on every call and the
    same inside a batch of others (eval mode, running statistics)."""
    from sbi.inference import NPE
    from sbi.utils import BoxUniform

    from sbi_lens.nn import spline_flow

    torch.manual_seed(0)
    prior = BoxUniform(torch.tensor([0.1, 0.5, 0.5, 150.0]), torch.tensor([0.9, 3.0, 2.5, 350.0]))
    theta = prior.sample((64,))
    x = theta[:, 2, None, None, None] * torch.rand(64, 1, 32, 32)
    embedding = LensResNet(1, out_features=8, widths=(4, 8))
    assert embedding.augment and isinstance(embedding.stem[1], torch.nn.BatchNorm2d)
    builder = spline_flow(prior=prior, num_blocks=2, embedding_net=embedding)
    inference = NPE(prior, density_estimator=builder, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(
        max_num_epochs=2, training_batch_size=16
    )
    assert not estimator.training
    posterior = inference.build_posterior()
    samples = posterior.sample((20,), x=x[0], show_progress_bars=False)
    first = posterior.log_prob(samples, x=x[0])
    assert torch.equal(posterior.log_prob(samples, x=x[0]), first)
    in_batch = estimator.log_prob(samples[:, None].expand(20, 8, 4), x[:8])[:, 0]
    assert torch.allclose(in_batch, estimator.log_prob(samples[:, None], x[:1])[:, 0], atol=1e-4)
