import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bmr_eqx as bx
from bmr_eqx._optim import zero_pruned_updates

ESS, DELTA = 1000.0, 1e-2


def mlp(key=0):
    """`eqx.nn.MLP(8, 4, 16, 1)`: weights (16, 8), (4, 16)."""
    return helpers.mlp(key, in_size=8, out_size=4, width=16, depth=1)


def posterior(key=0, **sparse_kwargs):
    """A Posterior over a small MLP whose curvature is random but known."""
    post = bx.Posterior(bx.Sparse(mlp(key), **sparse_kwargs), ess=ESS, weight_decay=DELTA)
    paths = sorted(post.hess)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(key), 1), len(paths))
    hess = {p: jax.random.uniform(k, post.hess[p].shape, minval=0.0, maxval=5.0) for p, k in zip(paths, keys)}
    return bx.Posterior(post.mean, ess=ESS, weight_decay=DELTA, hess=hess)  # a data curvature: init_weight 0


def mask(model, layer, name="weight"):
    return model.mean.masks[f"layers[{layer}].{name}"]


def delta_f(post, layer, name="weight"):
    return bx.delta_f_spike(
        getattr(post.mean.model.layers[layer], name), post.hess[f"layers[{layer}].{name}"], ESS, DELTA
    )


def test_bmr_uniform_ranks_by_delta_f():
    post = posterior()
    pruned = bx.BMRPruning(sparsity=0.75).prune(post)
    assert set(pruned.mean.masks) == {"layers[0].weight", "layers[1].weight"}  # weights only, never biases
    for i in range(2):
        np.testing.assert_array_equal(mask(pruned, i), bx.topk_mask(-delta_f(post, i), 0.75))
        w = pruned.mean.model.layers[i].weight  # the reduced posterior: pruned means are exactly 0
        assert bool(jnp.all(jnp.where(mask(pruned, i), 0.0, w) == 0))
    np.testing.assert_array_equal(pruned.hess["layers[0].weight"], post.hess["layers[0].weight"])


def test_global_bmr_uses_raw_delta_f():
    post = posterior()
    pruned = bx.GlobalBMRPruning(sparsity=0.6).prune(post)
    expected = bx.global_topk_masks([-delta_f(post, 0), -delta_f(post, 1)], 0.6)
    for i in range(2):
        np.testing.assert_array_equal(mask(pruned, i), expected[i])
    assert bx.BayesianGlobalPruning is bx.GlobalBMRPruning


def test_channel_bmr_prunes_neurons_by_group_delta_f_with_bias():
    post = posterior(filter_spec=eqx.is_inexact_array)  # biases prunable: they go with their neurons
    pruned = bx.BMRPruning(sparsity=0.5, sparsity_type="channel").prune(post)
    for i in range(2):
        group = bx.group_delta_f(delta_f(post, i), 0, delta_f(post, i, "bias"))
        keep = bx.topk_mask(-group, 0.5)
        weight_mask = mask(pruned, i)
        np.testing.assert_array_equal(weight_mask, jnp.broadcast_to(keep[:, None], weight_mask.shape))
        np.testing.assert_array_equal(mask(pruned, i, "bias"), keep)


def test_nm_bmr():
    pruned = bx.BMRPruning(sparsity_type="2:4").prune(posterior())
    m = mask(pruned, 0)
    assert bool(jnp.all(m.reshape(16, 2, 4).sum(-1) == 2))


def test_adaptive_bmr_finds_known_zeros():
    # A posterior whose true zeros are known: well-determined weights (h large) that are either
    # clearly nonzero or at 0.
    key = jax.random.key(5)
    post = posterior()
    truth = jax.random.bernoulli(key, 0.3, post.mean.model.layers[0].weight.shape)
    mean = jnp.where(truth, jax.random.choice(key, jnp.array([-0.5, 0.5]), truth.shape), 0.0)
    mean = mean + 0.001 * jax.random.normal(jax.random.key(6), mean.shape)
    post = eqx.tree_at(lambda p: (p.mean.model.layers[0].weight, p.hess["layers[0].weight"]), post, (mean, jnp.full(mean.shape, 4.0)))
    for method in ("threshold", "spike_and_slab"):
        pruned = bx.AdaptiveBMR(method=method).prune(post)
        np.testing.assert_array_equal(mask(pruned, 0), truth)
    # Threshold T: prune iff ΔF > T.
    df = delta_f(post, 1)
    pruned = bx.AdaptiveBMR(threshold=-0.5).prune(post)
    np.testing.assert_array_equal(mask(pruned, 1), df <= -0.5)
    with pytest.raises(ValueError, match="method must be"):
        bx.AdaptiveBMR(method="oracle")


