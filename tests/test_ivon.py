import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bmr_eqx as bx


class Quad(eqx.Module):
    w: jax.Array

    def __call__(self):
        return self.w


TARGET = np.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]], np.float32)


def quad_loss(model):
    return 0.5 * jnp.sum((model() - TARGET) ** 2)


def sparse_quad(w):
    # `w` is not named like a layer weight, so choose it explicitly as the prunable leaf.
    return bx.Sparse(Quad(w), filter_spec=eqx.is_inexact_array)


def make(masked=False):
    w = jnp.array([[0.1, 0.2, -0.3], [0.4, -0.5, 0.6]])
    sparse = sparse_quad(w)
    if masked:
        sparse = bx.Sparse(sparse.model, masks={"w": jnp.array([[True, False, True], [True, True, False]])})
    return bx.Posterior(sparse, ess=50.0, weight_decay=0.1, hess_init=0.5)


@pytest.mark.parametrize("rescale", [True, False])
def test_ivon_matches_numpy_rederivation_for_two_steps(rescale):
    lr, b1, b2 = 0.05, 0.9, 0.99
    post = make()
    opt = bx.ivon(lr, b1=b1, b2=b2, rescale_lr=rescale, clip_radius=1.0)
    state = opt.init(post)
    vg = bx.noisy_value_and_grad(quad_loss)
    m = np.asarray(post.mean.model.w, np.float64)
    h = np.full_like(m, 0.5)
    g = np.zeros_like(m)
    lam, delta = 50.0, 0.1
    alpha = lr * (0.5 + delta) if rescale else lr
    for t, key in enumerate(jax.random.split(jax.random.key(0), 2), start=1):
        eps = np.asarray(post.noise(key)["w"], np.float64)  # the same draws the step uses
        loss, grads, hess_estimate = vg(post, key)
        updates, state = opt.update(grads, state, post, hess_estimate=hess_estimate)
        post = eqx.apply_updates(post, updates)
        # NumPy re-derivation of BMR.md §1.
        sigma = 1 / np.sqrt(lam * (h + delta))
        theta = m + sigma * eps
        ghat = theta - TARGET
        hhat = ghat * eps / sigma
        assert float(loss) == pytest.approx(0.5 * np.sum((theta - TARGET) ** 2), rel=1e-5)
        np.testing.assert_allclose(grads.mean.model.w, ghat, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(hess_estimate["w"], hhat, rtol=1e-4, atol=1e-5)
        assert set(hess_estimate) == set(post.hess) == {"w"}
        assert jax.tree.leaves(grads.hess) == []  # the curvature estimate never travels as a gradient
        g = b1 * g + (1 - b1) * ghat
        h = b2 * h + (1 - b2) * hhat + 0.5 * (1 - b2) ** 2 * (h - hhat) ** 2 / (h + delta)
        gbar = g / (1 - b1**t)
        m = m - alpha * np.clip((gbar + delta * m) / (h + delta), -1.0, 1.0)
        np.testing.assert_allclose(post.hess["w"], h, rtol=1e-5)
        np.testing.assert_allclose(post.mean.model.w, m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.momentum.mean.model.w, g, rtol=1e-5, atol=1e-6)
    assert int(state.count) == 2
    assert jax.tree.structure(state.momentum) == jax.tree.structure(bx.trainable(post))


def test_hess_stays_positive_and_masked_weights_stay_zero():
    post = make(masked=True)
    mask = post.mean.masks["w"]
    opt = bx.ivon(0.5, b2=0.9)  # a fast curvature average: large negative ĥ would break a plain average

    @eqx.filter_jit
    def step(post, state, key):
        _, grads, hess_estimate = bx.noisy_value_and_grad(lambda m: jnp.sum(jnp.sin(5 * m()) ** 2), mc_samples=2)(post, key)
        updates, state = opt.update(grads, state, post, hess_estimate=hess_estimate)
        return eqx.apply_updates(post, updates), state, grads, hess_estimate

    state = opt.init(post)
    for i in range(100):
        post, state, grads, hess_estimate = step(post, state, jax.random.key(i))
        assert bool(jnp.all(post.hess["w"] > 0))
        assert bool(jnp.all(jnp.where(mask, 0.0, grads.mean.model.w) == 0))  # pruned: zero gradient
        assert bool(jnp.all(jnp.where(mask, 0.0, hess_estimate["w"]) == 0))
        assert bool(jnp.all(jnp.where(mask, 0.0, post.mean.model.w) == 0))  # zeroed and kept at 0


def test_sampling_respects_masks_and_matches_sigma():
    post = make(masked=True)
    mask = post.mean.masks["w"]
    draws = jax.vmap(lambda k: post.sample(k).masked().w)(jax.random.split(jax.random.key(1), 4000))
    assert bool(jnp.all(jnp.where(mask, 0.0, draws) == 0.0))
    stored = jax.vmap(lambda k: post.sample(k).model.w)(jax.random.split(jax.random.key(2), 10))
    assert bool(jnp.all(jnp.where(mask, 0.0, stored) == 0.0))  # never sampled away from 0, even raw
    sigma = post.std()["w"]
    np.testing.assert_allclose(jnp.where(mask, draws.std(0), 0), jnp.where(mask, sigma, 0), rtol=0.06)
    np.testing.assert_allclose(jnp.where(mask, draws.mean(0), 0), jnp.where(mask, post.mean.model.w, 0), atol=0.02)
    np.testing.assert_allclose(post.precision()["w"], 50.0 * (0.5 + 0.1))


def test_predict_averages_sampled_outputs():
    post = make()
    key = jax.random.key(3)
    got = post.predict(lambda m: m.masked().w ** 2, key, num_samples=5)
    keys = jax.random.split(key, 5)
    expected = jnp.mean(jnp.stack([post.sample(k).masked().w ** 2 for k in keys]), 0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_trainable_and_adam_leave_hess_alone():
    post = make()
    t = bx.trainable(post)
    assert jax.tree.leaves(t.hess) == [] and len(jax.tree.leaves(t.mean)) == 1
    opt = optax.adam(0.1)
    state = opt.init(bx.trainable(post))
    grads = eqx.filter_grad(lambda p: quad_loss(p.mean))(post)
    assert jax.tree.leaves(bx.trainable(grads).hess) == []
    updates, _ = opt.update(bx.trainable(grads), state, bx.trainable(post))
    new = eqx.apply_updates(post, updates)
    np.testing.assert_array_equal(new.hess["w"], post.hess["w"])


def test_errors():
    with pytest.raises(ValueError, match="weight_decay must be a number > 0"):
        bx.Posterior(sparse_quad(jnp.ones((2, 2))), ess=10, weight_decay=0.0)
    with pytest.raises(ValueError, match="ess must be a number > 0"):
        bx.Posterior(sparse_quad(jnp.ones((2, 2))), ess=0)
    with pytest.raises(TypeError, match="ivon.init needs a bmr_eqx.Posterior"):
        bx.ivon(0.1).init(Quad(jnp.ones(2)))
    with pytest.raises(ValueError, match="mc_samples"):
        bx.noisy_value_and_grad(quad_loss, mc_samples=0)


def test_hess_update_every_refreshes_curvature_only_on_schedule():
    post = make()
    opt = bx.ivon(0.05, b2=0.9, hess_update_every=3)
    state = opt.init(post)
    vg = bx.noisy_value_and_grad(quad_loss)
    changed = []
    for i in range(7):
        _, grads, hess_estimate = vg(post, jax.random.key(i))
        updates, state = opt.update(grads, state, post, hess_estimate=hess_estimate)
        new = eqx.apply_updates(post, updates)
        changed.append(bool(jnp.any(new.hess["w"] != post.hess["w"])))
        post = new
    assert changed == [True, False, False, True, False, False, True]


def test_posterior_serialise_round_trip(tmp_path):
    post = bx.BMRPruning(sparsity=0.5).prune(make())
    post = eqx.tree_at(lambda p: p.hess["w"], post, post.hess["w"] * 3.0)
    path = tmp_path / "posterior.eqx"
    eqx.tree_serialise_leaves(path, post)
    loaded = eqx.tree_deserialise_leaves(path, make())
    for a, b in zip(jax.tree.leaves(post), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    assert loaded.ess == post.ess and loaded.weight_decay == post.weight_decay
