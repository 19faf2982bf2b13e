"""Nothing silently wrong, nothing overwritten: one test per failure the tool promises to catch.

Each test is named after its case. A user-facing failure is one line on stderr, exit
status 2, no traceback. Sections: configs, store damage and repair, store creation and
concurrent writers, command line. Append training / diagnose / infer cases at the end.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import zarr
from conftest import TINY_SIMULATION as TINY
from conftest import write_ring_store

from sbi_lens.cli import main
from sbi_lens.config import ConfigError, TrainConfig, load_config, load_train_config
from sbi_lens.inference import run_inference
from sbi_lens.parallel import run_simulation
from sbi_lens.store import SCHEMA_VERSION, SimulationStore, StoreError
from sbi_lens.training import train

NUM, SEED = 40, 7


@pytest.fixture(scope="module")
def reference(tiny_config, tmp_path_factory):
    """An uninterrupted 5-chunk store, never modified by the tests."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    return run_simulation(load_config(tiny_config), NUM, out, seed=SEED, progress=False)


@pytest.fixture
def copy(reference, tmp_path):
    """A fresh copy of the reference store, for a test to damage."""
    return shutil.copytree(reference.path, tmp_path / "copy.zarr")


def _simulate_args(config, out, *extra):
    return ["simulate", str(config), "--num", str(NUM), "--out", str(out), "--seed", str(SEED)]


def _simulate(config, out, *extra):
    return main([*_simulate_args(config, out), "--quiet", *extra])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("sbi-lens: error: ") and "\n" not in err and "Traceback" not in err
    return err


def _same_bytes(path, reference) -> bool:
    store = SimulationStore.open(path)
    return all(
        getattr(store, name)[:].tobytes() == getattr(reference, name)[:].tobytes()
        for name in ("theta", "x", "nuisance")
    )


# ====================================================================== configs
def test_infinite_or_non_positive_pixel_scale_is_refused():
    for value in (".inf", "0.0", "-0.2"):
        with pytest.raises(ConfigError, match=r"survey\.pixel_scale: "):
            load_config(f"survey: {{pixel_scale: {value}}}\n")


def test_nan_in_any_physical_float_is_refused():
    for text, field in (
        ("prior:\n  z_lens: {kind: uniform, low: 0.1, high: .nan}\n", r"prior\.z_lens"),
        ("prior:\n  scatter: {mean: 1.0, std: .nan}\n", r"prior\.scatter\.std"),
        ("population:\n  source_mag_range: [-2.0, .inf]\n", r"population\.source_mag_range"),
        ("population:\n  lens_colour_scatter: -0.1\n", r"population\.lens_colour_scatter"),
    ):
        with pytest.raises(ConfigError, match=field):
            load_config(text)


def test_mass_slope_outside_its_range_is_refused():
    with pytest.raises(ConfigError, match=r"population\.lens_slope_std: "):
        load_config("population: {lens_slope_std: -0.1}\n")
    with pytest.raises(ConfigError, match=r"population: lens_slope_range must satisfy"):
        load_config("population: {lens_slope_mean: 2.6}\n")


