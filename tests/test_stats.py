import pytest

from realign.stats import wilson


def test_wilson_known_values():
    lo, hi = wilson(5, 100)
    assert lo == pytest.approx(0.02154, abs=1e-4) and hi == pytest.approx(0.11175, abs=1e-4)
    lo, hi = wilson(0, 216)
    assert lo == 0.0 and hi == pytest.approx(0.01745, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(1.0) and 0.69 < lo < 0.73
