import warnings

import equinox as eqx
import jax
import numpy as np
import pytest
from helpers import MODELS, build
from jax.experimental import sparse as jsparse

import bmr_eqx as bx


def run(model, name, state, x):
    if name == "cnn":
        model = eqx.nn.inference_mode(model)
        return jax.vmap(lambda xi: model(xi, state)[0])(x)
    return jax.vmap(model)(x)


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_bcoo_export_runs_like_the_masked_model(name):
    model, state = build(name)
    x, _ = MODELS[name][1]()
    pruned = bx.MagnitudePruning(sparsity=0.995).prune(bx.Sparse(model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported = bx.to_bcoo(pruned)
    leaves = jax.tree.leaves(exported, is_leaf=lambda a: isinstance(a, jsparse.BCOO))
    bcoos = [a for a in leaves if isinstance(a, jsparse.BCOO)]
    assert bcoos and not any(isinstance(a, bx.Sparse) for a in jax.tree.leaves(exported, is_leaf=bx.Sparse.__instancecheck__))
    assert sum(int(b.nse) for b in bcoos) == sum(
        int(pruned.masks[p].sum()) for p in pruned.masks if p.endswith("weight") and not p.startswith(("conv", "embed")))
    np.testing.assert_allclose(run(exported, name, state, x), run(pruned.masked(), name, state, x), rtol=1e-4, atol=1e-5)
    text = " ".join(str(w.message) for w in caught)
    if name == "cnn":  # convolutions stay dense, and say so
        assert "`conv1.weight`: not the weight of an eqx.nn.Linear" in text
    if name == "transformer":
        assert "`embed.weight`" in text


def test_dense_export_is_warned_with_the_break_even():
    model, _ = build("mlp")
    pruned = bx.MagnitudePruning(sparsity=0.5).prune(bx.Sparse(model))
    with pytest.warns(UserWarning, match=r"more than 1%.*layers\[0\].weight \(50%\)"):
        bx.to_bcoo(pruned)


@pytest.mark.parametrize("name, n, m", [("transformer", 2, 4), ("mlp", 1, 4), ("mlp", 4, 8)])
def test_nm_export_is_compressed_and_exact(name, n, m):
    model, _ = build(name)
    x, _ = MODELS[name][1]()
    keep_dense = ("embed.weight",) if name == "transformer" else ()
    pruned = bx.Pruner(bx.Magnitude(), bx.NByM(n, m), keep_dense=keep_dense).prune(bx.Sparse(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the embedding's mask stays (dense) as it is
        exported = bx.to_bcoo(pruned, n_by_m=(n, m))
    if name == "transformer":
        w, dense = exported.block.ff1.weight, pruned.masked().block.ff1.weight
        q = exported.block.attn.query_proj.weight
        np.testing.assert_array_equal(q.todense(), pruned.masked().block.attn.query_proj.weight)
    else:
        w, dense = exported.layers[1].weight, pruned.masked().layers[1].weight
    assert isinstance(w, bx.NMMatrix) and w.values.shape == (w.shape[0], w.shape[1] * n // m)
    np.testing.assert_array_equal(w.todense(), dense)
    np.testing.assert_allclose(jax.vmap(exported)(x), jax.vmap(pruned.masked())(x), rtol=1e-4, atol=1e-5)


def test_export_errors_name_the_problem():
    model, _ = build("mlp")
    with pytest.raises(TypeError, match="No bmr_eqx.Sparse"):
        bx.to_bcoo(model)
    unstructured = bx.MagnitudePruning(sparsity=0.5).prune(bx.Sparse(model))
    with pytest.raises(ValueError, match=r"`layers\[0\].weight` is not 2:4"):
        bx.to_bcoo(unstructured, n_by_m=(2, 4))
    with pytest.raises(ValueError, match="0 < n <= m"):
        bx.to_bcoo(unstructured, n_by_m=(5, 4))
    with pytest.raises(TypeError, match="eagerly"):
        eqx.filter_jit(bx.to_bcoo)(unstructured)


def test_posterior_exports_its_mean():
    model, _ = build("mlp")
    post = bx.MagnitudePruning(sparsity=0.995).prune(bx.Posterior(bx.Sparse(model), ess=10.0))
    x, _ = MODELS["mlp"][1]()
    exported = bx.to_bcoo(post)
    assert isinstance(exported.layers[0].weight, jsparse.BCOO)
    np.testing.assert_allclose(jax.vmap(exported)(x), jax.vmap(post.mean.masked())(x), rtol=1e-4, atol=1e-5)


def test_export_of_nested_posteriors_stacks_and_kept_dense_leaves():
    class Encoder(eqx.Module):
        enc: bx.Sparse
        head: eqx.nn.Linear

        def __call__(self, x):
            return self.head(self.enc(x))

    x, _ = MODELS["mlp"][1]()
    mlp, _ = build("mlp")
    post = bx.Posterior(Encoder(bx.MagnitudePruning(sparsity=0.995).prune(bx.Sparse(mlp)),
                                eqx.nn.Linear(4, 2, key=jax.random.key(1))), ess=1.0)
    out = bx.to_bcoo(post)  # the Sparse inside the posterior's mean is found and unwrapped
    assert type(out.enc).__name__ == "MLP" and isinstance(out.enc.layers[0].weight, jsparse.BCOO)
    np.testing.assert_allclose(jax.vmap(out)(x), jax.vmap(post.mean)(x), rtol=1e-4, atol=1e-5)

    two_four = bx.MagnitudePruning(sparsity_type="2:4", keep_dense=("layers[2].weight",)).prune(bx.Sparse(mlp))
    nm = bx.to_bcoo(two_four, n_by_m=(2, 4))  # the leaf kept dense stays a dense matrix
    assert isinstance(nm.layers[0].weight, bx.NMMatrix) and isinstance(nm.layers[2].weight, jax.Array)

    scan, _ = build("scan")
    with pytest.warns(UserWarning, match=r"`layers.weight`: stacked Linear weights of shape \(3, 16, 16\)"):
        bx.to_bcoo(bx.MagnitudePruning(sparsity=0.995).prune(bx.Sparse(scan)))
