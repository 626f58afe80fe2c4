"""A GPU worker's preprocess work equals the host's: the fit's statistics and the transform."""

from __future__ import annotations

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

from tasks.features.numeric import _by_column, numeric_stats  # noqa: E402
from tasks.features.transform import apply_transform, build_spec  # noqa: E402
from tests.unit.test_feature_devices import FEATURES, _frame  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rows", [0, 1, 1000, 250_003])
def test_device_statistics_equal_host_statistics(rows: int) -> None:
    train = _frame(rows)
    host, device = _by_column(train, FEATURES), numeric_stats(train, FEATURES, cupy)
    for field in ("count", "null_count", "min", "max"):
        np.testing.assert_array_equal(getattr(device.moments, field), getattr(host.moments, field))
    np.testing.assert_allclose(device.moments.mean, host.moments.mean, rtol=1e-9)
    np.testing.assert_allclose(device.moments.m2, host.moments.m2, rtol=1e-9)
    np.testing.assert_allclose(device.log_moments.mean, host.log_moments.mean, rtol=1e-6)
    assert device.infinite == host.infinite
    for name in host.sketches:
        assert device.sketches[name].count == host.sketches[name].count
        if rows:
            np.testing.assert_allclose(device.sketches[name].quantiles([0.05, 0.5, 0.95]), host.sketches[name].quantiles([0.05, 0.5, 0.95]), rtol=1e-6)


def test_device_transform_equals_host_transform() -> None:
    train, rows = _frame(20_000), _frame(100_001, seed=1)
    stats = _by_column(train, FEATURES)
    spec = build_spec(
        task="regression", label="y", label_classes=None, input_columns=list(FEATURES.all), features=FEATURES,
        moments=stats.moments, log_moments=stats.log_moments, sketches=stats.sketches,
        counts={"k": {"x": 3, "y": 2, "z": 1}}, split={"validation": 0.15, "test": 0.15, "hash": "s"},
    )
    device, host = apply_transform(rows, spec, xp=cupy), apply_transform(rows, spec)
    # log1p on the device may differ from the host's in the last float32 bit
    np.testing.assert_allclose(device, host, rtol=2e-7, atol=1e-7)
