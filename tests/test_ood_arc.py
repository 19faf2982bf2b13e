"""The arc check: a calibrated "no lensed source" p-value, trained at the end of
training on the training lenses and their re-renders without the source.

A three-band 32×32 lenstronomy simulation (about 20 s for both stores) and a
one-epoch model: the arc check does not depend on how well the flow learnt.
"""

import csv
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import zarr
from conftest import TINY_GRI_SIMULATION

from sbi_lens.arc_check import ArcReference, colour_residuals
from sbi_lens.arc_render import (
    can_render,
    read_pairs,
    render_without_source,
    store_population,
)
from sbi_lens.config import TrainConfig, load_config
from sbi_lens.fits_writer import write_cutout
from sbi_lens.inference import InputMismatchWarning, run_inference
from sbi_lens.model_folder import ModelFolder
from sbi_lens.ood import CHECK_WEIGHTS, CutoutPvalues, check_levels, combine_pvalues
from sbi_lens.parallel import run_simulation
from sbi_lens.report import store_out_of_distribution
from sbi_lens.simulator import LensSimulator
from sbi_lens.training import train

SIMULATION = TINY_GRI_SIMULATION
TINY = TrainConfig(
    epochs=1,
    batch_size=64,
    validation_fraction=0.25,
    flow={"hidden_features": 16, "num_blocks": 2},
    embedding={"widths": [8], "out_features": 8},
)
BANDS = ("g", "r", "i")


# ----------------------------------------------------------------------- pure parts
def test_colour_residuals_remove_a_lens_of_one_colour_and_keep_a_blue_ring():
    """Bands that are one profile times a colour leave nothing; a ring added to the
    bluest band outside the fitted core is left as it is."""
    size = 33
    yy, xx = np.mgrid[:size, :size] - size // 2
    radius = np.hypot(yy, xx)
    lens = np.exp(-((radius / 3.0) ** 0.5))
    ring = 5.0 * np.exp(-0.5 * ((radius - 9.0) / 1.0) ** 2)
    colours = np.array([0.3, 0.6, 1.0])
    x = torch.as_tensor(colours[None, :, None, None] * lens[None, None], dtype=torch.float32)
    flat = colour_residuals(x)
    assert flat.shape == (1, 2, size, size)
    assert flat.abs().max() < 1e-5 * lens.max()
    x[0, 0] += torch.as_tensor(ring, dtype=torch.float32)
    residual = colour_residuals(x)
    np.testing.assert_allclose(residual[0, 0], ring, atol=1e-4)
    assert residual[0, 1].abs().max() < 1e-5


def test_combined_pvalue_is_a_weighted_bonferroni_and_valid():
    rng = np.random.default_rng(0)
    a, b, c, d = rng.uniform(size=(4, 200_000))
    np.testing.assert_array_equal(combine_pvalues(a), a)  # the embedding test alone
    w = CHECK_WEIGHTS
    two = combine_pvalues(a, b)  # no pixel checks: the two shares renormalised
    total = w["embedding"] + w["arc"]
    np.testing.assert_allclose(
        two, np.minimum(1, np.minimum(a * total / w["embedding"], b * total / w["arc"]))
    )
    four = combine_pvalues(a, b, noise=c, registration=d)
    expected = np.min([a / w["embedding"], b / w["arc"], c / w["noise"], d / w["registration"]], 0)
    np.testing.assert_allclose(four, np.minimum(1, expected))
    assert sum(w.values()) == pytest.approx(1.0)
    # Valid for independent p-values (σ ≈ 0.0005), and for identical ones, where only
    # the largest share counts: P = α · max(w).
    assert np.mean(four < 0.05) <= 0.05 + 0.002
    same = combine_pvalues(a, a, noise=a, registration=a)
    assert np.mean(same < 0.05) == pytest.approx(0.05 * max(w.values()), abs=0.002)
    assert check_levels(0.05, ["embedding", "arc"])["arc"] == pytest.approx(0.05 * w["arc"] / total)


