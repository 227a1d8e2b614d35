import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import MODELS, build, loss_for, mlp as _mlp

import bmr_eqx as bx

PATHS = ["layers[0].weight", "layers[1].weight", "layers[2].weight"]


def mlp(key=0):
    """`eqx.nn.MLP(6, 3, 8, 2)`: weights (8, 6), (8, 8), (3, 8)."""
    return _mlp(key, in_size=6, out_size=3, width=8, depth=2)


def masks(s):
    """The masks of the three MLP weights of a `Sparse`, in layer order."""
    return [s.masks[p] for p in PATHS]


def test_default_masks_on_weights_only():
    s = bx.Sparse(mlp())
    assert list(s.masks) == PATHS  # weights only: no entry for any bias
    assert [m.shape for m in masks(s)] == [(8, 6), (8, 8), (3, 8)]
    assert all(m.dtype == jnp.bool_ and bool(m.all()) for m in masks(s))


def test_selectors():
    m = mlp()
    by_where = bx.Sparse(m, where=lambda t: t.layers[0])  # weight and bias of layer 0
    assert set(by_where.masks) == {"layers[0].weight", "layers[0].bias"}
    assert by_where.masks["layers[0].bias"].shape == (8,)
    by_fn = bx.Sparse(m, filter_fn=lambda path, leaf: path.endswith("weight") and not path.startswith("layers[2]"))
    assert set(by_fn.masks) == {"layers[0].weight", "layers[1].weight"}
    by_spec = bx.Sparse(m, filter_spec=eqx.is_inexact_array)
    assert set(by_spec.masks) == {f"layers[{i}].{n}" for i in range(3) for n in ("weight", "bias")}
    with pytest.raises(TypeError, match="at most one"):
        bx.Sparse(m, where=lambda t: t.layers[0], filter_fn=lambda p, leaf: True)


def test_call_is_masked_model_and_grads_are_zero_on_pruned():
    s = bx.MagnitudePruning(sparsity=0.5).prune(mlp())
    x = jnp.ones(6)
    np.testing.assert_allclose(s(x), s.masked()(x))
    dense_masked = eqx.tree_at(lambda m: m.layers[0].weight, s.model, s.model.layers[0].weight * s.masks["layers[0].weight"])
    np.testing.assert_allclose(s(x), dense_masked(x), rtol=1e-6)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(s)
    assert jax.tree.leaves(grads.masks) == []  # bool masks get no gradient
    for g, m in zip(grads.model.layers, masks(s)):
        assert bool(jnp.all(jnp.where(m, 0.0, g.weight) == 0))


def test_trainable_excludes_masks():
    s = bx.Sparse(mlp())
    t = bx.trainable(s)
    assert jax.tree.leaves(t.masks) == []
    assert len(jax.tree.leaves(t.model)) == 6
    state = optax.adam(1e-3).init(bx.trainable(s))
    assert all(jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == jnp.int32 for x in jax.tree.leaves(state))


def test_bad_masks_name_the_leaf():
    s = bx.Sparse(mlp())
    with pytest.raises(ValueError, match=r"Mask of `layers\[1\].weight` has shape \(4, 4\)"):
        bx.Sparse(mlp(), masks={**s.masks, "layers[1].weight": jnp.ones((4, 4), bool)})
    with pytest.raises(ValueError, match=r"`layers\[0\].weight` has dtype float32; masks must be bool"):
        bx.Sparse(mlp(), masks={**s.masks, "layers[0].weight": jnp.ones((8, 6))})
    changed_model = eqx.tree_at(lambda t: t.layers[0].weight, mlp(), jnp.ones((8, 7)))
    with pytest.raises(ValueError, match=r"layers\[0\].weight.*\(8, 7\)"):
        bx.Sparse(changed_model, masks=s.masks)
    with pytest.raises(ValueError, match=r"masks has an entry `w`, which is no leaf of the model"):
        bx.Sparse(mlp(), masks={"w": jnp.ones(3, bool)})
    with pytest.raises(ValueError, match=r"dtype float32; masks must be bool"):
        bx.Sparse(mlp(), masks=jax.tree.map(lambda m: m.astype(jnp.float32), s.masks))


