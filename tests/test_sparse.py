import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bmr_eqx as bx


def mlp(key=0):
    return eqx.nn.MLP(6, 3, 8, 2, key=jax.random.key(key))


def test_default_masks_on_weights_only():
    s = bx.Sparse(mlp())
    assert [l.weight.shape for l in s.masks.layers] == [(8, 6), (8, 8), (3, 8)]
    assert all(l.bias is None for l in s.masks.layers)
    assert all(l.weight.dtype == jnp.bool_ and bool(l.weight.all()) for l in s.masks.layers)


def test_selectors():
    m = mlp()
    by_where = bx.Sparse(m, where=lambda t: t.layers[0])  # weight and bias of layer 0
    assert by_where.masks.layers[0].bias is not None and by_where.masks.layers[1].weight is None
    by_fn = bx.Sparse(m, filter_fn=lambda path, leaf: path.endswith("weight") and not path.startswith("layers[2]"))
    assert by_fn.masks.layers[2].weight is None and by_fn.masks.layers[1].weight is not None
    by_spec = bx.Sparse(m, filter_spec=eqx.is_inexact_array)
    assert by_spec.masks.layers[2].bias is not None
    with pytest.raises(TypeError, match="at most one"):
        bx.Sparse(m, where=lambda t: t.layers[0], filter_fn=lambda p, l: True)


def test_call_is_masked_model_and_grads_are_zero_on_pruned():
    s = bx.MagnitudePruning(sparsity=0.5).prune(mlp())
    x = jnp.ones(6)
    np.testing.assert_allclose(s(x), s.masked()(x))
    dense_masked = eqx.tree_at(lambda m: m.layers[0].weight, s.model, s.model.layers[0].weight * s.masks.layers[0].weight)
    np.testing.assert_allclose(s(x), dense_masked(x), rtol=1e-6)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(s)
    assert jax.tree.leaves(grads.masks) == []  # bool masks get no gradient
    for g, m in zip(grads.model.layers, s.masks.layers):
        assert bool(jnp.all(jnp.where(m.weight, 0.0, g.weight) == 0))


def test_trainable_excludes_masks():
    s = bx.Sparse(mlp())
    t = bx.trainable(s)
    assert jax.tree.leaves(t.masks) == []
    assert len(jax.tree.leaves(t.model)) == 6
    state = optax.adam(1e-3).init(bx.trainable(s))
    assert all(jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == jnp.int32 for x in jax.tree.leaves(state))


def test_bad_masks_name_the_leaf():
    s = bx.Sparse(mlp())
    bad_shape = eqx.tree_at(lambda t: t.masks.layers[1].weight, s, jnp.ones((4, 4), bool))
    with pytest.raises(ValueError, match=r"Mask of `layers\[1\].weight` has shape \(4, 4\)"):
        bad_shape(jnp.ones(6))
    bad_dtype = eqx.tree_at(lambda t: t.masks.layers[0].weight, s, jnp.ones((8, 6)))
    with pytest.raises(ValueError, match=r"`layers\[0\].weight` has dtype float32; masks must be bool"):
        bad_dtype(jnp.ones(6))
    changed_model = eqx.tree_at(lambda t: t.model.layers[0].weight, s, jnp.ones((8, 7)))
    with pytest.raises(ValueError, match=r"layers\[0\].weight.*\(8, 7\)"):
        bx.MagnitudePruning(sparsity=0.5).update(changed_model, 0)
    bad_tree = eqx.tree_at(lambda t: t.masks, s, {"w": jnp.ones(3, bool)})
    with pytest.raises(ValueError, match="structure of the model"):
        bad_tree(jnp.ones(6))
    with pytest.raises(ValueError, match=r"dtype float32; masks must be bool"):
        bx.Sparse(mlp(), masks=jax.tree.map(lambda m: m.astype(jnp.float32), s.masks))


def test_no_prunable_leaves_and_non_float_selection():
    with pytest.raises(ValueError, match="no prunable leaves"):
        bx.Sparse(eqx.nn.Linear(3, 2, key=jax.random.key(0)), filter_fn=lambda p, l: False)
    with pytest.raises(ValueError, match=r"Leaf `\[1\]` was selected for pruning but is int"):
        bx.Sparse((jnp.ones((2, 2)), 3), filter_spec=lambda x: True)


def test_mask_values_change_without_recompiling():
    traces = []

    @eqx.filter_jit
    def f(model, x):
        traces.append(1)
        return model(x)

    s = bx.Sparse(mlp())
    x = jnp.ones(6)
    outs = []
    for sparsity in [0.0, 0.3, 0.6, 0.9]:
        pruned = bx.MagnitudePruning(sparsity=sparsity).prune(s)
        outs.append(f(pruned, x))
    assert len(traces) == 1
    assert not np.allclose(outs[0], outs[-1])