def test_bmr_masks_are_monotone_and_update_does_not_recompile():
    post = posterior()
    pruner = bx.BMRPruning(sparsity=0.8, schedule=bx.PolynomialSchedule(start=0, end=40, every=10))
    traces = []

    @eqx.filter_jit
    def update(post, step, key):
        traces.append(1)
        # Perturb the posterior between updates so the rankings change.
        jitter = lambda w: w + 0.3 * jax.random.normal(key, w.shape) if eqx.is_inexact_array(w) else w  # noqa: E731
        noisy = eqx.tree_at(lambda p: p.mean.model, post, jax.tree.map(jitter, post.mean.model))
        return pruner.update(noisy, step)

    prev = mask(post, 0)
    for i, step in enumerate(range(0, 41, 10)):
        post = update(post, jnp.asarray(step), jax.random.key(i))
        cur = mask(post, 0)
        assert bool(jnp.all(cur <= prev))
        prev = cur
    assert len(traces) == 1
    assert float(bx.sparsity_summary(post)["total"]) == pytest.approx(0.8, abs=0.01)


def test_snr_and_variance_pruners():
    post = posterior()
    snr = bx.UncertaintyMagnitudePruning(sparsity=0.5).prune(post)
    w, h = post.mean.model.layers[0].weight, post.hess["layers[0].weight"]
    np.testing.assert_array_equal(mask(snr, 0), bx.topk_mask(jnp.abs(w) * jnp.sqrt(ESS * (h + DELTA)), 0.5))
    var = bx.PosteriorVariancePruning(sparsity=0.5).prune(post)
    np.testing.assert_array_equal(mask(var, 0), bx.topk_mask(h, 0.5))  # least informed go first


def test_posterior_pruners_need_a_posterior():
    with pytest.raises(TypeError, match="reads a posterior"):
        bx.BMRPruning(sparsity=0.5).prune(mlp())


def test_ste_bmr_needs_and_uses_straight_through_masks():
    with pytest.raises(ValueError, match="straight_through=True"):
        bx.SteBMRPruning(sparsity=0.5).prune(posterior())
    post = bx.SteBMRPruning(sparsity=0.5).prune(posterior(straight_through=True))
    x = jnp.ones(8)
    np.testing.assert_allclose(post.mean(x), post.mean.masked()(x))  # forward: masked
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x)))(post.mean)
    pruned = ~mask(post, 0)
    assert bool(jnp.any(jnp.where(pruned, grads.model.layers[0].weight, 0.0) != 0))  # gradients pass through
    # Optimizers leave straight-through pruned weights alone, so they can come back.
    ones = jax.tree.map(jnp.ones_like, bx.trainable(post.mean))
    assert zero_pruned_updates(ones, post.mean).model.layers[0].weight.min() == 1.0
    opt = bx.masked_updates(optax.identity())
    updates, _ = opt.update(ones, opt.init(post.mean), post.mean)
    assert updates.model.layers[0].weight.min() == 1.0


def test_adaptive_bmr_channels_by_group_delta_f():
    post = posterior(filter_spec=eqx.is_inexact_array)
    for threshold in (-5.0, 0.0, 5.0):
        pruned = bx.AdaptiveBMR(threshold, sparsity_type="channel").prune(post)
        for i in range(2):
            group = bx.group_delta_f(delta_f(post, i), 0, delta_f(post, i, "bias"))
            keep = group <= threshold
            keep = keep.at[jnp.argmin(group)].set(True)  # the best neuron of a layer always stays
            weight_mask = mask(pruned, i)
            np.testing.assert_array_equal(mask(pruned, i, "bias"), keep)
            np.testing.assert_array_equal(weight_mask, jnp.broadcast_to(keep[:, None], weight_mask.shape))
    with pytest.raises(ValueError, match="N:M fixes it"):
        bx.AdaptiveBMR(sparsity_type="2:4")


def test_adaptive_bmr_never_empties_a_layer():
    post = posterior()
    post = eqx.tree_at(lambda p: p.mean.model.layers[1].weight, post, jnp.zeros((4, 16)))  # every ΔF > 0
    pruned = bx.AdaptiveBMR().prune(post)
    assert int(mask(pruned, 1).sum()) == 1
