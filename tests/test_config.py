import pytest

from sbi_lens.cli import main
from sbi_lens.config import ConfigError, TrainConfig, load_config, load_train_config, parse_config
from sbi_lens.resources import builtin_config_names


def test_builtin_configs_load():
    names = builtin_config_names()
    assert {"quickstart", "lsst_gri", "euclid_vis", "hst"} <= set(names)
    for name in names:
        config = load_config(name)
        assert load_config(config.to_yaml()) == config  # YAML round trip


def test_lsst_gri_is_the_reference_setting():
    config = load_config("lsst_gri")
    assert config.survey.bands == ("g", "r", "i")
    assert (config.survey.num_pixels, config.survey.pixel_scale) == (64, 0.2)
    assert config.survey.supersampling == 2 and config.survey.coadd_years == 10
    assert (config.prior.z_lens.low, config.prior.z_lens.high) == (0.1, 1.0)
    assert config.prior.min_separation == 0.3 and config.prior.z_source.high == 3.5
    assert (config.prior.sigma_v.low, config.prior.sigma_v.high) == (180, 350)
    assert config.prior.theta_E_window == (0.5, 3.0)
    assert (config.prior.scatter.mean, config.prior.scatter.std) == (1.0, 0.065)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"prior": {"zlens": {}}}, "prior.zlens: unknown key"),
        ({"survey": {"num_pixels": "many"}}, "survey.num_pixels"),
        ({"prior": {"sigma_v": {"kind": "uniform", "low": 300, "high": 200}}}, "prior.sigma_v"),
        ({"survey": {"name": "LSST", "bands": ["g", "VIS"]}}, "unknown band"),
        ({"prior": {"theta_E_window": [2.0, 1.0]}}, "theta_E_window"),
        ({"prior": {"cosmology": "Planck99"}}, "Planck99"),
    ],
)
def test_invalid_config_names_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        parse_config(data, source="test.yaml")


def test_cli_reports_bad_config_on_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("survey:\n  name: LSST\n  bands: [g, q]\n")
    status = main(["simulate", str(path), "--num", "4", "--out", str(tmp_path / "s.zarr")])
    error = capsys.readouterr().err.strip()
    assert status != 0
    assert error.startswith("sbi-lens: error:") and "\n" not in error
    assert "unknown band" in error and "bad.yaml" in error
    assert not (tmp_path / "s.zarr").exists()


def test_missing_config_file(capsys):
    assert main(["simulate", "no-such-config", "--num", "4", "--out", "x.zarr"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: [1\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping at the top level, got list"),
        ("epochs: 1\nlearning_rat: 0.1\n", "learning_rat: unknown key"),
        ("flow: {num_bins: 1}\n", "flow.num_bins:"),
    ],
)
def test_train_config_errors_are_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_train_config(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
    assert message in str(error.value)


def test_train_config_directory_missing_and_empty(tmp_path):
    with pytest.raises(ConfigError, match="is a directory") as error:
        load_train_config(tmp_path)
    assert str(error.value).startswith(f"{tmp_path}: ")
    with pytest.raises(ConfigError, match="no such training config"):
        load_train_config(tmp_path / "absent.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set: defaults\n")
    assert load_train_config(empty) == TrainConfig() == load_train_config(None)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)  # the simulation loader shares the file reader