# The old API checked masks when the model was used, so masks edited with `eqx.tree_at` (the way
# the library's own errors tell users to change masks) were checked too. Now the check runs only in
# `Sparse.__init__`/`__check_init__`, which `eqx.tree_at` bypasses: see the report.
_TREE_AT_CASES = {
    "shape": (
        lambda s: eqx.tree_at(lambda t: t.masks["layers[1].weight"], s, jnp.ones((4, 4), bool))(jnp.ones(6)),
        r"Mask of `layers\[1\].weight` has shape \(4, 4\)",
    ),
    "dtype": (
        lambda s: eqx.tree_at(lambda t: t.masks["layers[0].weight"], s, jnp.ones((8, 6)))(jnp.ones(6)),
        r"`layers\[0\].weight` has dtype float32; masks must be bool",
    ),
    "changed_model": (
        lambda s: bx.MagnitudePruning(sparsity=0.5).update(eqx.tree_at(lambda t: t.model.layers[0].weight, s, jnp.ones((8, 7))), 0),
        r"layers\[0\].weight.*\(8, 7\)",
    ),
    "unknown_path": (
        lambda s: eqx.tree_at(lambda t: t.masks, s, {"w": jnp.ones(3, bool)})(jnp.ones(6)),
        r"`w`, which is no leaf of the model",
    ),
    "unknown_path_update": (
        lambda s: bx.MagnitudePruning(sparsity=0.5).update(eqx.tree_at(lambda t: t.masks, s, {"w": jnp.ones(3, bool)}), 0),
        r"`w`, which is no leaf of the model",
    ),
}


@pytest.mark.parametrize("case", list(_TREE_AT_CASES))
def test_masks_edited_with_tree_at_are_checked_when_used(case):
    use, message = _TREE_AT_CASES[case]
    with pytest.raises(ValueError, match=message):
        use(bx.Sparse(mlp()))


def test_no_prunable_leaves_and_non_float_selection():
    with pytest.raises(ValueError, match="no prunable leaves"):
        bx.Sparse(eqx.nn.Linear(3, 2, key=jax.random.key(0)), filter_fn=lambda p, leaf: False)
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
    for w, m, w0 in zip(model.model.layers, masks(model), before.model.layers):
        assert bool(jnp.all(jnp.where(m, 0.0, w.weight) == 0.0))  # raw weights exactly 0
        assert not bool(jnp.allclose(jnp.where(m, w.weight, 0), w0.weight))  # kept weights trained
    # Plain adamw (no wrapper): the forward pass still sees exact zeros.
    plain = optax.adamw(1e-2, weight_decay=0.1)
    pstate = plain.init(bx.trainable(before))
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x[0])))(before)
    upd, _ = plain.update(grads, pstate, bx.trainable(before))
    moved = eqx.apply_updates(before, upd)
    assert all(bool(jnp.all(jnp.where(m, 0.0, w.weight) == 0)) for w, m in zip(moved.masked().layers, masks(moved)))


def test_masked_updates_skip_and_mask_gradients():
    model = bx.MagnitudePruning(sparsity=0.5).prune(mlp())
    opt = bx.masked_updates(optax.sgd(1.0), zero_gradients=True, skip_schedule=bx.PeriodicSchedule(every=2))
    state = opt.init(model)
    ones = jax.tree.map(jnp.ones_like, bx.trainable(model))
    u0, state = opt.update(ones, state, model)  # count 0: an update step -> skipped
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(u0))
    u1, state = opt.update(ones, state, model)  # count 1: applied, masked
    for u, m in zip(u1.model.layers, masks(model)):
        np.testing.assert_array_equal(u.weight != 0, m)
        assert bool(jnp.all(u.bias == -1.0))
    with pytest.raises(ValueError, match="reads the masks from params"):
        opt.update(ones, state)


def test_vmap_ensemble_per_member_masks():
    keys = jax.random.split(jax.random.key(0), 3)
    # each vmap jitted whole: one compilation each, not one per batched op
    ens = eqx.filter_jit(eqx.filter_vmap(lambda k: bx.Sparse(eqx.nn.MLP(6, 3, 8, 2, key=k))))(keys)
    pruned = eqx.filter_jit(eqx.filter_vmap(lambda m: bx.MagnitudePruning(sparsity=0.7).update(m, 0)))(ens)
    w = pruned.masks["layers[0].weight"]
    assert w.shape == (3, 8, 6)
    assert [int(x) for x in w.sum((1, 2))] == [round(48 * 0.3)] * 3
    assert not bool(jnp.all(w[0] == w[1]))  # each member has its own mask
    out = eqx.filter_jit(eqx.filter_vmap(lambda m, x: m(x), in_axes=(eqx.if_array(0), None)))(pruned, jnp.ones(6))
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
    for w, m, w0 in zip(stepped.model.layers, masks(model), model.model.layers):
        np.testing.assert_array_equal(w.weight, jnp.where(m, w0.weight, 0.0))
    grads0 = bx.mask_gradients(jax.tree.map(jnp.ones_like, bx.trainable(model)), model)
    for g, m in zip(grads0.model.layers, masks(model)):
        np.testing.assert_array_equal(g.weight, m.astype(jnp.float32))


