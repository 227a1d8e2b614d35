"""The embedded default data: scikit-learn's bundled 8x8 digits (1,797 images, no download)."""

import jax.numpy as jnp
import numpy as np


def load_digits_split(test_fraction: float = 0.2, seed: int = 0):
    """`(x_train, y_train, x_test, y_test)` as JAX arrays; pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return jnp.asarray(x[train]), jnp.asarray(y[train]), jnp.asarray(x[test]), jnp.asarray(y[test])