@pytest.mark.parametrize(
    "text, message",
    [
        ("neighbours: {density_scale: -1.0}", r"density_scale: .*greater than or equal to 0"),
        ("neighbours: {exclusion_radius: .nan}", r"neighbours\.exclusion_radius: "),
        ("neighbours: {magnitude_limit: 40}", r"magnitude_limit: .*less than or equal to 32"),
        ("neighbours: {enabled: maybe}", r"neighbours\.enabled: "),
        ("neighbours: {stars: true}", r"neighbours\.stars: unknown key"),
        ("neighbours: {density_scale_range: [2.5, 0.7]}",
         r"neighbours: density_scale_range must satisfy 0 < low ≤ high ≤ 20\.0, got \[2\.5, "),
        ("neighbours: {density_scale_range: [0, 2]}", r"neighbours: density_scale_range must"),
        ("neighbours: {density_scale_range: [1, .inf]}", r"neighbours\.density_scale_range"),
        ("population: {lens_colour_scatter_range: [0.06, 0.02]}",
         r"population: lens_colour_scatter_range must satisfy 0 < low ≤ high"),
        ("population: {lens_colour_scatter_range: [-0.01, 0.02]}",
         r"population: lens_colour_scatter_range must satisfy"),
    ],
)  # fmt: skip
def test_bad_neighbour_or_marginalising_settings_are_one_line_naming_the_field(text, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(text + "\n")
    assert "\n" not in str(error.value)


def test_bad_psf_or_noise_setting_is_refused_naming_the_field():
    for text, field in (
        ("survey: {psf: {profile: airy}}\n", r"survey\.psf\.profile: "),
        ("survey: {psf: {beta: 0.5}}\n", r"survey\.psf\.beta: "),
        ("survey: {psf: {fwhm_scale: -1}}\n", r"survey\.psf\.fwhm_scale: "),
        ("survey: {noise_scale: 0}\n", r"survey\.noise_scale: "),
        ("survey: {noise_scale_range: [1.25, 0.85]}\n", r"survey\.noise_scale_range: .*low ≤ high"),
        ("survey: {noise_scale_range: [0, 1.2]}\n", r"survey\.noise_scale_range: .*0 < low"),
        ("survey: {noise_scale_range: [0.9]}\n", r"survey\.noise_scale_range"),
        ("survey: {psf_type: GAUSSIAN}\n", r"survey: psf_type .*replaced by psf"),
    ):
        with pytest.raises(ConfigError, match=field) as error:
            load_config(text)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", ["d8", "D4", "rotations"])
def test_unknown_embedding_symmetry_is_one_line_naming_field_and_value(tmp_path, value):
    path = tmp_path / "train.yaml"
    path.write_text(f"embedding: {{symmetry: {value}}}\n")
    with pytest.raises(ConfigError) as error:
        load_train_config(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: embedding.symmetry: must be 'none', 'c4' or 'd4'")
    assert repr(value) in message


def test_empty_config_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="empty.yaml: config is empty"):
        load_config(path)


def test_a_directory_as_simulation_config_is_one_line(tmp_path, capsys):
    assert _simulate(tmp_path, tmp_path / "s.zarr") == 2
    assert "is a directory, expected a YAML file" in _one_line_error(capsys)
    assert not (tmp_path / "s.zarr").exists()


def test_simulate_with_infinite_pixel_scale_exits_2_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "inf.yaml"
    config.write_text(TINY.replace("pixel_scale: 0.2", "pixel_scale: .inf"))
    assert _simulate(config, tmp_path / "s.zarr") == 2
    assert "pixel_scale" in _one_line_error(capsys)
    assert not (tmp_path / "s.zarr").exists()


# ====================================================================== store damage and repair
def _delete_chunk(store_path, array="x", index=3):
    """Delete one zarr 3 chunk file (key c/<row chunk>/0/...), as an incomplete copy would."""
    ndim = {"theta": 2, "x": 4, "nuisance": 2}[array]
    os.remove(os.path.join(store_path, array, "c", str(index), *["0"] * (ndim - 1)))


def _truncate_chunk(store_path, index=2):
    path = os.path.join(store_path, "x", "c", str(index), "0", "0", "0")
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)


def test_missing_chunk_file_is_found_by_verify(copy):
    _delete_chunk(copy)
    health = SimulationStore.open(copy).verify(full=False)
    assert health.missing == (3,) and not health.ok and 3 not in health.good


def test_show_refuses_a_store_with_a_missing_chunk(copy, tmp_path, capsys):
    _delete_chunk(copy)
    assert main(["show", str(copy), "--out", str(tmp_path / "m.png")]) == 2
    err = _one_line_error(capsys)
    assert "chunk 3 missing" in err and "re-run `sbi-lens simulate`" in err


