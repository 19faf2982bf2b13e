"""Reproducibility of simulation runs: workers, interruption, resumption, refusal."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sbi_lens.cli import main
from sbi_lens.config import load_config
from sbi_lens.parallel import run_simulation
from sbi_lens.store import SimulationStore, StoreError


@pytest.fixture(scope="module")
def reference_store(tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    return run_simulation(load_config(tiny_config), 40, out, seed=7, progress=False)


def _assert_same(a: SimulationStore, b: SimulationStore) -> None:
    for name in ("theta", "x", "nuisance"):
        left, right = getattr(a, name)[:], getattr(b, name)[:]
        assert left.tobytes() == right.tobytes(), f"{name} differs"


def test_store_layout(reference_store):
    store = SimulationStore.open(reference_store.path)
    assert store.theta.shape == (40, 4) and store.theta.dtype == np.float32
    assert store.x.shape == (40, 2, 32, 32) and store.x.dtype == np.float32
    assert (
        store.nuisance.shape[0] == 40
        and len(store.layout.nuisance_names) == store.nuisance.shape[1]
    )
    attrs = store.attrs
    assert attrs["parameter_names"] == ["z_lens", "z_source", "theta_E", "sigma_v"]
    assert attrs["bands"] == ["g", "r"] and attrs["pixel_scale"] == 0.2 and attrs["seed"] == 7
    assert {"config", "schema_version", "sbi_lens_version"} <= set(attrs)
    assert store.is_complete and store.num_chunks == 5
    assert np.all(np.isfinite(store.x[:]))
    assert len(np.unique(store.theta[:, 0])) == 40  # every lens is its own draw


def test_two_workers_on_dask_give_identical_store(reference_store, tiny_config, tmp_path):
    store = run_simulation(
        load_config(tiny_config), 40, tmp_path / "w2.zarr", seed=7, workers=2, progress=False
    )
    _assert_same(store, reference_store)


def test_chunks_in_any_order_give_identical_store(reference_store, tiny_config, tmp_path):
    from sbi_lens.parallel import open_or_create_store, run_chunk_task

    store = open_or_create_store(tmp_path / "rev.zarr", load_config(tiny_config), 40, 7)
    for index in reversed(range(store.num_chunks)):
        run_chunk_task(store.path, index)
    _assert_same(SimulationStore.open(store.path), reference_store)


def test_other_seed_differs(reference_store, tiny_config, tmp_path):
    other = run_simulation(
        load_config(tiny_config), 16, tmp_path / "s8.zarr", seed=8, progress=False
    )
    assert not np.array_equal(other.theta[:], reference_store.theta[:16])


def test_rerun_does_nothing_and_mismatch_is_refused(reference_store, tiny_config, capsys):
    before = os.path.getmtime(os.path.join(reference_store.path, "chunk_done", "zarr.json"))
    stamp = {
        p: os.path.getmtime(os.path.join(reference_store.path, "x", "c", p))
        for p in os.listdir(os.path.join(reference_store.path, "x", "c"))
    }
    args = [
        "simulate",
        str(tiny_config),
        "--num",
        "40",
        "--out",
        reference_store.path,
        "--seed",
        "7",
        "--quiet",
    ]
    assert main(args) == 0
    after = {p: os.path.getmtime(os.path.join(reference_store.path, "x", "c", p)) for p in stamp}
    assert after == stamp and before == os.path.getmtime(
        os.path.join(reference_store.path, "chunk_done", "zarr.json")
    )
    capsys.readouterr()
    assert main(args[:-3] + ["--seed", "8", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "made by another command" in error and "seed 7" in error
    with pytest.raises(StoreError, match="config differs"):
        config = load_config(tiny_config).model_copy(update={"chunk_size": 4})
        run_simulation(config, 40, reference_store.path, seed=7, progress=False)


def test_sigkill_then_resume_is_bit_identical(reference_store, tiny_config, tmp_path):
    out = tmp_path / "killed.zarr"
    command = [
        sys.executable,
        "-m",
        "sbi_lens",
        "simulate",
        str(tiny_config),
        "--num",
        "40",
        "--out",
        str(out),
        "--seed",
        "7",
        "--quiet",
    ]
    process = subprocess.Popen(command, start_new_session=True)
    done_dir = out / "chunk_done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline:
        if done_dir.exists() and len(os.listdir(done_dir)) >= 2:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = SimulationStore.open(out)
    assert 0 < len(partial.completed_chunks()) < partial.num_chunks, "kill came too late"
    assert subprocess.run(command).returncode == 0
    _assert_same(SimulationStore.open(out), reference_store)


def test_dask_client_runs_the_tasks(tiny_config, tmp_path):
    """--scheduler sends tasks to a running cluster (a LocalCluster here)."""
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        status = main(
            [
                "simulate",
                str(tiny_config),
                "--num",
                "16",
                "--out",
                str(tmp_path / "c.zarr"),
                "--scheduler",
                cluster.scheduler_address,
                "--quiet",
            ]
        )
    assert status == 0 and SimulationStore.open(tmp_path / "c.zarr").is_complete


def test_show_writes_a_montage(reference_store, tmp_path):
    out = tmp_path / "montage.png"
    assert main(["show", reference_store.path, "--out", str(out), "--num", "6"]) == 0
    assert out.stat().st_size > 10_000


def test_foreign_folder_is_not_a_store(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    assert main(["show", str(tmp_path / "junk"), "--out", str(tmp_path / "m.png")]) == 2
    assert "not a sbi-lens store" in capsys.readouterr().err
