import re
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import build
from test_groups import example

import bmr_eqx as bx
from bmr_eqx._tree import leaves_with_paths


def structured(model, key=0, dead_rows=(3, 5), dead_cols=(6,)):
    """A Sparse MLP with random 10% unstructured masks plus whole rows of layers[0] (dead units of the
    first hidden layer: their output is their activated bias) and whole columns of layers[2]
    (units of the second hidden layer nothing reads) pruned."""
    s = bx.RandomPruning(sparsity=0.1).prune(bx.Sparse(model), key=jax.random.key(key))
    m0 = s.masks["layers[0].weight"].at[jnp.array(dead_rows)].set(False)
    m2 = s.masks["layers[2].weight"].at[:, jnp.array(dead_cols)].set(False)
    return bx.Sparse(s.model, masks={**s.masks, "layers[0].weight": m0, "layers[2].weight": m2})


@pytest.mark.parametrize("activation", [jax.nn.relu, jnp.tanh])
def test_compacted_mlp_is_smaller_and_computes_the_same(activation):
    mlp = eqx.nn.MLP(16, 4, 32, 2, activation=activation, key=jax.random.key(0))
    # non-zero biases, so dead units carry a constant the next layer must absorb
    mlp = eqx.tree_at(lambda m: m.layers[0].bias, mlp, jnp.linspace(-1.0, 1.0, 32))
    sparse = structured(mlp)
    small = bx.compact(sparse)
    assert isinstance(small, eqx.nn.MLP) and not isinstance(small, bx.Sparse)
    assert [lin.weight.shape for lin in small.layers] == [(30, 16), (31, 30), (4, 31)]
    assert [(lin.in_features, lin.out_features) for lin in small.layers] == [(16, 30), (30, 31), (31, 4)]
    x = jax.random.normal(jax.random.key(1), (20, 16))
    np.testing.assert_allclose(jax.vmap(small)(x), jax.vmap(sparse)(x), rtol=1e-5, atol=1e-6)


def test_oracle_dead_unit_constant_folds_into_the_next_bias():
    # one hidden unit whose inputs are all pruned: relu(b) = 2 must reach the output through w2
    mlp = eqx.nn.MLP(2, 1, 2, 1, activation=jax.nn.relu, key=jax.random.key(0))
    mlp = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight, m.layers[1].bias), mlp,
                      (jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([2.0, 0.5]), jnp.array([[5.0, 7.0]]), jnp.array([1.0])))
    sparse = bx.Sparse(mlp, masks={"layers[0].weight": jnp.array([[False, False], [True, True]]),
                                   "layers[1].weight": jnp.ones((1, 2), bool)})
    small = bx.compact(sparse)
    np.testing.assert_array_equal(small.layers[0].weight, [[3.0, 4.0]])
    np.testing.assert_array_equal(small.layers[1].weight, [[7.0]])
    np.testing.assert_array_equal(small.layers[1].bias, [1.0 + 5.0 * 2.0])
    x = jnp.array([0.3, -0.2])
    np.testing.assert_allclose(small(x), sparse(x), rtol=1e-6)


def test_posterior_serialise_compact_run(tmp_path):
    mlp = eqx.nn.MLP(16, 4, 32, 2, activation=jnp.tanh, key=jax.random.key(0))
    post = bx.Posterior(structured(mlp), ess=10.0)
    eqx.tree_serialise_leaves(tmp_path / "m.eqx", post)
    loaded = eqx.tree_deserialise_leaves(tmp_path / "m.eqx", bx.Posterior(bx.Sparse(mlp), ess=10.0))
    small = bx.compact(loaded)
    x = jax.random.normal(jax.random.key(1), (5, 16))
    np.testing.assert_allclose(jax.vmap(small)(x), jax.vmap(post.mean)(x), rtol=1e-5, atol=1e-6)
    assert small.layers[1].weight.shape == (31, 30)