def test_show_allow_partial_uses_only_intact_chunks(copy, tmp_path):
    _delete_chunk(copy, "theta", 0)
    out = tmp_path / "m.png"
    assert main(["show", str(copy), "--out", str(out), "--num", "4", "--allow-partial"]) == 0
    assert out.exists()
    assert list(SimulationStore.open(copy).require_complete(allow_partial=True)) == [1, 2, 3, 4]


def test_simulate_rerun_repairs_a_missing_chunk_bit_identically(
    copy, tiny_config, reference, capsys
):
    _delete_chunk(copy)
    assert _simulate(tiny_config, copy) == 0
    assert "repairing 1 missing chunk (3)" in capsys.readouterr().err
    assert _same_bytes(copy, reference) and SimulationStore.open(copy).verify().ok


def test_truncated_chunk_is_reported_as_corrupt_in_one_line(copy, tmp_path, capsys):
    _truncate_chunk(copy)
    assert main(["show", str(copy), "--out", str(tmp_path / "m.png"), "--num", "40"]) == 2
    assert "chunk 2 is corrupt" in _one_line_error(capsys)
    assert SimulationStore.open(copy).verify(full=True).corrupt == (2,)


def test_simulate_rerun_repairs_a_truncated_chunk(copy, tiny_config, reference, capsys):
    _truncate_chunk(copy)
    assert _simulate(tiny_config, copy) == 0
    assert "repairing 1 corrupt chunk (2)" in capsys.readouterr().err
    assert _same_bytes(copy, reference)


def test_chunk_overwritten_with_other_data_fails_its_checksum(copy):
    zarr.open_group(str(copy), mode="r+")["x"][8:16] = 1.0  # chunk 1, flags untouched
    store = SimulationStore.open(copy)
    with pytest.raises(StoreError, match="chunk 1 is corrupt"):
        store.read_chunk(1)
    with pytest.raises(StoreError, match="chunk 1 is corrupt"):
        store.load()
    assert store.verify(full=True).corrupt == (1,)


def test_unfinished_store_is_refused_to_readers(reference, tiny_config, tmp_path):
    partial = run_simulation(load_config(tiny_config), 8, tmp_path / "p.zarr", seed=SEED)
    zarr.open_group(partial.path, mode="r+")["chunk_done"][0] = 0
    with pytest.raises(StoreError, match="chunk 0 unfinished"):
        SimulationStore.open(partial.path).require_complete()


def test_fingerprint_identifies_content_not_path(copy, reference, tiny_config, tmp_path):
    other = run_simulation(load_config(tiny_config), 8, tmp_path / "o.zarr", seed=SEED)
    fingerprint = SimulationStore.open(copy).fingerprint
    assert fingerprint == reference.fingerprint == reference.attrs["fingerprint"]
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert other.fingerprint != fingerprint


@pytest.mark.parametrize("old", range(1, SCHEMA_VERSION))
def test_old_schema_store_asks_to_resimulate(copy, old):
    zarr.open_group(str(copy), mode="r+").attrs["schema_version"] = old
    expected = f"schema_version is {old}, expected {SCHEMA_VERSION}; re-simulate"
    with pytest.raises(StoreError, match=expected):
        SimulationStore.open(copy)


# ====================================================================== creation and writers
def test_interrupt_during_store_creation_leaves_a_resumable_store(
    tiny_config, reference, tmp_path, monkeypatch
):
    calls = []
    original = zarr.Group.create_array

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after the group exists, before the store is complete
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", interrupted)
    out = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        run_simulation(load_config(tiny_config), NUM, out, seed=SEED, progress=False)
    monkeypatch.undo()
    assert run_simulation(load_config(tiny_config), NUM, out, seed=SEED, progress=False)
    assert _same_bytes(out, reference)
    assert sorted(os.listdir(tmp_path)) == ["s.zarr"]  # no temporary folder, no lock left