def test_the_weight_benchmark_scores_weightings_as_combine_pvalues_flags():
    """benchmarks/ood_weights.py: its grid keeps shares summing to 1 with the catch-all
    at its floor or above, and its flag rates are combine_pvalues' at α = 0.05."""
    from conftest import load_benchmark

    module = load_benchmark("ood_weights")
    grid = list(module.weight_grid(0.05, min_embedding=0.2))
    assert dict(CHECK_WEIGHTS) in grid
    for weights in grid:
        assert sum(weights.values()) == pytest.approx(1.0)
        assert weights["embedding"] >= 0.2 - 1e-9 and weights["arc"] >= 0.3 - 1e-9
    rng = np.random.default_rng(1)
    p = {name: rng.uniform(size=5000) ** 2 for name in module.CHECKS}
    rows = np.arange(1000, 5000)
    rate = module.flagged_rates({"case": p}, dict(CHECK_WEIGHTS), rows)["case"]
    combined = combine_pvalues(
        p["embedding"], p["arc"], noise=p["noise"], registration=p["registration"]
    )
    assert rate == pytest.approx(np.mean(combined[rows] < 0.05), abs=1e-4)


def test_causes_name_each_check_below_its_share():
    p = CutoutPvalues(
        embedding=np.array([0.5, 0.001, 0.5, 0.5]),
        arc=np.array([0.001, 0.5, 0.5, 0.5]),
        noise=np.array([0.5, 0.5, 0.0001, 0.5]),
        registration=np.array([0.5, 0.5, 0.5, 0.0001]),
    )
    starts = [
        "no lensed source",
        "unlike the training images",
        "pixel noise",
        "bands misregistered",
    ]
    for i, start in enumerate(starts):
        (cause,) = p.causes(i, 0.05)
        assert cause.startswith(start)
    # The noise check's share of 0.05 is 0.0025: 0.004 is below 0.05 but not flagged by it.
    quiet = CutoutPvalues(np.array([0.5]), np.array([0.5]), np.array([0.004]), np.array([0.5]))
    assert quiet.causes(0, 0.05) == [] and quiet.combined[0] > 0.05


# ----------------------------------------------------------------------- stores and a model
@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(training store, held-out store of another seed, MODEL folder, root)."""
    root = tmp_path_factory.mktemp("arc")
    (root / "sim.yaml").write_text(SIMULATION)
    config = load_config(root / "sim.yaml")
    train_store = run_simulation(config, 512, root / "train.zarr", seed=1, progress=False)
    held = run_simulation(config, 256, root / "held.zarr", seed=2, progress=False)
    model = train(train_store.path, root / "model", TINY, device="cpu", progress=False).model_dir
    return train_store, held, model, root


@pytest.fixture(scope="module")
def held_pairs(stores):
    """Held-out lenses with and without their source (fresh noise)."""
    _, held, _, _ = stores
    return read_pairs(held, range(held.num_chunks), len(held), np.random.default_rng(7))


def test_without_source_is_the_render_with_the_source_switched_off(stores):
    """Independent path: the simulator's own render with the source magnitudes at 99."""
    train_store, *_ = stores
    simulator = LensSimulator(train_store.config)
    rows = np.arange(6)
    theta = np.asarray(train_store.theta[:6])
    population = store_population(train_store, simulator, rows)
    got = render_without_source(simulator, theta, population, np.random.default_rng(3))
    dark = population.copy()
    for band in simulator.bands:
        dark[:, simulator.population_names.index(f"source_mag_{band}")] = 99.0
    images = simulator.render(theta, dark)
    scale = simulator.noise_scale(population)
    expected = simulator.add_noise(images, np.random.default_rng(3), scale)
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-5, atol=1e-4)
    # Its stored image holds the arc: brighter than the lens alone by the source's light.
    assert np.all(np.asarray(train_store.x[:6]).sum(axis=(1, 2, 3)) > images.sum(axis=(1, 2, 3)))


