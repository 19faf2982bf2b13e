"""benchmarks/ensemble.py (issue 10): the mixture of trained members, on tiny ring models.

Two properties that hold whatever the members learnt: a model mixed with itself is the
model (gain 0), and the mixture's log q is never below the members' mean (the log of a
mean is at least the mean of the logs), so its gain over the mean member is ≥ 0.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_ring_store

from sbi_lens.config import TrainConfig
from sbi_lens.training import train

ROOT = Path(__file__).resolve().parents[1]


def _tiny(seed: int) -> TrainConfig:
    return TrainConfig(
        epochs=1,
        batch_size=64,
        seed=seed,
        flow={"hidden_features": 16, "num_blocks": 2},
        embedding={"widths": [8], "out_features": 8},
    )


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    store = write_ring_store(root / "train.zarr", num=256, chunk_size=64, seed=0)
    test = write_ring_store(root / "test.zarr", num=64, chunk_size=64, seed=1)
    models = [
        train(store.path, root / f"m{seed}", _tiny(seed), device="cpu", progress=False)
        for seed in (0, 1)
    ]
    return test.path, [str(m.model_dir) for m in models]


def _run(store, models) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / "ensemble.py"), store, *models]
    done = subprocess.run(
        [*command, "--num", "40", "--num-samples", "100"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_model_mixed_with_itself_gains_nothing(members):
    store, (model, _) = members
    result = _run(store, [model, model])
    mixture = result["mixture"]
    assert mixture["log_q_mean"] == pytest.approx(result["members"][0]["log_q_mean"], abs=1e-4)
    assert mixture["gain_over_mean_member"] == pytest.approx(0, abs=1e-6)


def test_the_mixture_is_at_least_the_mean_member(members):
    store, models = members
    result = _run(store, models)
    assert len(result["members"]) == 2 and result["num_lenses"] == 40
    assert result["mixture"]["gain_over_mean_member"] >= 0
    for key in ("coverage_68", "coverage_95", "r2"):
        assert set(result["mixture"][key]) == {"z_lens", "z_source", "theta_E", "sigma_v"}
