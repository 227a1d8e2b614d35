"""Sparse training: straight-through pruners, static random sparsity, SET, RigL and Bayesian
drop-and-grow, with the optimizer moments of regrown weights reset, on an MLP, a CNN with BatchNorm
and State, and a small transformer.

Run by `test_sparse_training.py` in a process of its own: late in the full suite, XLA:CPU (jaxlib
0.10.2) has crashed with a segmentation fault while compiling one of these updates, which never
happens when this file runs alone. Run it directly with `pytest tests/sparse_training_cases.py`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import MODELS, build, loss_for, mlp, mlp_batch, stateless_loss

import bmr_eqx as bx
from bmr_eqx._masks import keep_count

EVERY = bx.PeriodicSchedule(every=1)


def counts(model):
    sp = model.mean if isinstance(model, bx.Posterior) else model
    return {p: int(m.sum()) for p, m in sp.masks.items()}


def weights_of(sparse):
    return {jax.tree_util.keystr(p).lstrip("."): w for p, w in jax.tree_util.tree_flatten_with_path(sparse.model)[0]}


# Gradients for the tests below, jitted once at module level: one compilation per model structure
# shared by every test, instead of the op-by-op compilations of an eager backward pass.
@eqx.filter_jit
def dense_grads(model, x, y):
    """The gradient passed straight through the masks (nonzero where a mask is 0): what RigL grows by."""
    return eqx.filter_grad(lambda m: stateless_loss(bx.straight_through(m), x, y))(model)


@eqx.filter_jit
def masked_grads(model, x, y):
    """The gradient of the masked model (0 where a mask is 0)."""
    return eqx.filter_grad(stateless_loss)(model, x, y)


def dst_step(model_name, pruner, opt, bayes=False):
    """One jitted drop-and-grow training step: dense gradient through `straight_through`, masked
    for the optimizer, masks updated, regrown moments reset."""
    loss = loss_for(model_name)

    def dense_loss(m, state, x, y, k):
        return loss(bx.straight_through(m), state, x, y, k)

    value_and_grad = bx.noisy_value_and_grad(dense_loss, has_aux=True)

    @eqx.filter_jit
    def step(model, state, opt_state, batch, i, key):
        x, y = batch
        k1, k2, k3 = jax.random.split(key, 3)
        if bayes:
            (_, state), dense, hess = value_and_grad(model, k1, state, x, y, k2)
            updates, opt_state = opt.update(bx.mask_gradients(dense, model), opt_state, model, hess_estimate=hess)
        else:
            (_, state), dense = eqx.filter_value_and_grad(dense_loss, has_aux=True)(model, state, x, y, k2)
            updates, opt_state = opt.update(bx.mask_gradients(dense, model), opt_state, model)
        model = eqx.apply_updates(model, updates)
        new = pruner.update(model, i, grads=dense, key=k3)
        return new, state, bx.reset_regrown(opt_state, model, new)

    return step


DST = {
    "set": lambda: bx.SET(sparsity=0.8, schedule=EVERY, drop_decay="constant"),
    "rigl": lambda: bx.RigL(sparsity=0.8, schedule=EVERY, drop_decay="constant"),
    "rigl-erk": lambda: bx.RigL(sparsity=0.8, distribution="erk", schedule=EVERY, drop_decay="constant"),
    "rigl-2:4": lambda: bx.RigL(sparsity_type="2:4", schedule=EVERY, drop_decay="constant"),
    "bmr": lambda: bx.BMRDropAndGrow(sparsity=0.8, schedule=EVERY, drop_decay="constant"),
}


SLOW = pytest.mark.slow


@pytest.mark.parametrize("alg,model_name", [
    ("set", "mlp"), pytest.param("rigl", "mlp", marks=SLOW), ("rigl-2:4", "mlp"), ("bmr", "mlp"),
    ("rigl", "cnn"), pytest.param("set", "cnn", marks=SLOW), pytest.param("bmr", "cnn", marks=SLOW),
    ("rigl-erk", "transformer"), pytest.param("set", "transformer", marks=SLOW),
])
def test_sparsity_constant_over_50_updates(alg, model_name):
    model, state = build(model_name)
    pruner = DST[alg]()
    bayes = alg == "bmr"
    sparse = bx.Sparse(model)
    start = bx.StaticRandomSparse(sparsity=0.8, distribution=pruner.selection.distribution) if alg != "rigl-2:4" else pruner
    sparse = start.prune(sparse, key=jax.random.key(1))
    model = bx.Posterior(sparse, ess=64.0, weight_decay=1e-2, hess_init=0.5) if bayes else sparse
    opt = bx.ivon(1e-2, b2=0.99) if bayes else bx.masked_updates(optax.adam(1e-2))
    opt_state = opt.init(model)
    step = dst_step(model_name, pruner, opt, bayes)
    batch = MODELS[model_name][1]()
    before = counts(model)
    changed = 0
    for i in range(50):
        prev = (model.mean if bayes else model).masks
        model, state, opt_state = step(model, state, opt_state, batch, jnp.asarray(i), jax.random.key(i))
        assert counts(model) == before, f"step {i}"
        masks = (model.mean if bayes else model).masks
        changed += sum(int(jnp.sum(prev[p] != masks[p])) for p in masks)
        if alg == "rigl-2:4":
            for p, m in masks.items():
                assert (np.asarray(m).reshape(*m.shape[:-1], -1, 4).sum(-1) == 2).all(), p
    assert changed > 0
    assert step._cached._cache_size() == 1  # a traced step: one compilation for 50 updates
    sp = model.mean if bayes else model
    w = weights_of(sp)
    for p, m in sp.masks.items():  # regrown weights start at 0, so after the last update too
        assert bool(jnp.all(jnp.isfinite(w[p])))


def hand_made(f):
    """A 1x8 Linear with 4 of 8 weights active, its dense gradient, and a RigL with fraction f."""
    lin = eqx.nn.Linear(8, 1, use_bias=False, key=jax.random.key(0))
    w = jnp.array([[0.1, -0.5, 0.0, 0.9, 0.0, 0.3, 0.0, 0.0]])
    mask = jnp.array([[True, True, False, True, False, True, False, False]])
    model = bx.Sparse(eqx.tree_at(lambda m: m.weight, lin, w), masks={"weight": mask})
    g = jnp.array([[5.0, 5.0, -0.7, 5.0, 0.2, 5.0, 0.9, -0.1]])
    grads = eqx.tree_at(lambda m: m.model.weight, model, g)
    pruner = bx.RigL(sparsity=0.5, drop_fraction=f, drop_decay="constant", schedule=EVERY)
    return model, grads, pruner


@pytest.mark.parametrize("f,dropped,grown", [
    (0.0, [], []),
    (0.25, [0], [6]),
    (0.5, [0, 5], [6, 2]),
    (1.0, [0, 5, 1, 3], [6, 2, 4, 7]),
])
def test_rigl_exact_drop_and_grow(f, dropped, grown):
    model, grads, pruner = hand_made(f)
    new = pruner.update(model, 0, grads=grads)
    want = np.array([True, True, False, True, False, True, False, False])
    want[dropped] = False
    want[grown] = True
    np.testing.assert_array_equal(np.asarray(new.masks["weight"])[0], want)
    # regrown weights start at exactly 0; the kept ones are untouched
    w = np.asarray(new.model.weight)[0]
    assert (w[grown] == 0).all()
    kept = [i for i in (0, 1, 3, 5) if i not in dropped]
    np.testing.assert_array_equal(w[kept], np.asarray(model.model.weight)[0][kept])


def test_set_grows_at_random_among_inactive_only():
    model, _, _ = hand_made(0.5)
    pruner = bx.SET(sparsity=0.5, drop_fraction=0.5, drop_decay="constant", schedule=EVERY)
    grown_sets = set()
    for s in range(20):
        new = pruner.update(model, 0, key=jax.random.key(s))
        m = np.asarray(new.masks["weight"])[0]
        assert m.sum() == 4 and not m[0] and not m[5] and m[1] and m[3]  # drop the two smallest |w|
        grown_sets.add(tuple(np.flatnonzero(m & ~np.asarray(model.masks["weight"])[0])))
    assert len(grown_sets) > 1 and all(set(g) <= {2, 4, 6, 7} for g in grown_sets)


def test_rigl_grows_largest_dense_gradient_on_an_mlp():
    model = bx.StaticRandomSparse(sparsity=0.9).prune(bx.Sparse(mlp()), key=jax.random.key(0))
    x, y = mlp_batch()
    dense = dense_grads(model, x, y)
    masked = masked_grads(model, x, y)
    for p, m in model.masks.items():  # the dense gradient is nonzero where the mask is 0
        gd, gm = weights_of(dense)[p], weights_of(masked)[p]
        assert float(jnp.abs(jnp.where(m, 0, gd)).max()) > 0 and float(jnp.abs(jnp.where(m, 0, gm)).max()) == 0
    pruner = bx.RigL(sparsity=0.9, drop_fraction=0.5, drop_decay="constant", schedule=EVERY)
    new = pruner.update(model, 0, grads=dense)
    for p, m in model.masks.items():
        grown = new.masks[p] & ~m
        n = int(grown.sum())
        assert n == int(0.5 * int(m.sum()))
        score = np.where(np.asarray(m), -np.inf, np.abs(np.asarray(weights_of(dense)[p]))).ravel()
        np.testing.assert_array_equal(np.sort(np.flatnonzero(np.asarray(grown).ravel())), np.sort(np.argsort(-score, kind="stable")[:n]))


def test_drop_fraction_decays_by_cosine_over_the_window():
    pruner = bx.RigL(sparsity=0.5, drop_fraction=0.3, schedule=bx.PeriodicSchedule(every=10, start=100, end=300))
    sel = pruner.selection
    np.testing.assert_allclose([float(sel.fraction(s)) for s in (0, 100, 200, 300, 400)], [0.3, 0.3, 0.15, 0.0, 0.0], atol=1e-6)
    assert float(bx.SET(sparsity=0.5, schedule=bx.PeriodicSchedule(every=10)).selection.fraction(10**6)) == pytest.approx(0.3)


def test_prune_brings_a_dense_model_to_the_target_without_growing():
    model = bx.Sparse(mlp())
    pruned = bx.RigL(sparsity=0.75).prune(model)  # no grads needed: nothing grows
    for p, m in pruned.masks.items():
        assert int(m.sum()) == keep_count(m.size, 0.75)
        np.testing.assert_array_equal(m, bx.MagnitudePruning(sparsity=0.75).prune(model).masks[p])


def test_leaves_left_dense_and_nested_sparse():
    class Net(eqx.Module):
        encoder: bx.Sparse
        head: eqx.nn.Linear

        def __call__(self, x):
            return self.head(jax.nn.relu(self.encoder(x)))

    enc = bx.StaticRandomSparse(sparsity=0.75).prune(bx.Sparse(mlp(out_size=8)), key=jax.random.key(2))
    net = Net(enc, eqx.nn.Linear(8, 4, key=jax.random.key(3)))
    x, y = mlp_batch()
    pruner = bx.RigL(sparsity=0.75, schedule=EVERY, drop_decay="constant", keep_dense="encoder.layers[2].weight")
    dense = dense_grads(net, x, y)
    new = pruner.update(net, 0, grads=dense)
    assert counts(new.encoder) == counts(net.encoder)
    np.testing.assert_array_equal(new.encoder.masks["layers[2].weight"], net.encoder.masks["layers[2].weight"])
    assert bool(jnp.any(new.encoder.masks["layers[0].weight"] != net.encoder.masks["layers[0].weight"]))


def test_filter_vmap_ensemble():
    keys = jax.random.split(jax.random.key(0), 3)
    pruner = bx.SET(sparsity=0.75, schedule=EVERY, drop_decay="constant")

    @eqx.filter_jit  # one compilation each, not one per batched op
    @eqx.filter_vmap
    def make(k):
        return bx.StaticRandomSparse(sparsity=0.75).prune(bx.Sparse(eqx.nn.MLP(16, 4, 32, 2, key=k)), key=k)

    ens = make(keys)
    new = eqx.filter_jit(eqx.filter_vmap(lambda m, k: pruner.update(m, jnp.asarray(0), key=k)))(ens, keys)
    for p, m in new.masks.items():
        np.testing.assert_array_equal(m.reshape(3, -1).sum(1), ens.masks[p].reshape(3, -1).sum(1))
        assert bool(jnp.any(m != ens.masks[p]))


# ---- optimizer moments of regrown weights ---------------------------------------------------------

OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
    "sgd-momentum": lambda: optax.sgd(1e-2, momentum=0.9),
    "lion": lambda: optax.lion(1e-3),
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
    "inject": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
    "multisteps": lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2),
    "multi-transform": lambda: optax.multi_transform(
        {"a": optax.adam(1e-2), "s": optax.sgd(1e-2, momentum=0.9)},
        lambda t: jax.tree_util.tree_map_with_path(lambda p, _: "a" if "layers" in jax.tree_util.keystr(p) else "s", t)),
}


def moments_at(opt_state, path_suffix, shape):
    """Every floating array of `opt_state` shaped `shape` whose key path ends with `path_suffix`."""
    flat, _ = jax.tree_util.tree_flatten_with_path(opt_state)
    return [x for p, x in flat if jax.tree_util.keystr(p).endswith(path_suffix) and getattr(x, "shape", None) == shape
            and jnp.issubdtype(x.dtype, jnp.floating)]


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS) + ["masked-adam"])
def test_regrown_weights_get_fresh_moments(opt_name):
    model = bx.StaticRandomSparse(sparsity=0.75).prune(bx.Sparse(mlp()), key=jax.random.key(0))
    x, y = mlp_batch()
    inner = OPTIMIZERS.get(opt_name, OPTIMIZERS["adam"])()
    opt = bx.masked_updates(inner) if opt_name == "masked-adam" else inner
    opt_state = opt.init(bx.trainable(model) if opt_name != "masked-adam" else model)
    for _ in range(3):  # dense gradients everywhere, so every moment entry is nonzero
        dense = dense_grads(model, x, y)
        dense = jax.tree.map(lambda g: g + 0.1, bx.trainable(dense))
        if opt_name == "masked-adam":
            _, opt_state = opt.update(dense, opt_state, model)
        else:
            _, opt_state = opt.update(dense, opt_state, bx.trainable(model))
    dense = dense_grads(model, x, y)
    new = bx.RigL(sparsity=0.75, drop_fraction=0.5, drop_decay="constant", schedule=EVERY).update(model, 0, grads=dense)
    reset = bx.reset_regrown(opt_state, model, new)
    assert jax.tree.structure(reset) == jax.tree.structure(opt_state)
    p = "layers[1].weight"
    grown = new.masks[p] & ~model.masks[p]
    assert int(grown.sum()) > 0
    assert float(jnp.abs(jnp.where(grown, new.model.layers[1].weight, 0)).max()) == 0
    found_before = moments_at(opt_state, p, grown.shape)
    found = moments_at(reset, p, grown.shape)
    assert found and len(found) == len(found_before)
    for before, after in zip(found_before, found):
        assert float(jnp.abs(jnp.where(grown, before, 0)).max()) > 0  # there was something to reset
        assert float(jnp.abs(jnp.where(grown, after, 0)).max()) == 0
        np.testing.assert_array_equal(jnp.where(grown, 0, before), jnp.where(grown, 0, after))  # the rest untouched


def test_ivon_regrown_momentum_and_curvature_reset():
    model = bx.StaticRandomSparse(sparsity=0.75).prune(bx.Sparse(mlp()), key=jax.random.key(0))
    post = bx.Posterior(model, ess=32.0, weight_decay=1e-2, hess_init=0.5)
    x, y = mlp_batch()
    opt = bx.ivon(1e-2, b2=0.9)
    state = opt.init(post)
    vg = bx.noisy_value_and_grad(lambda m, x, y: stateless_loss(bx.straight_through(m), x, y))
    for i in range(3):
        _, dense, hess = vg(post, jax.random.key(i), x, y)
        dense = jax.tree.map(lambda g: g + 0.1, dense)
        updates, state = opt.update(dense, state, post, hess_estimate=hess)
        post = eqx.apply_updates(post, updates)
    _, dense, _ = vg(post, jax.random.key(9), x, y)
    new = bx.BMRDropAndGrow(sparsity=0.75, drop_fraction=0.5, drop_decay="constant", schedule=EVERY).update(
        post, 0, grads=dense)
    state = bx.reset_regrown(state, post, new)
    p = "layers[1].weight"
    grown = new.mean.masks[p] & ~post.mean.masks[p]
    assert int(grown.sum()) > 0
    assert float(jnp.abs(jnp.where(grown, state.momentum.mean.model.layers[1].weight, 0)).max()) == 0
    assert float(jnp.abs(jnp.where(grown, post.hess[p] - 0.5, 0)).max()) > 0  # the curvature had moved
    np.testing.assert_array_equal(jnp.where(grown, new.hess[p], 0.5), jnp.full(grown.shape, 0.5, new.hess[p].dtype))
    np.testing.assert_array_equal(jnp.where(grown, 0, new.hess[p]), jnp.where(grown, 0, post.hess[p]))
    assert float(jnp.abs(jnp.where(grown, new.mean.model.layers[1].weight, 0)).max()) == 0


def test_reset_regrown_refuses_an_optimizer_of_part_of_the_model():
    class Two(eqx.Module):
        a: eqx.nn.Linear
        b: dict

    net = bx.Sparse(Two(eqx.nn.Linear(4, 4, key=jax.random.key(0)), {"a": eqx.nn.Linear(4, 4, key=jax.random.key(1))}))
    state = optax.adam(1e-2).init(bx.trainable(net).model.b)  # paths end like `a.weight`, but of b["a"]
    with pytest.raises(ValueError, match="sub-model"):
        bx.reset_regrown(state, net, net)
    full = optax.adam(1e-2).init(bx.trainable(net))
    assert jax.tree.structure(bx.reset_regrown(full, net, net)) == jax.tree.structure(full)


def test_reset_regrown_refuses_state_it_cannot_map():
    model = bx.Sparse(mlp(width=32))
    opt = optax.adafactor(1e-2, min_dim_size_to_factor=8)
    state = opt.init(bx.trainable(model))
    with pytest.raises(ValueError, match="Factored"):
        bx.reset_regrown(state, model, model)


# ---- straight-through and static --------------------------------------------------------------------


@pytest.mark.parametrize("alg,model_name", [
    ("magnitude", "mlp"), pytest.param("magnitude", "cnn", marks=SLOW), ("magnitude", "transformer"),
    ("random", "cnn"),
    pytest.param("random", "mlp", marks=SLOW), pytest.param("random", "transformer", marks=SLOW),
])
def test_ste_keeps_dense_weights_and_moves_masks(alg, model_name):
    model, state = build(model_name)
    sparse = bx.Sparse(model, straight_through=True)
    pruner = (bx.SteMagnitudePruning if alg == "magnitude" else bx.SteRandomPruning)(
        sparsity=0.7, schedule=bx.PolynomialSchedule(start=0, end=10, every=5))
    opt = optax.adam(5e-2)
    opt_state = opt.init(bx.trainable(sparse))
    loss = loss_for(model_name)
    batch = MODELS[model_name][1]()

    @eqx.filter_jit
    def step(m, state, opt_state, i, key):
        (_, state), g = eqx.filter_value_and_grad(loss, has_aux=True)(m, state, *batch, key)
        updates, opt_state = opt.update(bx.trainable(g), opt_state, bx.trainable(m))
        return pruner.update(eqx.apply_updates(m, updates), i, key=key), state, opt_state

    history = []
    for i in range(12):
        sparse, state, opt_state = step(sparse, state, opt_state, jnp.asarray(i), jax.random.key(i))
        history.append(dict(sparse.masks))
    assert step._cached._cache_size() == 1
    # masks change between steps (every step, not only at the schedule's update steps) ...
    changes = [sum(int(jnp.sum(a[p] != b[p])) for p in a) for a, b in zip(history, history[1:])]
    assert sum(c > 0 for c in changes) >= 5
    # ... at the schedule's sparsity, and the pruned weights keep their dense trained values
    w = weights_of(sparse)
    for p, m in sparse.masks.items():
        assert int(m.sum()) == keep_count(m.size, 0.7)
        assert float(jnp.abs(jnp.where(m, 0, w[p])).max()) > 0, p
    with pytest.raises(ValueError, match="straight_through=True"):
        pruner.update(bx.Sparse(model), 0, key=jax.random.key(0))


def test_ste_waits_for_the_schedule_to_start():
    sparse = bx.Sparse(mlp(), straight_through=True)
    for schedule in (bx.OneShotSchedule(5), bx.PeriodicSchedule(every=1, start=5), bx.NoUpdateSchedule()):
        pruner = bx.SteMagnitudePruning(sparsity=0.5, schedule=schedule)
        assert float(bx.sparsity_summary(pruner.update(sparse, 0))["total"]) == 0.0
        later = float(bx.sparsity_summary(pruner.update(sparse, 7))["total"])
        assert later == (0.0 if isinstance(schedule, bx.NoUpdateSchedule) else pytest.approx(0.5, abs=0.01))


@pytest.mark.parametrize("model_name", ["mlp", "cnn", pytest.param("transformer", marks=SLOW)])
def test_static_random_masks_never_change(model_name):
    model, state = build(model_name)
    pruner = bx.StaticRandomSparse(sparsity=0.75, distribution="erk")
    sparse = pruner.prune(bx.Sparse(model), key=jax.random.key(0))
    shapes = {p: tuple(m.shape) for p, m in sparse.masks.items()}
    erk = bx.erk_sparsities(shapes, 0.75)
    for p, m in sparse.masks.items():  # exact counts per leaf
        assert int(m.sum()) == keep_count(m.size, erk[p])
    opt = bx.masked_updates(optax.adam(1e-2))
    opt_state = opt.init(sparse)
    loss = loss_for(model_name)
    batch = MODELS[model_name][1]()

    @eqx.filter_jit
    def step(m, state, opt_state, i, key):
        (_, state), g = eqx.filter_value_and_grad(loss, has_aux=True)(m, state, *batch, key)
        updates, opt_state = opt.update(g, opt_state, m)
        return pruner.update(eqx.apply_updates(m, updates), i + 1, key=key), state, opt_state

    start = dict(sparse.masks)
    assert pruner.update(sparse, 3).masks == sparse.masks  # no key needed: the mask never changes
    for i in range(5):
        sparse, state, opt_state = step(sparse, state, opt_state, jnp.asarray(i), jax.random.key(i))
    w = weights_of(sparse)
    for p, m in sparse.masks.items():
        np.testing.assert_array_equal(m, start[p])
        assert float(jnp.abs(jnp.where(m, 0, w[p])).max()) == 0


def test_static_random_exact_small_count():
    lin = eqx.nn.Linear(2, 2, use_bias=False, key=jax.random.key(0))  # 4 weights at 0.75 keep 1
    for s in range(5):
        assert int(bx.StaticRandomSparse(sparsity=0.75).prune(bx.Sparse(lin), key=jax.random.key(s)).masks["weight"].sum()) == 1


# ---- bad input ---------------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error():
    model = bx.StaticRandomSparse(sparsity=0.75).prune(bx.Sparse(mlp()), key=jax.random.key(0))
    for f in (-0.1, 1.5):
        with pytest.raises(ValueError, match="drop_fraction must be a number in \\[0, 1\\]"):
            bx.RigL(sparsity=0.5, drop_fraction=f)
    for kind in ("block", "channel"):
        with pytest.raises(ValueError, match="unstructured or N:M"):
            bx.SET(sparsity=0.5, sparsity_type=kind)
    with pytest.raises(ValueError, match="distribution='global'"):
        bx.RigL(sparsity=0.5, distribution="global")
    with pytest.raises(ValueError, match="straight_through"):
        bx.RigL(sparsity=0.75, schedule=EVERY).update(model, 0)
    with pytest.raises(ValueError, match="PRNG key"):
        bx.SET(sparsity=0.75, schedule=EVERY).update(model, 0)
    with pytest.raises(ValueError, match="grow must be"):
        bx.BMRDropAndGrow(sparsity=0.5, grow="saliency")
    with pytest.raises(ValueError, match="needs a target"):
        bx.RigL()
    bx.SET(sparsity=0.5, schedule=bx.PeriodicSchedule(every=1, start=5, end=5))  # a one-update window is fine
    masked = masked_grads(model, *mlp_batch())  # forgot straight_through
    with pytest.raises(Exception, match="straight_through"):
        bx.RigL(sparsity=0.75, schedule=EVERY).update(model, 0, grads=masked)
    with pytest.raises(ValueError, match="before and after"):
        bx.reset_regrown(optax.adam(1e-2).init(bx.trainable(model)), model, bx.Sparse(mlp(width=8)))


def test_counts_agree_where_float32_and_float64_rounding_differ():
    # 15 weights at 0.7: 15·(1 − 0.7) is 4.5000000001 in float64 but 4.4999995 in float32; every
    # path (prune, drop-and-grow updates) keeps keep_count's float32 figure, 4.
    lin = eqx.nn.Linear(5, 3, key=jax.random.key(0))
    m = bx.StaticRandomSparse(sparsity=0.7).prune(bx.Sparse(lin), key=jax.random.key(1))
    assert keep_count(15, 0.7) == 4
    assert int(m.masks["weight"].sum()) == 4
    for pruner in (bx.SET(sparsity=0.7, schedule=EVERY), bx.RigL(sparsity=0.7, schedule=EVERY)):
        grads = eqx.filter_grad(lambda mm: jnp.sum(bx.straight_through(mm)(jnp.ones(5)) ** 2))(m)
        assert int(pruner.update(m, 0, key=jax.random.key(2), grads=grads).masks["weight"].sum()) == 4


def test_nm_from_an_unstructured_start_reaches_n_per_group():
    m = bx.StaticRandomSparse(sparsity=0.5).prune(bx.Sparse(eqx.nn.MLP(8, 4, 8, 1, key=jax.random.key(0))),
                                                  key=jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (16, 8))
    dense = eqx.filter_grad(lambda mm: jnp.sum(jax.vmap(bx.straight_through(mm))(x) ** 2))(m)
    new = bx.RigL(sparsity_type="2:4", schedule=EVERY).update(m, 0, grads=dense)
    for p, mask in new.masks.items():
        assert (np.asarray(mask).reshape(*mask.shape[:-1], -1, 4).sum(-1) == 2).all(), p


def test_sparser_leaf_grows_to_its_target():
    m = bx.StaticRandomSparse(sparsity=0.9).prune(bx.Sparse(mlp()), key=jax.random.key(0))
    new = bx.SET(sparsity=0.75, schedule=EVERY).update(m, 0, key=jax.random.key(1))
    for p, mask in new.masks.items():
        assert int(mask.sum()) == keep_count(mask.size, 0.75)
        assert int((m.masks[p] & ~mask).sum()) <= int(0.3 * int(m.masks[p].sum()))  # at most the drop fraction