def test_pruned_weights_stay_zero_after_100_adamw_steps():
    model = bx.MagnitudePruning(sparsity=0.8).prune(mlp())
    opt = bx.masked_updates(optax.adamw(1e-2, weight_decay=0.1))
    state = opt.init(model)
    x = jax.random.normal(jax.random.key(1), (16, 6))

    @eqx.filter_jit
    def step(model, state):
        grads = eqx.filter_grad(lambda m: jnp.mean(jax.vmap(m)(x) ** 2 - jax.vmap(m)(x)))(model)
        updates, state = opt.update(grads, state, model)
        return eqx.apply_updates(model, updates), state

    before = model
    for _ in range(100):
        model, state = step(model, state)
    for w, m, w0 in zip(model.model.layers, model.masks.layers, before.model.layers):
        assert bool(jnp.all(jnp.where(m.weight, 0.0, w.weight) == 0.0))  # raw weights exactly 0
        assert not bool(jnp.allclose(jnp.where(m.weight, w.weight, 0), w0.weight))  # kept weights trained
    # Plain adamw (no wrapper): the forward pass still sees exact zeros.
    plain = optax.adamw(1e-2, weight_decay=0.1)
    pstate = plain.init(bx.trainable(before))
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x[0])))(before)
    upd, _ = plain.update(grads, pstate, bx.trainable(before))
    moved = eqx.apply_updates(before, upd)
    assert all(bool(jnp.all(jnp.where(m.weight, 0.0, w.weight) == 0)) for w, m in zip(moved.masked().layers, moved.masks.layers))


def test_masked_updates_skip_and_mask_gradients():
    model = bx.MagnitudePruning(sparsity=0.5).prune(mlp())
    opt = bx.masked_updates(optax.sgd(1.0), zero_gradients=True, skip_schedule=bx.PeriodicSchedule(every=2))
    state = opt.init(model)
    ones = jax.tree.map(jnp.ones_like, bx.trainable(model))
    u0, state = opt.update(ones, state, model)  # count 0: an update step -> skipped
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(u0))
    u1, state = opt.update(ones, state, model)  # count 1: applied, masked
    for u, m in zip(u1.model.layers, model.masks.layers):
        np.testing.assert_array_equal(u.weight != 0, m.weight)
        assert bool(jnp.all(u.bias == -1.0))
    with pytest.raises(ValueError, match="reads the masks from params"):
        opt.update(ones, state)


def test_vmap_ensemble_per_member_masks():
    keys = jax.random.split(jax.random.key(0), 3)
    ens = eqx.filter_vmap(lambda k: bx.Sparse(eqx.nn.MLP(6, 3, 8, 2, key=k)))(keys)
    pruned = eqx.filter_vmap(lambda m: bx.MagnitudePruning(sparsity=0.7).update(m, 0))(ens)
    w = pruned.masks.layers[0].weight
    assert w.shape == (3, 8, 6)
    assert [int(x) for x in w.sum((1, 2))] == [round(48 * 0.3)] * 3
    assert not bool(jnp.all(w[0] == w[1]))  # each member has its own mask
    out = eqx.filter_vmap(lambda m, x: m(x), in_axes=(eqx.if_array(0), None))(pruned, jnp.ones(6))
    assert out.shape == (3, 3)


def test_serialise_round_trip(tmp_path):
    s = bx.RandomPruning(sparsity=0.6).prune(mlp(), key=jax.random.key(3))
    path = tmp_path / "model.eqx"
    eqx.tree_serialise_leaves(path, s)
    like = bx.Sparse(mlp(7))
    loaded = eqx.tree_deserialise_leaves(path, like)
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded(jnp.ones(6)), s(jnp.ones(6)))


def test_update_then_masked_step_zeroes_stored_weights():
    model = bx.Sparse(mlp())
    pruner = bx.MagnitudePruning(sparsity=0.5, schedule=bx.OneShotSchedule(0))
    model = eqx.filter_jit(pruner.update)(model, jnp.asarray(0))
    x = jnp.ones(6)
    np.testing.assert_allclose(model(x), model.masked()(x))  # the forward pass already sees zeros
    opt = bx.masked_updates(optax.sgd(0.0))
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x)))(model)
    updates, _ = opt.update(grads, opt.init(model), model)
    stepped = eqx.apply_updates(model, updates)
    for w, m, w0 in zip(stepped.model.layers, model.masks.layers, model.model.layers):
        np.testing.assert_array_equal(w.weight, jnp.where(m.weight, w0.weight, 0.0))
    grads0 = bx.mask_gradients(jax.tree.map(jnp.ones_like, bx.trainable(model)), model)
    for g, m in zip(grads0.model.layers, model.masks.layers):
        np.testing.assert_array_equal(g.weight, m.weight.astype(jnp.float32))