def test_negative_seed_is_refused_before_anything_is_written(tiny_config, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    assert main(["simulate", str(tiny_config), "--num", "8", "--out", str(out), "--seed", "-1"])
    assert "seed must be ≥ 0" in _one_line_error(capsys)
    assert not out.exists()


def test_config_mismatch_names_the_field(copy, tiny_config, tmp_path, capsys):
    config = tmp_path / "48.yaml"
    config.write_text(TINY.replace("num_pixels: 32", "num_pixels: 48"))
    assert _simulate(config, copy) == 2
    assert "config.survey.num_pixels: store has 32, command has 48" in _one_line_error(capsys)


def test_second_simulate_while_first_runs_is_refused(tiny_config, tmp_path, capsys):
    out = tmp_path / "busy.zarr"
    command = [sys.executable, "-m", "sbi_lens", *_simulate_args(tiny_config, out), "--quiet"]
    command[command.index(str(NUM))] = "4000"  # long enough to still run
    first = subprocess.Popen(command, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (out / "chunk_done" / "c").exists() and time.time() < deadline:
            time.sleep(0.05)
        before = sorted(os.listdir(out / "chunk_done" / "c"))
        status = main(command[3:])
        err = _one_line_error(capsys)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert status == 2 and "another `sbi-lens simulate` is writing" in err
    assert f"pid {first.pid}" in err and "busy.zarr.lock" in err
    assert set(before) <= set(os.listdir(out / "chunk_done" / "c"))


def test_lock_left_by_a_killed_run_is_taken_over(copy, tiny_config):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = copy.with_name(copy.name + ".lock")
    lock.write_text(f"{dead.pid} on this machine\n")
    assert _simulate(tiny_config, copy) == 0
    assert not lock.exists()


# ====================================================================== command line
def test_unreachable_scheduler_is_one_line(tiny_config, tmp_path, capsys):
    import dask
    import dask.distributed  # noqa: F401  (load its config before overriding a key of it)

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        status = _simulate(tiny_config, tmp_path / "s.zarr", "--scheduler", "tcp://127.0.0.1:9")
    assert status == 2
    assert "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'" in _one_line_error(capsys)


def test_debug_flag_shows_the_traceback(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(StoreError, match="not a sbi-lens store"):
        main(["--debug", "show", str(tmp_path / "junk"), "--out", str(tmp_path / "m.png")])


# ====================================================================== training
SMALL_TRAIN = TrainConfig(
    epochs=2,
    batch_size=64,
    flow={"hidden_features": 16, "num_blocks": 2},
    embedding={"widths": [8], "out_features": 8},
)


@pytest.fixture(scope="module")
def rings(tmp_path_factory):
    """Two small ring stores (seeds 0 and 1) and a model trained on the first."""
    root = tmp_path_factory.mktemp("rings")
    train_store = write_ring_store(root / "train.zarr", num=192, chunk_size=32, size=32)
    held_out = write_ring_store(root / "test.zarr", num=64, chunk_size=32, size=32, seed=1)
    model = root / "model"
    train(train_store.path, model, SMALL_TRAIN, device="cpu", progress=False)
    return train_store, held_out, model


def _train_args(store, out, *extra):
    return ["train", str(store), "--out", str(out), "--device", "cpu", "--quiet", *extra]


def _interrupt_at_epoch(monkeypatch, stop_epoch):
    """Make training raise KeyboardInterrupt when it starts epoch ``stop_epoch`` (a kill)."""
    from sbi_lens import training

    original = training._train_epoch

    def interrupted(run, epoch):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return original(run, epoch)

    monkeypatch.setattr(training, "_train_epoch", interrupted)


def test_train_refuses_a_store_with_a_missing_chunk(rings, tmp_path, capsys):
    damaged = shutil.copytree(rings[0].path, tmp_path / "d.zarr")
    _delete_chunk(damaged, "x", 2)
    assert main(_train_args(damaged, tmp_path / "m")) == 2
    assert "chunk 2 missing" in _one_line_error(capsys)
    assert not (tmp_path / "m").exists(), "nothing is created for a refused store"


def test_train_on_an_unfinished_store_needs_allow_partial(rings, tmp_path, capsys):
    partial = shutil.copytree(rings[0].path, tmp_path / "p.zarr")
    zarr.open_group(str(partial), mode="r+")["chunk_done"][5] = 0  # still being written
    assert main(_train_args(partial, tmp_path / "m", "--epochs", "1")) == 2
    assert "chunk 5 unfinished" in _one_line_error(capsys)
    assert main(_train_args(partial, tmp_path / "m", "--epochs", "1", "--allow-partial")) == 0
    used = json.loads((tmp_path / "m" / "model.json").read_text())
    assert 5 not in used["train_chunks"] + used["validation_chunks"]


def test_resume_on_another_store_is_refused_naming_it(rings, tmp_path, capsys):
    model = shutil.copytree(rings[2], tmp_path / "model")
    assert main(_train_args(rings[1].path, model, "--resume", "--epochs", "3")) == 2
    assert "was trained on store" in _one_line_error(capsys)


def test_resume_with_another_architecture_names_the_setting(rings, tmp_path, capsys):
    model = shutil.copytree(rings[2], tmp_path / "model")
    config = tmp_path / "wide.yaml"
    config.write_text("epochs: 3\nbatch_size: 64\nflow: {hidden_features: 32, num_blocks: 2}\n"
                      "embedding: {widths: [8], out_features: 8}\n")  # fmt: skip
    assert main(_train_args(rings[0].path, model, "--resume", "--config", str(config))) == 2
    assert "config.flow.hidden_features: model has 16, call has 32" in _one_line_error(capsys)


def test_model_json_records_the_store_and_its_chunks(rings):
    train_store, _, model = rings
    info = json.loads((model / "model.json").read_text())
    assert info["store_fingerprint"] == train_store.fingerprint
    chunks = sorted(info["train_chunks"] + info["validation_chunks"])
    assert chunks == list(range(train_store.num_chunks)) and info["status"] == "trained"


def test_a_users_folder_is_never_overwritten_by_train(rings, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "history.csv").write_text("my own history")
    assert main(_train_args(rings[0].path, folder)) == 2
    assert "is not empty and was not made by sbi-lens" in _one_line_error(capsys)
    assert (folder / "history.csv").read_text() == "my own history"


def test_a_second_train_into_the_same_folder_is_refused(rings, tmp_path, capsys):
    from sbi_lens.output_folder import LOCK_NAME

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(str(os.getpid()))  # a live run holds the folder
    assert main(_train_args(rings[0].path, folder)) == 2
    assert "being written by another sbi-lens run" in _one_line_error(capsys)


def test_training_into_a_trained_model_is_refused(rings, tmp_path, capsys):
    model = shutil.copytree(rings[2], tmp_path / "model")
    assert main(_train_args(rings[0].path, model)) == 2
    assert "already holds a trained model; --resume trains it further" in _one_line_error(capsys)


def test_kill_in_epoch_0_then_the_same_command_restarts(rings, tmp_path, monkeypatch, capsys):
    model = tmp_path / "m"
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 0)
        assert main(_train_args(rings[0].path, model, "--epochs", "1")) == 130
    assert not (model / "checkpoint.pt").exists()
    assert main(_train_args(rings[0].path, model, "--epochs", "1")) == 0
    assert json.loads((model / "model.json").read_text())["status"] == "trained"
    model_b = tmp_path / "b"
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 0)
        main(_train_args(rings[0].path, model_b, "--epochs", "1"))
    assert main(_train_args(rings[0].path, model_b, "--epochs", "1", "--resume")) == 0


def test_kill_in_a_later_epoch_continues_with_the_same_command(rings, tmp_path, monkeypatch):
    """Re-running the interrupted command continues exactly where the run stopped."""
    import torch

    model, uninterrupted = tmp_path / "m", tmp_path / "u"
    args = ("--epochs", "2")
    assert main(_train_args(rings[0].path, uninterrupted, *args)) == 0
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 1)
        assert main(_train_args(rings[0].path, model, *args)) == 130
    assert main(_train_args(rings[0].path, model, *args)) == 0
    continued = torch.load(model / "checkpoint.pt", weights_only=True)["model"]
    reference = torch.load(uninterrupted / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(continued[k], reference[k]) for k in reference)


