"""``sbi-lens infer``: a tiny trained model run on FITS cutouts written from simulations."""

import csv
import json

import numpy as np
import pytest
from conftest import write_ring_store

from sbi_lens import PARAMETER_NAMES
from sbi_lens.cli import main
from sbi_lens.config import TrainConfig
from sbi_lens.fits_writer import write_cutout
from sbi_lens.inference import run_inference
from sbi_lens.training import train

TINY = TrainConfig(
    epochs=1,
    batch_size=64,
    flow={"hidden_features": 16, "num_blocks": 2},
    embedding={"widths": [8], "out_features": 8},
)
BANDS = ("g", "r", "i")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """(MODEL folder, three simulated lenses as FITS: a cube, per-band files, a big cube)."""
    root = tmp_path_factory.mktemp("infer")
    store = write_ring_store(root / "rings.zarr", num=128, chunk_size=64, size=32)
    model = train(store.path, root / "model", TINY, device="cpu", progress=False).model_dir
    theta, x = store.read_chunk(0)
    cube = write_cutout(root / "fits" / "lens_a.fits", x[0], BANDS, 0.2)
    per_band = write_cutout(root / "fits" / "lens_b.fits", x[1], BANDS, 0.2, cube=False)
    big = np.pad(x[2], ((0, 0), (4, 4), (4, 4)), mode="reflect")
    padded = write_cutout(root / "fits" / "lens_c.fits", big, BANDS, 0.2, scale_keyword="cdelt")
    return model, [*cube, *per_band, *padded]


def _printed_rows(text):
    """{(lens, parameter): [median, 16, 84, 2.5, 97.5]} from the printed tables."""
    rows, lens = {}, None
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if not line.startswith(" "):
            lens = words[0]
        elif words[0] in PARAMETER_NAMES:
            rows[lens, words[0]] = [float(w) for w in words[1:6]]
            assert words[6] == {"theta_E": "arcsec", "sigma_v": "km/s"}.get(words[0], "-")
    return rows


def test_end_to_end_writes_outputs_and_ordered_intervals(simulated, tmp_path, capsys):
    model, files = simulated
    out = tmp_path / "out"
    argv = [model, *files, "--out", out, "--crop", "--num-samples", 300, "--seed", 3]
    assert main(["infer", *map(str, argv)]) == 0
    printed = capsys.readouterr().out
    names = ["lens_a", "lens_b", "lens_c"]
    expected = {"summary.csv", "summary.json"} | {
        f"{n}_{suffix}" for n in names for suffix in ("samples.npz", "samples.csv", "corner.png")
    }
    assert {p.name for p in out.iterdir()} == expected | {".sbi-lens"}

    rows = _printed_rows(printed)
    assert set(rows) == {(n, p) for n in names for p in PARAMETER_NAMES}
    for median, p16, p84, p2_5, p97_5 in rows.values():
        assert p2_5 <= p16 <= median <= p84 <= p97_5
    assert "lens_c  (lens_c.fits, cropped)" in printed

    with np.load(out / "lens_b_samples.npz") as saved:
        samples = saved["samples"]
        assert list(saved["parameter_names"]) == list(PARAMETER_NAMES)
        assert len(saved["sources"]) == 3
    assert samples.shape == (300, 4) and samples.dtype == np.float32
    assert (samples[:, 1] > samples[:, 0]).all() and (samples[:, 2:] > 0).all()
    table = np.loadtxt(out / "lens_b_samples.csv", delimiter=",", skiprows=1)
    header = (out / "lens_b_samples.csv").read_text().splitlines()[0]
    assert header == "z_lens,z_source,theta_E,sigma_v"
    np.testing.assert_allclose(table, samples, rtol=1e-5)

    summary = json.loads((out / "summary.json").read_text())
    assert [lens["name"] for lens in summary["lenses"]] == names
    theta_e = summary["lenses"][1]["parameters"]["theta_E"]
    assert theta_e["unit"] == "arcsec"
    assert theta_e["median"] == pytest.approx(np.median(samples[:, 2]), rel=1e-5)
    assert theta_e["p16"] == pytest.approx(np.percentile(samples[:, 2], 16), rel=1e-5)
    with open(out / "summary.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["name"] for r in csv_rows] == names
    assert float(csv_rows[1]["sigma_v_p97.5"]) == pytest.approx(
        np.percentile(samples[:, 3], 97.5), rel=1e-5
    )


def test_seeded_and_leaves_the_global_rng_alone(simulated, tmp_path):
    import torch

    model, files = simulated
    kwargs = dict(crop=True, num_samples=50, corner=False, echo=None)
    torch.manual_seed(123)
    first = run_inference(model, files, tmp_path / "a", seed=7, **kwargs)
    state = torch.get_rng_state()
    second = run_inference(model, files, tmp_path / "b", seed=7, **kwargs)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be consumed"
    third = run_inference(model, files, tmp_path / "c", seed=8, **kwargs)
    a, b, c = (np.load(tmp_path / d / "lens_a_samples.npz")["samples"] for d in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(first[0].percentiles, second[0].percentiles)
    assert len(third) == 3


def test_user_errors_write_nothing(simulated, tmp_path):
    model, files = simulated
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"lens_c.fits: cutout is 40x40 pixels, .* crop=True"):
        run_inference(model, files, out, num_samples=10, echo=None)
    assert not out.exists(), "a bad cutout must stop the run before anything is written"
    with pytest.raises(ValueError, match="not a sbi-lens model folder"):
        run_inference(tmp_path, files[:1], out, echo=None)
    with pytest.raises(ValueError, match="num_samples=1: must be at least 2"):
        run_inference(model, files[:1], out, num_samples=1, echo=None)
    run_inference(model, files[:1], out, num_samples=10, corner=False, echo=None)
    with pytest.raises(ValueError, match="already holds inference results"):
        run_inference(model, files[:1], out, num_samples=10, echo=None)


def test_cli_errors_name_the_flags(simulated, tmp_path, capsys):
    """The library names Python arguments; the command line shows its own flags."""
    model, files = simulated
    argv = ["infer", str(model), *map(str, files), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("sbi-lens: error: ") and "pass --crop" not in error
    assert "use --crop to take the centred window" in error
    assert main([*argv, "--crop", "--bands", "g,g,r"]) == 2
    assert "--bands 'g,g,r': duplicate band names" in capsys.readouterr().err