def test_a_store_written_before_a_column_existed_gets_its_undrawn_value(stores):
    train_store, *_ = stores
    simulator = LensSimulator(train_store.config)
    names = list(train_store.layout.nuisance_names)
    keep = [i for i, n in enumerate(names) if n not in ("noise_scale", "neighbour_density_scale")]

    class OldStore:  # the columns of a store from before the per-lens noise level
        path, config = "old.zarr", train_store.config
        layout = train_store.layout.__class__(
            **{**vars(train_store.layout), "nuisance_names": tuple(names[i] for i in keep)}
        )
        nuisance = zarr.array(np.asarray(train_store.nuisance[:10])[:, keep])

    old = store_population(OldStore, simulator, np.arange(10))
    new = store_population(train_store, simulator, np.arange(10))
    np.testing.assert_array_equal(old, new)  # noise_scale 1 and density scale 1 when not drawn
    assert can_render(train_store)


def test_training_writes_the_arc_check(stores):
    _, _, model, _ = stores
    info = json.loads((model / "model.json").read_text())
    # 8 chunks of 64: 6 train the classifier (384 pairs), 2 are the null set.
    assert info["arc_check"]["num_train"] == 384 and info["arc_check"]["num_null"] == 128
    assert info["ood_reference"]["num_null"] == 128
    assert info["ood_reference"]["pixel_checks"] == ["noise", "registration"]
    assert ModelFolder(model).load_ood_checks().arc is not None


def test_the_arc_check_size_is_a_training_setting(stores, tmp_path):
    """``arc_check: {lenses, epochs}`` of the training config sets how many re-rendered
    pairs the classifier learns from; model.json records it."""
    train_store, *_ = stores
    config = TINY.model_copy(update={"arc_check": {"lenses": 100, "epochs": 1}})
    config = TrainConfig.model_validate(config.model_dump())
    model = train(train_store.path, tmp_path / "m", config, device="cpu", progress=False)
    info = json.loads((model.model_dir / "model.json").read_text())
    assert info["arc_check"]["num_train"] == 100
    assert info["train_config"]["arc_check"] == {"lenses": 100, "epochs": 1}


def test_the_check_separates_lenses_from_their_no_source_renders(stores, held_pairs):
    _, _, model, _ = stores
    arc = ModelFolder(model).load_ood_checks().arc
    with_arc, without_arc = held_pairs
    # Measured: 2.0 % of the 256 held-out lenses and 94.5 % of their no-source renders at
    # p < 0.05 (chance: 5 %); the bound leaves room for another platform's round-off.
    assert np.mean(arc.pvalues(without_arc) < 0.05) >= 0.8
    assert np.median(arc.pvalues(without_arc)) < np.median(arc.pvalues(with_arc))


def test_pvalues_are_conformal_on_fresh_held_out_simulations(stores, held_pairs):
    _, _, model, _ = stores
    arc = ModelFolder(model).load_ood_checks().arc
    p = arc.pvalues(held_pairs[0])
    # 5 % expected; σ = √(0.05·0.95·(1/256 + 1/128)) ≈ 2.4 %: three σ above.
    assert np.mean(p < 0.05) <= 0.05 + 3 * 0.024
    assert p.min() >= arc.smallest_pvalue == 1 / 129


def test_the_reference_round_trips_through_the_model_folder(stores, held_pairs, tmp_path):
    _, _, model, _ = stores
    arc = ModelFolder(model).load_ood_checks().arc
    again = ArcReference.from_dict(arc.to_dict())
    np.testing.assert_array_equal(again.pvalues(held_pairs[1]), arc.pvalues(held_pairs[1]))


# ----------------------------------------------------------------------- infer and diagnose
def _cutouts(held_pairs, arc, directory):
    """A held-out lens, and the no-source render the arc check is surest about, as FITS."""
    with_arc, without_arc = held_pairs
    surest = int(np.argmax(arc.classifier.logits(without_arc).numpy()))
    images = [with_arc[0], without_arc[surest]]
    files = [
        write_cutout(directory / f"lens_{i}.fits", image, BANDS, 0.2)[0]
        for i, image in enumerate(images)
    ]
    return files, np.stack(images)