def test_non_finite_validation_loss_names_the_chunk_and_stays_resumable(
    rings, tmp_path, monkeypatch, capsys
):
    from sbi_lens.nn.flow import SplineFlow

    original = SplineFlow.loss

    def inf_when_validating(self, theta, x, **kwargs):
        loss = original(self, theta, x, **kwargs)
        return loss if self.training else loss + float("inf")

    model = tmp_path / "m"
    with monkeypatch.context() as patch:
        patch.setattr(SplineFlow, "loss", inf_when_validating)
        assert main(_train_args(rings[0].path, model, "--epochs", "1")) == 2
    error = _one_line_error(capsys)
    assert "non-finite validation loss at epoch 0 on chunk" in error
    assert json.loads((model / "model.json").read_text())["status"] == "training"
    assert main(_train_args(rings[0].path, model, "--epochs", "1")) == 0


def test_non_finite_training_loss_is_one_line(rings, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(
        "sbi_lens.training.augment_dihedral", lambda x, generator: torch.full_like(x, float("nan"))
    )
    assert main(_train_args(rings[0].path, tmp_path / "m")) == 2
    assert "non-finite training loss at epoch 0" in _one_line_error(capsys)


def test_yaml_syntax_error_in_a_train_config_is_one_line(rings, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: [1,\n")
    assert main(_train_args(rings[0].path, tmp_path / "m", "--config", str(config))) == 2
    assert "bad.yaml: not valid YAML" in _one_line_error(capsys)


def test_a_directory_as_train_config_is_one_line(rings, tmp_path, capsys):
    assert main(_train_args(rings[0].path, tmp_path / "m", "--config", str(tmp_path))) == 2
    assert "is a directory, expected a YAML file" in _one_line_error(capsys)


def test_truncated_checkpoint_is_one_line(rings, tmp_path, capsys):
    model = shutil.copytree(rings[2], tmp_path / "model")
    checkpoint = model / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    assert main(_train_args(rings[0].path, model, "--resume", "--epochs", "3")) == 2
    assert "checkpoint.pt: damaged or truncated" in _one_line_error(capsys)


def test_a_foreign_pickle_is_refused_not_run(rings, tmp_path, capsys):
    import pickle

    model = shutil.copytree(rings[2], tmp_path / "model")
    (model / "weights.pt").write_bytes(pickle.dumps(Exception("not tensors")))
    assert main(["diagnose", str(model), rings[1].path, "--out", str(tmp_path / "r")]) == 2
    error = _one_line_error(capsys)
    assert "weights.pt: not written by sbi-lens" in error and "weights_only" not in error


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda text: text[: len(text) // 2], "model.json: not readable JSON"),
        (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "bands"}),
         "model.json: missing key(s) ['bands']"),
    ],
)  # fmt: skip
def test_damaged_model_json_is_one_line_naming_the_file(rings, tmp_path, capsys, damage, message):
    model = shutil.copytree(rings[2], tmp_path / "model")
    info = model / "model.json"
    info.write_text(damage(info.read_text()))
    assert main(["diagnose", str(model), rings[1].path, "--out", str(tmp_path / "r")]) == 2
    assert message in _one_line_error(capsys)


