import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import mlp

import bmr_eqx as bx

PATHS = ["layers[0].weight", "layers[1].weight", "layers[2].weight"]


def weights(s):
    """The stored weights and the masks of the three MLP layers of a `Sparse`, in layer order."""
    return [layer.weight for layer in s.model.layers], [s.masks[p] for p in PATHS]


def test_magnitude_uniform_keeps_largest_per_layer():
    s = bx.MagnitudePruning(sparsity=0.75).prune(mlp())
    assert list(s.masks) == PATHS
    for w0, m in zip([layer.weight for layer in mlp().layers], weights(s)[1]):
        np.testing.assert_array_equal(m, bx.topk_mask(jnp.abs(w0), 0.75))
    assert all(bool(jnp.all(jnp.where(m, 0, w) == 0)) for w, m in zip(*weights(s)))


@pytest.mark.parametrize(
    "kwargs,check",
    [
        # N:M fixes the sparsity (2:4 = 0.5), so no sparsity= is passed with it.
        ({"sparsity_type": "2:4"}, lambda m: bool(jnp.all(m.reshape(m.shape[0], -1, 4).sum(-1) == 2))),
        ({"sparsity_type": bx.NByM(2, 4)}, lambda m: bool(jnp.all(m.reshape(m.shape[0], -1, 4).sum(-1) == 2))),
        ({"sparsity": 0.5, "sparsity_type": bx.Channel(0)}, lambda m: bool(jnp.all(m.all(1) == m.any(1)))),
        (
            {"sparsity": 0.5, "sparsity_type": bx.Block((2, 4))},
            lambda m: bool(jnp.all(m.reshape(m.shape[0] // 2, 2, -1, 4).sum((1, 3)) % 8 == 0)),
        ),
    ],
    ids=["2:4", "NByM(2,4)", "channel", "block"],
)
def test_structured_sparsity_types(kwargs, check):
    s = bx.MagnitudePruning(**kwargs).prune(mlp())
    assert all(check(m) for m in weights(s)[1])


def test_nm_with_sparsity_conflicts():
    for stype in ("2:4", bx.NByM(2, 4)):
        with pytest.raises(ValueError, match=r"sparsity=0.5 conflicts with N:M sparsity 2:4"):
            bx.MagnitudePruning(sparsity=0.5, sparsity_type=stype)


def test_nm_on_indivisible_leaf_names_it():
    model = bx.Sparse(mlp(0, in_size=6, out_size=3, width=8, depth=1))
    with pytest.raises(ValueError, match=r"`layers\[0\].weight` \(shape \(8, 6\)\).*divisible by 4"):
        bx.MagnitudePruning(sparsity_type="2:4").prune(model)


def test_erk_distribution_and_custom_map():
    s = bx.MagnitudePruning(sparsity=0.8, distribution="erk").prune(mlp())
    summary = bx.sparsity_summary(s)
    expected = bx.erk_sparsities({"layers[0].weight": (32, 16), "layers[1].weight": (32, 32), "layers[2].weight": (4, 32)}, 0.8)
    for path, target in expected.items():
        assert float(summary[path]) == pytest.approx(target, abs=1 / 128)
    c = bx.MagnitudePruning(sparsity=0.5, distribution={"layers[0].weight": None, "layers[2].weight": 0.25}).prune(mlp())
    summary = bx.sparsity_summary(c)
    assert float(summary["layers[0].weight"]) == 0.0
    assert float(summary["layers[1].weight"]) == pytest.approx(0.5)
    assert float(summary["layers[2].weight"]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"names \['layers\[9\].weight'\]"):
        bx.MagnitudePruning(sparsity=0.5, distribution={"layers[9].weight": 0.1}).prune(mlp())


def test_global_magnitude_one_ranking_with_normalisation():
    model = bx.Sparse(mlp())
    s = bx.GlobalMagnitudePruning(sparsity=0.9, normalize=True, floor=0.0).prune(model)
    assert float(bx.sparsity_summary(s)["total"]) == pytest.approx(0.9, abs=1e-3)
    ws = [layer.weight for layer in mlp().layers]
    normed = [jnp.abs(w) / (jnp.linalg.norm(w) + 1e-8) for w in ws]
    expected = bx.global_topk_masks(normed, 0.9)
    for got, exp in zip(weights(s)[1], expected):
        np.testing.assert_array_equal(got, exp)
    raw = bx.GlobalMagnitudePruning(sparsity=0.9, floor=0.0).prune(model)  # raw |w| is the default
    for got, exp in zip(weights(raw)[1], bx.global_topk_masks([jnp.abs(w) for w in ws], 0.9)):
        np.testing.assert_array_equal(got, exp)


@pytest.mark.parametrize("floor", [0.1, 0.5, 1.0])
def test_global_floors_hold_exactly(floor):
    # leaf 2 holds the 4x larger weights: a plain global ranking keeps only it
    model = bx.Sparse(mlp())
    big = eqx.tree_at(lambda m: m.model.layers[2].weight, model, model.model.layers[2].weight * 100)
    s = 0.9
    plain = bx.GlobalMagnitudePruning(sparsity=s, floor=0.0).prune(big)
    assert float(bx.sparsity_summary(plain)["layers[1].weight"]) > 0.95
    pruned = bx.GlobalMagnitudePruning(sparsity=s, floor=floor).prune(big)
    masks = pruned.masks
    total = sum(m.size for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(total * (1 - s))  # the budget is exact
    for path, m in masks.items():
        w = big.model.layers[int(path[7])].weight
        need = max(1, round(m.size * floor * (1 - s)))
        assert int(m.sum()) >= need, path
        top = bx.topk_mask(jnp.abs(w), 1 - need / m.size)  # the floor is the leaf's best weights
        assert bool(jnp.all(m | ~top)), path
    if floor == 1.0:  # floors of a full uniform share leave nothing to rank globally
        for path, m in masks.items():
            assert int(m.sum()) == round(m.size * (1 - s))
    # A global ranking is of single weights: structured sparsity types are rejected.
    with pytest.raises(ValueError, match="distribution='global' .* needs unstructured sparsity"):
        bx.GlobalMagnitudePruning(sparsity=0.5, sparsity_type="channel")
    with pytest.raises(ValueError, match="N:M sparsity fixes every leaf's sparsity; drop distribution="):
        bx.GlobalMagnitudePruning(sparsity_type="2:4")


def test_saliency_uses_grads_and_requires_them():
    model = bx.Sparse(mlp())
    x = jax.random.normal(jax.random.key(1), (8, 16))
    grads = eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(x) ** 2))(model)
    s = bx.SaliencyPruning(sparsity=0.5).prune(model, grads=grads)
    for layer, g, m in zip(model.model.layers, grads.model.layers, weights(s)[1]):
        np.testing.assert_array_equal(m, bx.topk_mask(jnp.abs(layer.weight * g.weight), 0.5))
    gs = bx.GlobalSaliencyPruning(sparsity=0.5).prune(model, grads=grads)
    assert float(bx.sparsity_summary(gs)["total"]) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="pass grads="):
        bx.SaliencyPruning(sparsity=0.5).prune(model)


def test_random_is_monotone_and_needs_key():
    pr = bx.RandomPruning(sparsity=0.8, schedule=bx.PolynomialSchedule(start=0, end=40, every=10))
    model = bx.Sparse(mlp())
    prev = weights(model)[1]
    for i, step in enumerate([0, 10, 20, 30, 40]):
        model = pr.update(model, step, key=jax.random.key(i))
        cur = weights(model)[1]
        assert all(bool(jnp.all(c <= p)) for c, p in zip(cur, prev))  # nothing comes back
        prev = cur
    assert float(bx.sparsity_summary(model)["total"]) == pytest.approx(0.8, abs=1e-2)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        pr.update(model, 0)


def test_no_pruning_keeps_everything():
    s = bx.NoPruning().prune(mlp())
    assert float(bx.sparsity_summary(s)["total"]) == 0.0
    assert bx.NoPruning().update(s, 0) is not None


def test_bad_config_errors():
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        bx.MagnitudePruning(sparsity=1.2)
    with pytest.raises(ValueError, match="Unknown distribution"):
        bx.MagnitudePruning(sparsity=0.5, distribution="lognormal")
    with pytest.raises(ValueError, match="Unknown sparsity type"):
        bx.MagnitudePruning(sparsity=0.5, sparsity_type="rows")
    with pytest.raises(ValueError, match="needs a target"):
        bx.MagnitudePruning()
    with pytest.raises(TypeError, match=r"No bmr_eqx.Sparse model found in MLP\. Wrap the model .* first"):
        bx.MagnitudePruning(sparsity=0.5).update(mlp(), 0)


def test_update_follows_schedule_inside_jit_without_recompiling():
    pruner = bx.MagnitudePruning(sparsity=0.9, schedule=bx.PolynomialSchedule(start=2, end=20, every=2))
    traces = []

    @eqx.filter_jit
    def f(model, step):
        traces.append(1)
        return pruner.update(model, step)

    model = bx.Sparse(mlp())
    seen = []
    for step in range(25):
        new = f(model, jnp.asarray(step))
        changed = any(bool(jnp.any(a != b)) for a, b in zip(weights(new)[1], weights(model)[1]))
        if changed:
            seen.append(step)
        model = new
        total = float(bx.sparsity_summary(model)["total"])
        if step in (2, 10, 20):
            per_leaf = [float(pruner.schedule.sparsity(step, 0.9))] * 3
            sizes = [32 * 16, 32 * 32, 4 * 32]
            exp = 1 - sum(max(1, round(n * (1 - s))) for n, s in zip(sizes, per_leaf)) / sum(sizes)
            assert total == pytest.approx(exp, abs=1e-6)
    assert len(traces) == 1
    assert seen and set(seen) <= {2, 4, 6, 8, 10, 12, 14, 16, 18, 20}
    assert float(bx.sparsity_summary(model)["total"]) == pytest.approx(0.9, abs=2e-3)


def test_training_loop_with_gradual_pruning_learns():
    x = jax.random.normal(jax.random.key(0), (64, 16))
    y = jnp.sin(x[:, :4])
    model = bx.Sparse(mlp())
    pruner = bx.MagnitudePruning(sparsity=0.5, schedule=bx.PolynomialSchedule(start=10, end=60, every=5))
    opt = bx.masked_updates(optax.adam(1e-2))
    state = opt.init(model)
    def loss_fn(m):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    @eqx.filter_jit
    def step(model, state, i):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = opt.update(grads, state, model)
        model = pruner.update(eqx.apply_updates(model, updates), i, grads=grads)
        return model, state, loss

    first = None
    for i in range(100):
        model, state, loss = step(model, state, jnp.asarray(i))
        first = first if first is not None else float(loss)
    assert float(loss) < 0.5 * first
    assert float(bx.sparsity_summary(model)["total"]) == pytest.approx(0.5, abs=1e-2)


def test_summaries_and_intersection():
    a = bx.MagnitudePruning(sparsity=0.5).prune(mlp())
    b = bx.MagnitudePruning(sparsity=0.75).prune(mlp())
    inter = bx.mask_intersection(b, a)
    assert float(inter["total"]) == 1.0  # magnitude masks are nested
    assert 0.0 < float(bx.mask_intersection(a, b)["total"]) < 1.0
    summary = bx.sparsity_summary(a)
    assert set(summary) == {"layers[0].weight", "layers[1].weight", "layers[2].weight", "total"}
