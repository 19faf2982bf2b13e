"""The shipped lsst_gri model (issue 10), as a user meets it right after install.

It loads by name on the CPU, runs on a FITS cutout written from a fresh lsst_gri
simulation and returns samples inside the prior's support; its report records how it
was made. The `slow` test re-diagnoses it on 300 fresh held-out lenses (a seed it never
saw) and checks that R² and coverage match the recorded ones within their statistical
errors.
"""

import csv
import json

import numpy as np
import pytest

import sbi_lens
from sbi_lens.cli import main
from sbi_lens.config import load_config
from sbi_lens.fits_writer import write_cutout
from sbi_lens.shipped import SHIPPED_MODELS_DIR, format_models_table, shipped_model_names
from sbi_lens.store import SCHEMA_VERSION, SimulationStore

FOLDER = SHIPPED_MODELS_DIR / "lsst_gri"


def _report() -> dict:
    return json.loads((FOLDER / "report.json").read_text())


def _simulate(tmp_path, num: int, seed: int, workers: int = 1) -> SimulationStore:
    out = tmp_path / f"lsst_gri_{seed}.zarr"
    argv = ["simulate", "lsst_gri", "--num", str(num), "--out", str(out), "--seed", str(seed)]
    assert main([*argv, "--workers", str(workers), "--quiet"]) == 0
    return SimulationStore.open(out)


def test_lsst_gri_ships_with_its_recipe_and_report(capsys):
    assert "lsst_gri" in shipped_model_names()
    info = json.loads((FOLDER / "model.json").read_text())
    assert info["store_schema_version"] == SCHEMA_VERSION
    assert "name: lsst_gri" in info["simulation_config"]
    # 100,000 simulated lenses (seed 1): training chunks plus the validation chunks.
    chunks = len(info["train_chunks"]) + len(info["validation_chunks"])
    assert chunks == -(-100_000 // 256) and "chunk_size: 256" in info["simulation_config"]
    assert info["num_train_lenses"] >= 85_000 and info["store_seed"] == 1
    report = _report()
    assert report["held_out_seed"] == 2 and report["metrics"]["num_lenses"] == 2000
    assert "sbi-lens diagnose lsst_gri" in report["diagnose_command"]
    size = sum(p.stat().st_size for p in FOLDER.iterdir())
    assert size < 8e6, f"{size / 1e6:.1f} MB of package data"
    assert main(["models"]) == 0
    assert "lsst_gri" in capsys.readouterr().out and "lsst_gri" in format_models_table()


def test_lsst_gri_runs_on_a_fits_cutout_inside_the_support(tmp_path):
    """A simulated lsst_gri lens written as a FITS cube, then `sbi-lens infer lsst_gri`."""
    store = _simulate(tmp_path, num=3, seed=321)
    theta, x = store.load()
    files = [
        str(write_cutout(tmp_path / "fits" / f"lens_{i}.fits", x[i], store.layout.bands, 0.2)[0])
        for i in range(len(x))
    ]
    out = tmp_path / "out"
    assert main(["infer", "lsst_gri", *files, "--out", str(out), "--num-samples", "500"]) == 0
    prior = load_config("lsst_gri").prior
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(x)
    for row in rows:
        samples = np.load(out / f"{row['name']}_samples.npz")["samples"]
        assert samples.shape == (500, 4) and np.isfinite(samples).all()
        z_l, z_s, theta_e, sigma_v = samples.T
        assert ((z_l >= prior.z_lens.low) & (z_l <= prior.z_lens.high)).all()
        assert (z_s >= z_l + prior.min_separation - 1e-4).all()
        assert ((theta_e >= prior.theta_E_window[0]) & (theta_e <= prior.theta_E_window[1])).all()
        assert ((sigma_v >= prior.sigma_v.low) & (sigma_v <= prior.sigma_v.high)).all()
        assert 0 < float(row["ood_pvalue"]) <= 1
    posterior = sbi_lens.load_posterior("lsst_gri")
    assert posterior.sample((10,), x=x[:1]).shape == (10, 4)


def _bootstrap_r2_se(truth: np.ndarray, mean: np.ndarray, rng, n: int = 500) -> np.ndarray:
    """Standard error of R² of each column, bootstrapped over lenses."""
    draws = []
    for _ in range(n):
        rows = rng.integers(0, len(truth), len(truth))
        t, m = truth[rows], mean[rows]
        draws.append(1 - ((m - t) ** 2).sum(0) / ((t - t.mean(0)) ** 2).sum(0))
    return np.std(draws, axis=0)


@pytest.mark.slow
def test_lsst_gri_matches_its_report_on_fresh_held_out_lenses(tmp_path):
    """300 fresh lenses (seed 7): each parameter's R² and 68 % / 95 % coverage agree with
    report.json (2,000 lenses, seed 2) within 3 standard errors of the difference."""
    store = _simulate(tmp_path, num=300, seed=7, workers=2)
    out = tmp_path / "report"
    argv = ["diagnose", "lsst_gri", store.path, "--out", str(out), "--num-obs", "300"]
    assert main([*argv, "--seed", "0"]) == 0
    fresh = json.loads((out / "metrics.json").read_text())
    recorded = _report()["metrics"]
    n_fresh, n_recorded = fresh["num_lenses"], recorded["num_lenses"]
    truth = np.asarray(fresh["estimates"]["theta"])
    mean = np.asarray(fresh["estimates"]["mean"])
    se_fresh = _bootstrap_r2_se(truth, mean, np.random.default_rng(0))
    for j, row in enumerate(fresh["metrics"]):
        name = row["name"]
        se = se_fresh[j] * np.sqrt(1 + n_fresh / n_recorded)
        assert abs(row["r2_mean"] - recorded["r2"][name]) <= 3 * se, (name, row["r2_mean"], se)
        for level in ("68", "95"):
            p = recorded[f"coverage_{level}"][name]
            se = np.sqrt(p * (1 - p) * (1 / n_fresh + 1 / n_recorded))
            got = row[f"coverage_{level}"]
            assert abs(got - p) <= 3 * se, (name, level, got, p)