def test_a_stale_shipped_model_is_one_line_and_writes_nothing(rings, tmp_path, capsys, monkeypatch):
    import sbi_lens.shipped as shipped

    model = shutil.copytree(rings[2], tmp_path / "models" / "old")
    info = json.loads((model / "model.json").read_text())
    info["store_schema_version"] = 2
    (model / "model.json").write_text(json.dumps(info))
    monkeypatch.setattr(shipped, "SHIPPED_MODELS_DIR", tmp_path / "models")
    assert main(["diagnose", "old", rings[1].path, "--out", str(tmp_path / "r")]) == 2
    assert "shipped model old was trained on store schema 2" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


# ====================================================================== diagnose and infer
def test_diagnose_recognises_a_copy_of_the_training_store(rings, tmp_path, capsys):
    copy_of_training = shutil.copytree(rings[0].path, tmp_path / "elsewhere.zarr")
    assert (
        main(["diagnose", str(rings[2]), str(copy_of_training), "--out", str(tmp_path / "r")]) == 2
    )
    assert "holds the lenses the model was trained on" in _one_line_error(capsys)


def test_diagnose_never_overwrites_a_users_report(rings, tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "report.md").write_text("my notes")
    assert main(["diagnose", str(rings[2]), rings[1].path, "--out", str(folder)]) == 2
    assert "--out" in _one_line_error(capsys)
    assert (folder / "report.md").read_text() == "my notes"


