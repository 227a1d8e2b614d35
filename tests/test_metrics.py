import jax.numpy as jnp
import numpy as np
import pytest

import bmr_eqx as bx


def test_ece_hand_computed():
    probs = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = jnp.array([0, 1, 1, 0])
    # 2 bins: (0, .5] is empty; (.5, 1]: confidences .9 .8 .7 .55 (mean .7375), accuracy 2/4.
    assert float(bx.expected_calibration_error(probs, labels, num_bins=2)) == pytest.approx(0.2375, abs=1e-6)
    # 10 bins: .9 -> bin 9 (correct), .8 -> bin 8 (wrong), .7 -> bin 7 (correct), .55 -> bin 6 (wrong).
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(0 - 0.55)) / 4
    assert float(bx.expected_calibration_error(probs, labels, num_bins=10)) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="num_bins"):
        bx.expected_calibration_error(probs, labels, 0)


def test_accuracy_nll_and_bundle():
    probs = jnp.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = jnp.array([0, 1, 1])
    m = bx.classification_metrics(probs, labels, num_bins=5)
    assert float(m["accuracy"]) == pytest.approx(2 / 3)
    assert float(m["nll"]) == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4])), rel=1e-6)
    assert set(m) == {"accuracy", "nll", "ece"}
