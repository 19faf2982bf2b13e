"""Nothing silently wrong, nothing overwritten: one test per failure the tool promises to catch.

Each test is named after its case. A user-facing failure is one line on stderr, exit
status 2, no traceback. Sections: configs, store damage and repair, store creation and
concurrent writers, command line. Append training / diagnose / infer cases at the end.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import zarr

from sbi_lens.cli import main
from sbi_lens.config import ConfigError, load_config
from sbi_lens.parallel import run_simulation
from sbi_lens.store import SimulationStore, StoreError

TINY = """
name: tiny
prior:
  sigma_v: {kind: uniform, low: 180.0, high: 300.0}
  theta_E_window: [0.5, 2.0]
survey: {name: LSST, bands: [g, r], num_pixels: 32, pixel_scale: 0.2, supersampling: 1}
chunk_size: 8
"""
NUM, SEED = 40, 7


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return path


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
    ):
        with pytest.raises(ConfigError, match=field):
            load_config(text)


def test_empty_config_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="empty.yaml: config is empty"):
        load_config(path)


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


def test_schema_1_store_asks_to_resimulate(copy):
    zarr.open_group(str(copy), mode="r+").attrs["schema_version"] = 1
    with pytest.raises(StoreError, match="schema_version is 1, expected 2; re-simulate"):
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
# (cases for `sbi-lens train` go here)

# ====================================================================== diagnose and infer
# (cases for `sbi-lens diagnose` and `sbi-lens infer` go here)
