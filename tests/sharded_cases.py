"""Pruning on a device mesh: 8 simulated CPU devices, so this file runs in a process of its own
(`test_sharding.py`), leaving the rest of the suite on one device. Run it directly with
`pytest tests/sharded_cases.py` (`-m slow` adds training on a mesh for the CNN and the transformer;
sharded pruning is checked on all three models by default)."""

import jax

jax.config.update("jax_num_cpu_devices", 8)  # before any computation initialises the CPU backend

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from helpers import MODELS, build, loss_for  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import bmr_eqx as bx  # noqa: E402

MESH = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
REPLICATED = NamedSharding(MESH, PartitionSpec())


def rule(path, leaf):
    """Megatron-like: shard a weight's first axis over "model" when it divides, else replicate."""
    if leaf.ndim >= 2 and leaf.shape[0] % MESH.shape["model"] == 0:
        return NamedSharding(MESH, PartitionSpec("model", *([None] * (leaf.ndim - 1))))
    return REPLICATED


def by_path(tree):
    return {jax.tree_util.keystr(p).lstrip("."): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def pruned_models(name):
    model, _ = build(name)
    return {
        "magnitude": (bx.MagnitudePruning(sparsity=0.8), bx.Sparse(model)),
        "global magnitude": (bx.GlobalMagnitudePruning(sparsity=0.8), bx.Sparse(model)),
        "BMR": (bx.BMRPruning(sparsity=0.8), bx.Posterior(bx.Sparse(model), ess=100.0, hess_init=0.5)),
        "channel": (bx.MagnitudePruning(sparsity=0.5, sparsity_type="channel"), bx.Sparse(model)),
    }


def test_there_are_eight_devices():
    assert len(jax.devices()) == 8


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_masks_and_curvature_are_sharded_like_their_weights(name):
    model, _ = build(name)
    post = bx.shard(bx.Posterior(bx.Sparse(model), ess=100.0), rule)
    weights = by_path(post.mean.model)
    sharded = 0
    for path, mask in post.mean.masks.items():
        assert mask.sharding.is_equivalent_to(weights[path].sharding, mask.ndim), path
        sharded += not weights[path].sharding.is_fully_replicated
    for path, h in post.hess.items():
        assert h.sharding.is_equivalent_to(weights[path].sharding, h.ndim), path
    assert sharded >= 1  # the rule did shard something
    assert post.init_weight.sharding.is_fully_replicated
    for leaf in jax.tree.leaves(eqx.filter(post, eqx.is_array)):
        assert len(leaf.sharding.device_set) == 8


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_sharded_pruning_equals_unsharded_mask_for_mask(name):
    for what, (pruner, model) in pruned_models(name).items():
        plain = pruner.prune(model)
        sharded = pruner.prune(bx.shard(model, rule))
        sp_plain = plain.mean if isinstance(plain, bx.Posterior) else plain
        sp_sharded = sharded.mean if isinstance(sharded, bx.Posterior) else sharded
        weights = by_path(sp_sharded.model)
        for path in sp_plain.masks:
            np.testing.assert_array_equal(sp_sharded.masks[path], sp_plain.masks[path], err_msg=f"{what} {path}")
            assert sp_sharded.masks[path].sharding.is_equivalent_to(weights[path].sharding, weights[path].ndim), \
                f"{what} {path}"


def test_per_leaf_topk_exchanges_counts_not_leaves():
    # The compiled per-leaf magnitude update of a model sharded over "model" has no all-gather: each
    # device scores and masks its own shard, and the top-k's binary search only all-reduces counts.
    model, _ = build("mlp")
    sharded = bx.shard(bx.Sparse(model), rule)
    pruner = bx.MagnitudePruning(sparsity=0.8, schedule=bx.PeriodicSchedule(every=1))
    params, static = eqx.partition(sharded, eqx.is_array)
    update = jax.jit(lambda p, i: eqx.filter(pruner.update(eqx.combine(p, static), i), eqx.is_array))
    hlo = update.lower(params, jnp.asarray(0)).compile().as_text()
    assert "all-reduce" in hlo
    assert "all-gather" not in hlo


def test_topk_of_scores_sharded_over_a_mesh_with_explicit_axes():
    # jax.make_mesh's default axis types are explicit: the sort branch that platform_dependent
    # traces next to the CPU search must say that it gathers the keys, and the mask is the same.
    if not hasattr(jax.sharding, "AxisType"):
        pytest.skip("this JAX has no explicit mesh axes")
    mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
    x = jax.random.normal(jax.random.key(0), (64,))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("d")))
    np.testing.assert_array_equal(jax.jit(lambda s: bx.topk_mask(s, 0.75))(sharded), bx.topk_mask(x, 0.75))


@pytest.mark.parametrize("name", ["mlp", pytest.param("cnn", marks=pytest.mark.slow),
                                  pytest.param("transformer", marks=pytest.mark.slow)])
def test_training_with_pruning_on_a_mesh_equals_one_device(name):
    model, state = build(name)
    x, y = MODELS[name][1]()
    loss = loss_for(name)
    opt = bx.masked_updates(optax.adam(1e-2))
    pruner = bx.MagnitudePruning(sparsity=0.7, schedule=bx.PeriodicSchedule(every=2))

    @eqx.filter_jit
    def step(model, state, opt_state, x, y, i, shard):
        (value, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, state, x, y, jax.random.key(0))
        updates, opt_state = opt.update(grads, opt_state, model)
        model = pruner.update(eqx.apply_updates(model, updates), i)
        return (bx.shard(model, rule) if shard else model), state, opt_state, value

    def run(shard):
        m = bx.Sparse(model)
        s = state
        xs, ys = x, y
        if shard:
            m = bx.shard(m, rule)
            data = NamedSharding(MESH, PartitionSpec("data"))
            xs, ys = jax.device_put(x, data), jax.device_put(y, data)
        o = opt.init(m)
        values = []
        for i in range(4):
            m, s, o, v = step(m, s, o, xs, ys, jnp.asarray(i), shard)
            values.append(float(v))
        return m, values

    plain, v_plain = run(False)
    sharded, v_sharded = run(True)
    np.testing.assert_allclose(v_sharded, v_plain, rtol=2e-4, atol=1e-6)
    for path in plain.masks:
        agree = float(jnp.mean(sharded.masks[path] == plain.masks[path]))
        assert agree > 0.99, (path, agree)  # float reductions may order differently: near-ties may flip
        w = by_path(sharded.model)[path]
        assert sharded.masks[path].sharding.is_equivalent_to(w.sharding, w.ndim), path


def test_a_sharding_rule_that_returns_something_else_is_named():
    model, _ = build("mlp")
    with pytest.raises(TypeError, match="layers\\[0\\].weight"):
        bx.shard(bx.Sparse(model), lambda path, leaf: "model")


def test_a_sharding_that_does_not_fit_a_leaf_is_named():
    model, _ = build("mlp")
    eight_ways = NamedSharding(MESH, PartitionSpec(("data", "model"), None))  # 4 output rows: no fit
    with pytest.raises(ValueError, match=r"`layers\[2\]\.weight` \(shape \(4, 32\)\) does not fit"):
        bx.shard(bx.Sparse(model), lambda path, leaf: eight_ways if path == "layers[2].weight" else REPLICATED)
