"""The data curvature: IVON's h with the initial value removed, against a NumPy re-derivation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mlp, mlp_batch, stateless_loss

import bmr_eqx as bx


@pytest.mark.parametrize("every", [1, 2])
def test_data_hess_is_the_weighted_average_of_the_updates(every):
    b2, h0, delta = 0.8, 0.7, 1e-2
    post = bx.Posterior(bx.Sparse(mlp()), ess=32.0, weight_decay=delta, hess_init=h0)
    assert float(post.init_weight) == 1.0
    assert all(float(jnp.abs(v).max()) == 0 for v in post.data_hess().values())  # nothing learnt yet
    opt = bx.ivon(0.05, b2=b2, hess_update_every=every)
    state = opt.init(post)
    x, y = mlp_batch()
    path = "layers[1].weight"
    h = np.full(post.hess[path].shape, h0, np.float64)
    num, n = np.zeros_like(h), 0  # Σ_s b2^(n-s)·[(1-b2)·ĥ_s + c_s]: the data part, exactly

    @eqx.filter_jit  # one compilation, not one per op
    def step(post, state, key):
        _, grads, h_hat = bx.noisy_value_and_grad(stateless_loss)(post, key, x, y)
        updates, state = opt.update(grads, state, post, hess_estimate=h_hat)
        return eqx.apply_updates(post, updates), state, h_hat

    for t in range(7):
        post, state, h_hat = step(post, state, jax.random.key(t))
        if t % every == 0:
            hh = np.asarray(h_hat[path], np.float64)
            term = (1 - b2) * hh + 0.5 * (1 - b2) ** 2 * (h - hh) ** 2 / (h + delta)
            h = b2 * h + term
            num = b2 * num + term
            n += 1
    np.testing.assert_allclose(post.hess[path], h, rtol=1e-5)
    assert float(post.init_weight) == pytest.approx(b2**n, rel=1e-6)
    np.testing.assert_allclose(post.data_hess()[path], num / (1 - b2**n), rtol=1e-4, atol=1e-6)
    assert float(bx.trainable(post).init_weight is None)  # a statistic, never trained


def test_given_curvature_is_data_and_bmr_scores_use_the_data_part():
    post = bx.Posterior(bx.Sparse(mlp()), ess=50.0, weight_decay=1e-2, hess_init=1.0)
    keys = jax.random.split(jax.random.key(3), len(post.hess))
    h = {k: jax.random.uniform(kk, v.shape, minval=0.6, maxval=4.0) for (k, v), kk in zip(post.hess.items(), keys)}
    given = bx.Posterior(post.mean, ess=50.0, weight_decay=1e-2, hess_init=1.0, hess=h)
    assert float(given.init_weight) == 0.0
    np.testing.assert_array_equal(given.data_hess()["layers[0].weight"], h["layers[0].weight"])
    # half of h is still hess_init: the pruner scores ΔF at the data curvature 2h − 1
    half = eqx.tree_at(lambda p: p.init_weight, given, jnp.asarray(0.5))
    pruned = bx.BMRPruning(sparsity=0.5, curvature="data").prune(half)
    as_trained = bx.BMRPruning(sparsity=0.5).prune(half)  # the default reads h itself
    np.testing.assert_array_equal(
        as_trained.mean.masks["layers[0].weight"],
        bx.topk_mask(-bx.delta_f_spike(post.mean.model.layers[0].weight, h["layers[0].weight"], 50.0, 1e-2), 0.5),
    )
    w, hw = post.mean.model.layers[0].weight, h["layers[0].weight"]
    expect = bx.topk_mask(-bx.delta_f_spike(w, 2 * hw - 1.0, 50.0, 1e-2), 0.5)
    np.testing.assert_array_equal(pruned.mean.masks["layers[0].weight"], expect)
    assert not jnp.array_equal(expect, bx.topk_mask(-bx.delta_f_spike(w, hw, 50.0, 1e-2), 0.5))


def test_laplace_posterior_of_a_linear_gaussian_model_is_exact():
    # y = X w + noise (σ = 0.5), each row of X one scaled feature, so every batch's XᵀX is diagonal:
    # the exact posterior is Gaussian with diagonal precision XᵀX/σ² + Nδ, the Laplace posterior at
    # the MAP is exact (Hutchinson's estimate too), and each weight's spike ΔF must be the exact
    # log-evidence difference of dropping its feature.
    sigma, delta, n = 0.5, 0.05, 8
    x = np.eye(4)[np.arange(n) % 4] * np.array([3.0, 1.0, 0.3, 0.05, 2.0, 0.7, 0.2, 0.1])[:, None]
    y = x @ np.array([1.0, -0.5, 0.2, 0.0]) + sigma * np.random.default_rng(1).normal(size=n)
    precision = x.T @ x / sigma**2 + n * delta * np.eye(4)
    w_map = np.linalg.solve(precision, x.T @ y / sigma**2)
    model = eqx.tree_at(lambda m: m.weight, eqx.nn.Linear(4, 1, use_bias=False, key=jax.random.key(0)),
                        jnp.asarray(w_map[None], jnp.float32))

    def loss(m, xb, yb):
        return 0.5 * jnp.mean((jax.vmap(m)(xb)[:, 0] - yb) ** 2) / sigma**2

    batches = [(jnp.asarray(x[:5], jnp.float32), jnp.asarray(y[:5], jnp.float32)),
               (jnp.asarray(x[5:], jnp.float32), jnp.asarray(y[5:], jnp.float32))]
    post = bx.laplace_posterior(model, loss, batches, weight_decay=delta, num_probes=4)
    assert post.ess == n and post.weight_decay == delta
    np.testing.assert_allclose(post.ess * (post.hess["weight"][0] + delta), np.diag(precision), rtol=1e-4)

    def log_evidence(cols):
        cov = sigma**2 * np.eye(n) + x[:, cols] @ x[:, cols].T / (n * delta)
        return -0.5 * (y @ np.linalg.solve(cov, y) + np.linalg.slogdet(2 * np.pi * cov)[1])

    full = log_evidence([0, 1, 2, 3])
    exact = [log_evidence([c for c in range(4) if c != j]) - full for j in range(4)]
    np.testing.assert_allclose(bx.posterior_delta_f(post)["weight"][0], exact, rtol=1e-3, atol=1e-4)
    kept = bx.AdaptiveBMR().prune(post).mean.masks["weight"][0]
    np.testing.assert_array_equal(kept, np.array(exact) <= 0)  # prune exactly where the evidence rises


def test_laplace_posterior_errors():
    model = eqx.nn.Linear(2, 1, key=jax.random.key(0))
    loss = lambda m, x: jnp.mean(jax.vmap(m)(x) ** 2)  # noqa: E731
    with pytest.raises(ValueError, match="empty"):
        bx.laplace_posterior(model, loss, [], weight_decay=0.1)
    with pytest.raises(ValueError, match="weight_decay must be > 0"):
        bx.laplace_posterior(model, loss, [jnp.ones((3, 2))], weight_decay=0.0)