def test_infer_refuses_a_multi_extension_file_without_extension(rings, tmp_path, capsys):
    import numpy as np
    from astropy.io import fits

    image = rings[1].read_chunk(0)[1][0]
    header = fits.Header({"BAND1": "g", "BAND2": "r", "BAND3": "i", "PIXSCALE": 0.2})
    path = tmp_path / "mef.fits"
    science = fits.ImageHDU(image, header, name="SCI")
    variance = fits.ImageHDU(np.ones_like(image), header, name="VAR")
    fits.HDUList([fits.PrimaryHDU(), science, variance]).writeto(path)
    argv = ["infer", str(rings[2]), str(path), "--num-samples", "10", "--no-corner"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "2 image extensions ['SCI', 'VAR']; choose one with --extension NAME" in (
        _one_line_error(capsys)
    )
    assert main([*argv, "--out", str(tmp_path / "b"), "--extension", "SCI"]) == 0


def _cutout(store, folder):
    """A held-out simulated lens as a FITS cube, as a user would give it to infer."""
    from sbi_lens.fits_writer import write_cutout

    (path,) = write_cutout(folder / "lens.fits", store.read_chunk(0)[1][0], "gri", 0.2)
    return path


def test_infer_refuses_cutouts_in_other_units(rings, tmp_path, capsys):
    """×1000 flux units (or another depth) show in the pixel noise: refused by default."""
    from astropy.io import fits

    from sbi_lens.inference import InputMismatchWarning

    model, files = rings[2], [_cutout(rings[1], tmp_path)]
    scaled = tmp_path / "scaled.fits"
    with fits.open(files[0]) as hdul:
        fits.PrimaryHDU(hdul[0].data * 1000.0, header=hdul[0].header).writeto(scaled)
    with pytest.raises(
        ValueError,
        match=r"scaled.fits: band g pixel noise [0-9.e+]+ is [0-9]{3,4}× the training images' "
        r"above the highest",
    ):
        run_inference(model, [scaled], tmp_path / "a", num_samples=10, echo=None)
    assert not (tmp_path / "a").exists()
    with pytest.warns(InputMismatchWarning, match="band g pixel noise"):
        run_inference(
            model, [scaled], tmp_path / "b", num_samples=10, corner=False, echo=None,
            noise_mismatch="warn",
        )  # fmt: skip
    argv = ["infer", str(model), str(scaled), "--num-samples", "10", "--no-corner"]
    assert main([*argv, "--out", str(tmp_path / "c")]) == 2
    assert "--allow-noise-mismatch runs it anyway" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "d"), "--allow-noise-mismatch"]) == 0
    assert "sbi-lens: warning: " in capsys.readouterr().err


def test_infer_output_names_are_unique_per_input_path(rings, tmp_path):
    """Two inputs called lens.fits in different folders keep both their samples."""
    from astropy.io import fits

    model, files = rings[2], [_cutout(rings[1], tmp_path)]
    copies = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        copies.append(tmp_path / folder / "lens.fits")
        with fits.open(files[0]) as hdul:
            hdul.writeto(copies[-1])
    summaries = run_inference(model, copies, tmp_path / "out", num_samples=10, corner=False,
                              echo=None)  # fmt: skip
    assert [s.cutout.name for s in summaries] == ["a_lens", "b_lens"]
    assert (tmp_path / "out" / "a_lens_samples.npz").exists()
    assert (tmp_path / "out" / "b_lens_samples.npz").exists()