def randomly_pruned_along_groups(name, key=0):
    """(Sparse model, state, example args): random 50% of every coupled group's channels pruned,
    plus 10% random unstructured zeros in every prunable leaf, and non-zero biases everywhere."""
    model, state, args = example(name)
    model = jax.tree.map(lambda x: x + 0.1 if eqx.is_array(x) and x.ndim == 1 else x, model)
    groups = bx.dependency_groups(model, *args)
    by_channel = bx.RandomPruning(sparsity=0.5, sparsity_type=bx.Coupled(groups)).prune(
        bx.Sparse(model), key=jax.random.key(key))
    rng = np.random.default_rng(key)
    masks = {k: m & (rng.random(m.shape) > 0.1) for k, m in by_channel.masks.items()}
    return bx.Sparse(model, masks=masks), state, args, groups


EXPECTED_SHAPES = {  # every group loses half of its channels
    "cnn": {"conv1.weight": (4, 1, 3, 3), "bn.weight": (4,), "conv2.weight": (8, 4, 3, 3), "head.weight": (10, 8)},
    "residual": {"inp.weight": (4, 4), "mid.weight": (4, 4), "side.weight": (4, 4), "head.weight": (3, 8)},
    "transformer": {"block.attn.query_proj.weight": (8, 16), "block.attn.value_proj.weight": (4, 16),
                    "block.attn.output_proj.weight": (16, 4), "block.ff1.weight": (16, 16), "block.ff2.weight": (16, 16)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_compaction_along_groups_equals_the_masked_model(name):
    sparse, state, args, _ = randomly_pruned_along_groups(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 10% unstructured zeros stay, and compact says so
        out = bx.compact(sparse, *args)
    small, small_state = out if state is not None else (out, None)
    shapes = {p: tuple(x.shape) for p, x in leaves_with_paths(eqx.filter(small, eqx.is_array))}
    assert {p: shapes[p] for p in EXPECTED_SHAPES[name]} == EXPECTED_SHAPES[name]
    if name == "cnn":
        assert (small.conv1.out_channels, small.conv2.in_channels, small.bn.input_size) == (4, 4, 4)
        mean, var = small_state.get(small.bn.batch_state_index)
        assert mean.shape == var.shape == (4,)
        x = jax.random.normal(jax.random.key(2), (6, 1, 8, 8))
        run = eqx.filter_jit(lambda m, s: jax.vmap(lambda xi: m(xi, s)[0])(x))  # noqa: E731
        inference = eqx.nn.inference_mode
        np.testing.assert_allclose(run(inference(small), small_state), run(inference(sparse.masked()), state),
                                   rtol=1e-4, atol=1e-5)
        # training mode too: batch statistics over the batch axis
        no_dropout = lambda m: eqx.tree_at(lambda c: c.dropout.inference, m, True)  # noqa: E731
        train = eqx.filter_jit(lambda m, s: jax.vmap(lambda xi: no_dropout(m)(xi, s), axis_name="batch",
                                                     out_axes=(0, None))(x))
        (y_small, new_state), (y_masked, _) = train(small, small_state), train(sparse.masked(), state)
        np.testing.assert_allclose(y_small, y_masked, rtol=1e-4, atol=1e-4)
        assert new_state.get(small.bn.batch_state_index)[0].shape == (4,)
    else:
        if name == "transformer":
            assert (small.block.attn.num_heads, small.block.attn.vo_size, small.block.ff1.out_features) == (1, 4, 16)
        x = jax.random.randint(jax.random.key(2), (6, 6), 0, 16) if name == "transformer" else \
            jax.random.normal(jax.random.key(2), (6, 4))
        run = eqx.filter_jit(lambda m: jax.vmap(m)(x))
        np.testing.assert_allclose(run(small), run(sparse), rtol=1e-4, atol=1e-5)


def test_serialise_compact_run_cnn(tmp_path):
    sparse, state, args, _ = randomly_pruned_along_groups("cnn", key=3)
    eqx.tree_serialise_leaves(tmp_path / "m.eqx", (sparse, state))
    model, _ = build("cnn")
    like = (bx.Sparse(model, masks=jax.tree.map(jnp.ones_like, sparse.masks)), state)
    loaded, loaded_state = eqx.tree_deserialise_leaves(tmp_path / "m.eqx", like)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small, small_state = bx.compact(loaded, args[0], loaded_state)
    x = jax.random.normal(jax.random.key(2), (3, 1, 8, 8))
    inference = eqx.nn.inference_mode
    np.testing.assert_allclose(jax.vmap(lambda xi: inference(small)(xi, small_state)[0])(x),
                               jax.vmap(lambda xi: inference(sparse)(xi, state)[0])(x), rtol=1e-4, atol=1e-5)


def test_what_compact_cannot_remove_it_names():
    model, _, args = example("transformer")
    sparse = bx.MagnitudePruning(sparsity=0.5).prune(bx.Sparse(model))
    with pytest.warns(UserWarning, match=re.escape("`embed.weight`: 50% zeros stay (not whole channels")):
        out = bx.compact(sparse, *args)
    np.testing.assert_allclose(out(args[0]), sparse(args[0]), rtol=1e-5, atol=1e-6)
    scan, _ = build("scan")
    with pytest.warns(UserWarning, match="layers.weight"):
        bx.compact(bx.MagnitudePruning(sparsity=0.5).prune(bx.Sparse(scan)), jnp.ones(8))


def test_compact_errors():
    mlp = eqx.nn.MLP(4, 2, 8, 1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="eagerly"):
        eqx.filter_jit(bx.compact)(bx.Sparse(mlp))
    softmax_mlp = eqx.nn.MLP(4, 2, 8, 1, activation=jax.nn.softmax, key=jax.random.key(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = bx.compact(bx.MagnitudePruning(sparsity=0.5).prune(bx.Sparse(softmax_mlp)))
    assert "not elementwise" in str(caught[0].message)
    assert same.layers[0].weight.shape == (8, 4)


def test_sequential_of_conv1d_and_conv_transpose_compacts():
    k = jax.random.split(jax.random.key(0), 3)
    model = eqx.nn.Sequential([
        eqx.nn.Conv1d(2, 8, 3, padding=1, key=k[0]), eqx.nn.Lambda(jax.nn.relu),
        eqx.nn.ConvTranspose1d(8, 6, 3, key=k[1]), eqx.nn.Lambda(jnp.tanh),
        eqx.nn.Conv1d(6, 3, 3, key=k[2]),
    ])
    x = jax.random.normal(jax.random.key(1), (2, 10))
    groups = bx.dependency_groups(model, x)
    assert [(g.size, g.consumers) for g in groups] == [(8, (("layers[2].weight", 1),)), (6, (("layers[4].weight", 1),))]
    pruned = bx.MagnitudePruning(sparsity=0.5, sparsity_type=bx.Coupled(groups)).prune(bx.Sparse(model))
    small = bx.compact(pruned, x)
    assert [(c.in_channels, c.out_channels) for c in small.layers[::2]] == [(2, 4), (4, 3), (3, 3)]
    np.testing.assert_allclose(small(x), pruned(x), rtol=1e-5, atol=1e-5)


def test_scalar_mlp_and_state_index_initial_values_survive_compaction():
    mlp = eqx.nn.MLP("scalar", "scalar", 8, 2, key=jax.random.key(0))
    pruned = bx.MagnitudePruning(sparsity=0.5, sparsity_type="channel", keep_dense=("layers[2].weight",)).prune(
        bx.Sparse(mlp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = bx.compact(pruned, jnp.asarray(0.3))
    assert (small.layers[0].in_features, small.layers[-1].out_features) == ("scalar", "scalar")
    np.testing.assert_allclose(small(jnp.asarray(0.3)), pruned(jnp.asarray(0.3)), rtol=1e-5, atol=1e-6)
    assert small(jnp.asarray(0.3)).shape == ()
    # a BatchNorm built without make_with_state still holds its initial statistics: sliced too
    model, _ = build("cnn")
    model = eqx.tree_at(lambda m: m.bn, model, eqx.nn.BatchNorm(8, axis_name="batch", mode="batch"))
    state, x = eqx.nn.State(model), jnp.ones((1, 8, 8))
    groups = bx.dependency_groups(model, x, state)
    pruned = bx.MagnitudePruning(sparsity=0.5, sparsity_type=bx.Coupled(groups)).prune(bx.Sparse(model))
    small, _ = bx.compact(pruned, x, state)
    mean, var = eqx.nn.State(small).get(small.bn.batch_state_index)
    assert mean.shape == var.shape == (4,)
