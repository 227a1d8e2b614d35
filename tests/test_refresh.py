"""refresh_curvature and the blind-evidence diagnostic, against closed forms."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mlp, mlp_batch, stateless_loss

import bmr_eqx as bx

SIGMA = 0.5


class LinearGaussian(eqx.Module):
    weight: jax.Array

    def __call__(self, x):
        return self.weight @ x


def gaussian_loss(model, x, y):  # mean per-example negative log-likelihood of y ~ N(w·x, σ²)
    return jnp.mean(0.5 * (jax.vmap(model)(x)[:, 0] - y) ** 2) / SIGMA**2


def linear_gaussian(orthogonal):
    n, d = 64, 6
    x = jax.random.normal(jax.random.key(0), (n, d))
    if orthogonal:  # XᵀX diagonal: Hutchinson's estimate is then exact with any probe
        q, _ = jnp.linalg.qr(x)
        x = q * jnp.arange(1.0, d + 1)
    w = jax.random.normal(jax.random.key(1), (1, d))
    y = x @ w[0] + SIGMA * jax.random.normal(jax.random.key(2), (n,))
    post = bx.Posterior(bx.Sparse(LinearGaussian(w * 0.3)), ess=float(n), weight_decay=1e-2, hess_init=5.0)
    return post, x, y


def test_hessian_refresh_is_the_gauss_newton_of_a_linear_gaussian_model():
    post, x, y = linear_gaussian(orthogonal=True)
    new = bx.refresh_curvature(post, gaussian_loss, [(x, y)], num_probes=1)
    ggn = jnp.diag(x.T @ x) / (x.shape[0] * SIGMA**2)  # the GGN of the mean loss: XᵀX/(Nσ²)
    np.testing.assert_allclose(new.hess["weight"][0], ggn, rtol=1e-5)
    assert float(new.init_weight) == 0.0
    np.testing.assert_allclose(new.data_hess()["weight"], new.hess["weight"])
    # a general X: Hutchinson's estimate is unbiased, and close with many probes
    general, xg, yg = linear_gaussian(orthogonal=False)
    est = bx.refresh_curvature(general, gaussian_loss, [(xg, yg)], num_probes=512, key=jax.random.key(4))
    np.testing.assert_allclose(est.hess["weight"][0], jnp.diag(xg.T @ xg) / (64 * SIGMA**2), rtol=0.15)


def test_fisher_refresh_is_the_mean_squared_per_example_gradient():
    post, x, y = linear_gaussian(orthogonal=False)
    new = bx.refresh_curvature(post, gaussian_loss, [(x[:40], y[:40]), (x[40:], y[40:])], method="fisher")
    w = post.mean.model.weight[0]
    residual = x @ w - y
    expect = np.mean((np.asarray(x) * np.asarray(residual)[:, None] / SIGMA**2) ** 2, axis=0)
    np.testing.assert_allclose(new.hess["weight"][0], expect, rtol=1e-4)


def test_refresh_keeps_pruned_weights_at_zero_curvature_and_checks_input():
    post = bx.Posterior(bx.MagnitudePruning(sparsity=0.5).prune(bx.Sparse(mlp())), ess=32.0)
    new = bx.refresh_curvature(post, stateless_loss, [mlp_batch()], num_probes=2)
    m = post.mean.masks["layers[1].weight"]
    assert float(jnp.abs(jnp.where(m, 0.0, new.hess["layers[1].weight"])).max()) == 0.0
    assert float(jnp.where(m, new.hess["layers[1].weight"], 0.0).max()) > 0.0
    with pytest.raises(ValueError, match="batches is empty"):
        bx.refresh_curvature(post, stateless_loss, [])
    with pytest.raises(ValueError, match="method must be one of"):
        bx.refresh_curvature(post, stateless_loss, [mlp_batch()], method="ggn2")


def test_blind_evidence_warns_and_an_informative_curvature_does_not():
    post = bx.Posterior(bx.Sparse(mlp()), ess=32.0, hess_init=0.5)
    flat = eqx.tree_at(lambda p: p.init_weight, post, jnp.asarray(0.9))  # h is still hess_init everywhere
    report = bx.curvature_report(flat)
    assert report["layers[0].weight"]["init_fraction"] == pytest.approx(0.9 * 0.5 / 0.5)
    assert report["layers[0].weight"]["spread"] == 0.0
    assert report["layers[0].weight"]["rank_corr_magnitude"] == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="refresh_curvature"):
        bx.BMRPruning(sparsity=0.5).prune(flat)
    informed = bx.refresh_curvature(post, stateless_loss, [mlp_batch()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bx.BMRPruning(sparsity=0.5).prune(informed)
    assert bx.curvature_report(informed)["layers[1].weight"]["rank_corr_magnitude"] < 0.99