def test_default_rule_prunes_kernels_of_flax_style_dicts():
    params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}, "scale": {"weight": jnp.ones(3)},
              "emb": {"weight": jnp.ones((5, 2))}}
    assert sorted(bx.Sparse(params).masks) == ["['dense']['kernel']", "['emb']['weight']"]


def _by_path(tree):
    return {jax.tree_util.keystr(p).lstrip("."): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _explicitly_masked(model, masks):
    return jax.tree_util.tree_map_with_path(
        lambda p, w: jnp.where(masks[k], w, 0) if (k := jax.tree_util.keystr(p).lstrip(".")) in masks else w, model)


@pytest.mark.parametrize("name", ["mlp", pytest.param("cnn", marks=pytest.mark.slow),
                                  pytest.param("transformer", marks=pytest.mark.slow)])
def test_pruned_weights_are_stored_as_zero_through_every_mask_change(name):
    model, state = build(name)
    x, y = MODELS[name][1]()
    @eqx.filter_jit
    def loss(m, state, *a):
        return loss_for(name)(m, state, *a)

    key = jax.random.key(0)
    leaves = _by_path(model)
    paths = MODELS[name][2]
    masks = {p: jax.random.bernoulli(jax.random.fold_in(key, i), 0.6, leaves[p].shape) for i, p in enumerate(paths)}

    # 1. the constructor zeroes them; the forward pass equals the explicitly masked model's
    s = bx.Sparse(model, masks=masks)
    stored = _by_path(s.model)
    for p in paths:
        np.testing.assert_array_equal(stored[p], jnp.where(masks[p], leaves[p], 0))
    got, _ = loss(s, state, x, y, key)
    want, _ = loss(_explicitly_masked(model, masks), state, x, y, key)
    np.testing.assert_allclose(got, want, rtol=1e-6)

    # 2. forward-mode derivatives through pruned weights are exactly 0 (reverse mode: see above)
    tangent = jax.tree_util.tree_map_with_path(
        lambda p, w: (~masks[k]).astype(w.dtype) if (k := jax.tree_util.keystr(p).lstrip(".")) in masks
        else jnp.zeros_like(w), eqx.filter(s.model, eqx.is_inexact_array))
    params, static = eqx.partition(s.model, eqx.is_inexact_array)
    f = lambda q: loss(eqx.tree_at(lambda t: t.model, s, eqx.combine(q, static)), state, x, y, key)[0]  # noqa: E731
    _, dloss = jax.jvp(f, (params,), (tangent,))
    assert float(dloss) == 0.0

    # 3. a traced pruner.update zeroes what it prunes at once, and changes nothing off its update steps
    pruner = bx.MagnitudePruning(sparsity=0.8, schedule=bx.PeriodicSchedule(every=2))
    update = eqx.filter_jit(pruner.update)
    fired = update(s, jnp.asarray(0))
    new_masks, new_stored = fired.masks, _by_path(fired.model)
    assert any(bool(jnp.any(masks[p] & ~new_masks[p])) for p in paths)  # it pruned more
    for p in paths:
        np.testing.assert_array_equal(new_stored[p], jnp.where(new_masks[p], stored[p], 0))
    got, _ = loss(fired, state, x, y, key)
    want, _ = loss(_explicitly_masked(s.model, new_masks), state, x, y, key)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    idle = update(fired, jnp.asarray(1))
    for a, b in zip(jax.tree.leaves(idle), jax.tree.leaves(fired)):
        np.testing.assert_array_equal(a, b)

    # 4. a straight-through model keeps training its pruned weights: they stay as they were
    st = bx.Sparse(model, masks=masks, straight_through=True)
    np.testing.assert_array_equal(_by_path(st.model)[paths[0]], leaves[paths[0]])


def test_mask_update_scratch_is_that_of_the_largest_leaf_not_of_the_model():
    # XLA's temporary memory for a training step that recomputes masks (magnitude top-k of every
    # leaf) exceeds the same step with fixed masks by a few copies of the largest leaf (the top-k's
    # scratch: the leaves are pruned one after the other) and less than one float copy of every
    # other leaf (the new bool masks in flight); without the ordering it grew by two per leaf.
    d, adam = 256, optax.adam(1e-3)
    x = jnp.ones((8, d))

    def extra_bytes(n_leaves):
        model = bx.Sparse({f"l{i}": {"kernel": jax.random.normal(jax.random.key(i), (d, d))} for i in range(n_leaves)})
        opt = bx.masked_updates(adam)

        def loss(m):
            h = x
            for i in range(n_leaves):
                h = jnp.tanh(h @ m.masked()[f"l{i}"]["kernel"])
            return jnp.mean(h**2)

        def step_with(pruner):
            def step(m, s, i):
                u, s = opt.update(eqx.filter_grad(loss)(m), s, m)
                return pruner.update(eqx.apply_updates(m, u), i), s

            return jax.jit(step, donate_argnums=(0, 1)).lower(model, opt.init(model), jnp.asarray(0)).compile()

        every = bx.MagnitudePruning(sparsity=0.9, schedule=bx.PeriodicSchedule(every=1))
        never = bx.MagnitudePruning(sparsity=0.9, schedule=bx.NoUpdateSchedule())
        temps = [step_with(p).memory_analysis().temp_size_in_bytes for p in (every, never)]
        return temps[0] - temps[1]

    leaf = d * d * 4
    small, large = extra_bytes(2), extra_bytes(8)
    assert small <= 4 * leaf, small / leaf
    assert (large - small) / 6 <= leaf, (small / leaf, large / leaf)


def test_derivatives_of_every_order_see_pruned_weights_as_zero():
    lin = eqx.nn.Linear(3, 2, use_bias=False, key=jax.random.key(0))
    mask = jnp.array([[True, False, True], [False, True, True]])
    s = bx.Sparse(lin, masks={"weight": mask})
    x = jnp.array([1.0, 2.0, -1.0])

    def through_sparse(w):
        return jnp.sum(jnp.sin(eqx.tree_at(lambda t: t.model.weight, s, w)(x)) ** 3)

    def explicitly_masked(w):
        return jnp.sum(jnp.sin(jnp.where(mask, w, 0) @ x) ** 3)

    w, v = s.model.weight, jnp.ones_like(s.model.weight)

    @jax.jit
    def second_order(w):
        def hvp(f):
            return jax.jvp(jax.grad(f), (w,), (v,))[1]

        return jax.hessian(through_sparse)(w), jax.hessian(explicitly_masked)(w), hvp(through_sparse), hvp(explicitly_masked)

    h_sparse, h_masked, hvp_sparse, hvp_masked = second_order(w)
    np.testing.assert_allclose(h_sparse, h_masked, atol=1e-6)
    np.testing.assert_allclose(hvp_sparse, hvp_masked, atol=1e-6)


def test_gradients_flow_through_a_traced_pruner_update():
    model = bx.Sparse(mlp())
    pruner = bx.MagnitudePruning(sparsity=0.5, schedule=bx.PeriodicSchedule(every=2))
    x = jnp.ones(6)
    grad = eqx.filter_jit(eqx.filter_grad(lambda m, i: jnp.sum(pruner.update(m, i)(x) ** 2)))
    for step in (0, 1):  # an update step and a step without one
        g = grad(model, jnp.asarray(step))
        assert float(jnp.abs(g.model.layers[0].weight).sum()) > 0


def test_lax_where_matches_jnp_where():
    # the per-leaf select written in lax (trace time) must give jnp.where's values and dtypes
    from bmr_eqx._tree import where

    mask = jnp.array([[True, False], [False, True]])
    cases = [
        (jnp.ones((2, 2)), 0),
        (jnp.ones((2, 2), jnp.bfloat16), -float("inf")),
        (jnp.arange(4).reshape(2, 2), -float("inf")),  # integer scores: promoted like jnp.where
        (jnp.arange(4).reshape(2, 2), 0),
        (jnp.ones((2, 2)), jnp.zeros((2, 2), jnp.float16)),
        (jnp.ones((2, 2)), -jnp.ones((2, 2))),
        (jnp.ones((2, 2)), jnp.zeros(())),
    ]
    for on, off in cases:
        got, want = where(mask, on, off), jnp.where(mask, on, off)
        assert got.dtype == want.dtype and got.shape == want.shape and bool(jnp.array_equal(got, want)), (on, off)
