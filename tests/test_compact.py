import re
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import MODELS, build

import bmr_eqx as bx


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


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_what_compact_cannot_do_it_leaves_and_names(name):
    model, _ = build(name)
    sparse = bx.MagnitudePruning(sparsity=0.5).prune(bx.Sparse(model))
    with pytest.warns(UserWarning, match=re.escape(f"`{MODELS[name][2][0]}`: not inside an eqx.nn.MLP")):
        out = bx.compact(sparse)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(sparse.masked())):
        np.testing.assert_array_equal(a, b)


def test_compact_errors():
    mlp = eqx.nn.MLP(4, 2, 8, 1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="No bmr_eqx.Sparse"):
        bx.compact(mlp)
    with pytest.raises(TypeError, match="eagerly"):
        eqx.filter_jit(bx.compact)(bx.Sparse(mlp))
    softmax_mlp = eqx.nn.MLP(4, 2, 8, 1, activation=jax.nn.softmax, key=jax.random.key(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = bx.compact(bx.Sparse(softmax_mlp))
    assert "not elementwise" in str(caught[0].message)
    assert same.layers[0].weight.shape == (8, 4)