def test_infer_reports_both_pvalues_and_names_the_cause(stores, held_pairs, tmp_path):
    _, _, model, _ = stores
    folder = ModelFolder(model)
    files, _ = _cutouts(held_pairs, folder.load_ood_checks().arc, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summaries = run_inference(
            model, files, tmp_path / "out", num_samples=20, corner=False, echo=None,
            ood_threshold=0.05, noise_mismatch="warn",
        )  # fmt: skip
    for s in summaries:
        checks = (s.arc_pvalue, s.noise_pvalue, s.registration_pvalue)
        assert s.ood_pvalue == pytest.approx(
            combine_pvalues(
                [s.embedding_pvalue], [checks[0]], noise=[checks[1]], registration=[checks[2]]
            )[0]
        )
    flagged = [str(w.message) for w in caught if "out-of-distribution p-value" in str(w.message)]
    assert any(m.startswith(str(files[1])) and "no lensed source detected" in m for m in flagged)
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["arc_pvalue"]) for r in rows] == [s.arc_pvalue for s in summaries]
    assert [float(r["embedding_pvalue"]) for r in rows] == [s.embedding_pvalue for s in summaries]
    lenses = json.loads((tmp_path / "out" / "summary.json").read_text())["lenses"]
    assert [lens["arc_pvalue"] for lens in lenses] == [s.arc_pvalue for s in summaries]
    for key in ("noise_pvalue", "registration_pvalue"):
        assert [float(r[key]) for r in rows] == [getattr(s, key) for s in summaries]
        assert [lens[key] for lens in lenses] == [getattr(s, key) for s in summaries]


def test_an_old_model_folder_without_the_arc_check_still_infers(stores, held_pairs, tmp_path):
    """An ``ood_reference.pt`` as models before the arc check wrote it: no ``arc`` key
    (nor ``pixels``, which came later)."""
    _, _, model, _ = stores
    old = tmp_path / "old_model"
    shutil.copytree(model, old)
    data = torch.load(old / "ood_reference.pt", weights_only=True)
    del data["arc"], data["pixels"]
    torch.save(data, old / "ood_reference.pt")
    assert ModelFolder(old).load_ood_checks().arc is None
    files, _ = _cutouts(held_pairs, ModelFolder(model).load_ood_checks().arc, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputMismatchWarning)
        summaries = run_inference(old, files, tmp_path / "out", num_samples=20, corner=False,
                                  echo=None, noise_mismatch="warn")  # fmt: skip
    assert all(s.arc_pvalue is s.noise_pvalue is s.registration_pvalue is None for s in summaries)
    assert all(s.ood_pvalue == s.embedding_pvalue is not None for s in summaries)
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        assert {r["arc_pvalue"] for r in csv.DictReader(handle)} == {""}


def test_store_check_reports_the_share_without_an_arc(stores, held_pairs):
    _, _, model, _ = stores
    folder = ModelFolder(model)
    posterior = folder.load_posterior()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputMismatchWarning)
        like = store_out_of_distribution(folder, posterior, held_pairs[0], "held")
    assert like.arc_pvalue > 0.01 and like.arc_fraction_below_005 <= 0.05 + 3 * 0.024
    with pytest.warns(InputMismatchWarning, match="dark: fewer lensed sources seen"):
        dark = store_out_of_distribution(folder, posterior, held_pairs[1], "dark")
    assert dark.arc_pvalue < 1e-6 and dark.arc_fraction_below_005 >= 0.5
    assert dark.as_dict()["arc_fraction_below_0.05"] == dark.arc_fraction_below_005
    assert like.noise_pvalue > 0.01 and like.registration_pvalue > 0.01
    shifted = held_pairs[0].copy()
    shifted[:, -1] = np.roll(shifted[:, -1], 1, axis=-1)
    with pytest.warns(InputMismatchWarning, match="fit each other better shifted"):
        moved = store_out_of_distribution(folder, posterior, shifted, "moved")
    assert moved.registration_pvalue < 1e-6 and moved.as_dict()["registration_pvalue"] < 1e-6
