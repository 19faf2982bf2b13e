"""The four inferred parameters as named records: one order, used everywhere."""

import numpy as np
import pytest
import torch

from sbi_lens import PARAMETER_LABELS, PARAMETER_NAMES
from sbi_lens.parameters import (
    PARAMETER_UNITS,
    PARAMETERS,
    THETA_E,
    ThetaColumns,
    parameter,
    stack_theta,
    theta_columns,
)


def test_records_describe_the_fixed_order():
    assert PARAMETER_NAMES == ("z_lens", "z_source", "theta_E", "sigma_v")
    assert ThetaColumns._fields == PARAMETER_NAMES
    assert [p.index for p in PARAMETERS] == [0, 1, 2, 3]
    assert PARAMETER_LABELS[THETA_E.index] == THETA_E.label
    assert PARAMETER_UNITS == {"z_lens": "", "z_source": "", "theta_E": "arcsec", "sigma_v": "km/s"}
    assert parameter("sigma_v").unit_suffix == " [km/s]" and parameter("z_lens").unit_suffix == ""


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor])
def test_columns_round_trip_numpy_and_torch(make):
    theta = make(np.arange(24, dtype=np.float64).reshape(2, 3, 4))
    columns = theta_columns(theta)
    assert columns.theta_E.shape == (2, 3)
    assert float(columns.sigma_v[1, 2]) == float(theta[1, 2, 3])
    back = stack_theta(columns)
    assert type(back) is type(theta) and (back == theta).all()


def test_errors_name_the_expected_layout():
    with pytest.raises(ValueError, match=r"theta must have shape \(\.\.\., 4\) with columns"):
        theta_columns(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="unknown parameter 'theta_e'; expected one of"):
        parameter("theta_e")
