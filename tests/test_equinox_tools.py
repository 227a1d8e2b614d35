"""Standard Equinox tools keep working on Sparse and Posterior(Sparse(...)) models, and every
pruning entry point finds Sparse models wherever they sit in a pytree."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import CNN, cnn_batch, cnn_loss, mlp, scan_batch, scan_mlp, stateless_loss

import bmr_eqx as bx


def posterior_cnn(key):
    return bx.Posterior(bx.Sparse(CNN(key)), ess=100.0, weight_decay=1e-3)


@pytest.mark.parametrize("wrap", [bx.Sparse, posterior_cnn], ids=["sparse", "posterior"])
def test_make_with_state_batchnorm_dropout_and_inference_mode(wrap):
    ctor = (lambda k: bx.Sparse(CNN(k))) if wrap is bx.Sparse else posterior_cnn
    model, state = eqx.nn.make_with_state(ctor)(jax.random.key(0))
    x, y = cnn_batch()
    loss, state = cnn_loss(model, state, x, y, jax.random.key(1))  # Dropout gets key=, BatchNorm its State
    assert jnp.isfinite(loss)
    sparse = model if wrap is bx.Sparse else model.mean
    assert sorted(sparse.masks) == ["conv1.weight", "conv2.weight", "head.weight"]
    inference = eqx.nn.inference_mode(model)
    inner = (inference if wrap is bx.Sparse else inference.mean).model
    assert inner.dropout.inference and inner.bn.inference
    out, _ = inference(x[0], state)  # no key needed in inference mode
    assert out.shape == (10,)
    pruned = bx.MagnitudePruning(sparsity=0.5).prune(model)
    p_inner = (pruned if wrap is bx.Sparse else pruned.mean).model
    assert float(jnp.mean(p_inner.conv2.weight == 0)) == pytest.approx(0.5, abs=0.01)
    loss2, _ = cnn_loss(pruned, state, x, y, jax.random.key(1))
    assert jnp.isfinite(loss2)


def test_ivon_trains_a_batchnorm_cnn_with_has_aux():
    model, state = eqx.nn.make_with_state(posterior_cnn)(jax.random.key(0))
    initial = [a.copy() for a in jax.tree.leaves(state)]
    x, y = cnn_batch()
    opt = bx.ivon(0.05, b2=0.99)
    opt_state = opt.init(model)
    value_and_grad = bx.noisy_value_and_grad(cnn_loss, has_aux=True)

    @eqx.filter_jit
    def step(model, state, opt_state, key):
        k1, k2 = jax.random.split(key)
        (loss, state), grads, hess = value_and_grad(model, k1, state, x, y, k2)
        updates, opt_state = opt.update(grads, opt_state, model, hess_estimate=hess)
        return eqx.apply_updates(model, updates), state, opt_state, loss

    losses = []
    for i in range(15):
        model, state, opt_state, loss = step(model, state, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    # the BatchNorm state was threaded through the noisy steps
    assert any(not jnp.array_equal(a, b) for a, b in zip(initial, jax.tree.leaves(state)))


class Tied(eqx.Module):
    shared: eqx.nn.Shared

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        embedding = eqx.nn.Embedding(8, 4, key=k1)
        linear = eqx.nn.Linear(4, 8, use_bias=False, key=k2)
        self.shared = eqx.nn.Shared((embedding, linear), lambda p: p[1].weight, lambda p: p[0].weight)

    def __call__(self, token):
        embedding, linear = self.shared()
        return linear(embedding(token))


def test_shared_weight_tying():
    model = bx.Sparse(Tied(jax.random.key(0)))
    assert list(model.masks) == ["shared.pytree[0].weight"]  # the tied copy is no leaf: one mask
    pruned = bx.MagnitudePruning(sparsity=0.5).prune(model)
    embedding, linear = pruned.masked().shared()
    assert jnp.array_equal(linear.weight, embedding.weight)
    assert float(jnp.mean(linear.weight == 0)) == 0.5
    grads = eqx.filter_grad(lambda m: jnp.sum(m(jnp.asarray(3))))(pruned)
    g = grads.model.shared.pytree[0].weight
    assert jnp.all(jnp.where(pruned.masks["shared.pytree[0].weight"], 0.0, g) == 0)


def test_filter_vmap_ensembles_prune_each_member():
    keys = jax.random.split(jax.random.key(0), 3)
    ensemble = eqx.filter_vmap(lambda k: bx.Posterior(bx.Sparse(eqx.nn.MLP(16, 4, 32, 2, key=k)), ess=10.0))(keys)
    assert ensemble.mean.masks["layers[0].weight"].shape == (3, 32, 16)
    assert ensemble.hess["layers[0].bias"].shape == (3, 32)
    pruned = eqx.filter_vmap(bx.MagnitudePruning(sparsity=0.5).prune)(ensemble)
    masks = pruned.mean.masks["layers[1].weight"]
    assert masks.shape == (3, 32, 32) and all(int(m.sum()) == 512 for m in masks)
    assert not jnp.array_equal(masks[0], masks[1])  # members have their own masks
    x = jnp.ones((5, 16))
    out = eqx.filter_vmap(lambda m: jax.vmap(m)(x))(pruned)
    assert out.shape == (3, 5, 4)


def test_scan_over_layers_stack():
    model = bx.Sparse(scan_mlp())
    assert sorted(model.masks) == ["inp.weight", "layers.weight", "out.weight"]  # stacked biases (3, 16) are not
    pruned = bx.MagnitudePruning(sparsity=0.75).prune(model)
    assert pruned.masks["layers.weight"].shape == (3, 16, 16)
    assert float(bx.sparsity_summary(pruned)["layers.weight"]) == 0.75
    channel = bx.MagnitudePruning(sparsity=0.5, sparsity_type=bx.Channel(axis=1), keep_dense=("inp.weight", "out.weight"))
    rows = channel.prune(model).masks["layers.weight"].all(axis=2)
    assert int(rows.sum()) == 24  # half of the 3 x 16 output rows, each whole
    x, y = scan_batch()
    assert jnp.isfinite(stateless_loss(pruned, x, y))


@pytest.mark.parametrize("kind", ["sparse", "posterior"])
def test_serialise_into_filter_eval_shape_template(tmp_path, kind):
    def make(key):
        s = bx.Sparse(mlp(key))
        return s if kind == "sparse" else bx.Posterior(s, ess=50.0, hess_init=0.5)

    model = bx.MagnitudePruning(sparsity=0.6).prune(make(0))
    if kind == "posterior":
        model = eqx.tree_at(lambda p: p.hess["layers[0].weight"], model, model.hess["layers[0].weight"] * 3)
    eqx.tree_serialise_leaves(tmp_path / "m.eqx", model)
    template = eqx.filter_eval_shape(make, 1)
    loaded = eqx.tree_deserialise_leaves(tmp_path / "m.eqx", template)
    arrays = lambda t: jax.tree.leaves(eqx.filter(t, eqx.is_array))  # noqa: E731
    assert len(arrays(model)) == len(arrays(loaded)) > 0
    for a, b in zip(arrays(model), arrays(loaded)):
        assert a.dtype == b.dtype and jnp.array_equal(a, b)


class Outer(eqx.Module):
    encoder: bx.Sparse
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(jax.nn.relu(self.encoder(x)))


def outer(key=0):
    k1, k2 = jax.random.split(jax.random.key(key))
    return Outer(bx.Sparse(eqx.nn.MLP(16, 8, 32, 1, key=k1)), eqx.nn.Linear(8, 4, key=k2))


def test_nested_sparse_in_module_tuple_and_posterior():
    x, y = jax.random.normal(jax.random.key(1), (16, 16)), jnp.arange(16) % 4
    model = outer()
    grads = eqx.filter_jit(eqx.filter_grad(stateless_loss))(model, x, y)  # jitted: one compilation, not one per op
    pruned = bx.SaliencyPruning(sparsity=0.5).prune(model, grads=grads)
    summary = bx.sparsity_summary(pruned)
    assert set(summary) == {"encoder.layers[0].weight", "encoder.layers[1].weight", "total"}
    assert float(summary["total"]) == 0.5
    assert jnp.array_equal(pruned.head.weight, model.head.weight)  # outside the Sparse: untouched

    pair = (bx.Sparse(mlp(0)), bx.Sparse(mlp(1)))
    pruned_pair = bx.GlobalMagnitudePruning(sparsity=0.5).prune(pair)
    assert set(bx.sparsity_summary(pruned_pair)) == {f"[{i}].layers[{j}].weight" for i in (0, 1) for j in range(3)} | {"total"}
    assert float(bx.sparsity_summary(pruned_pair)["total"]) == 0.5

    post = bx.Posterior(outer(), ess=16.0)
    assert "encoder.layers[0].weight" in post.hess and "head.weight" in post.hess
    opt = bx.ivon(0.05)

    @eqx.filter_jit
    def ivon_step(post, opt_state):
        loss, g, h = bx.noisy_value_and_grad(stateless_loss)(post, jax.random.key(0), x, y)
        updates, opt_state = opt.update(g, opt_state, post, hess_estimate=h)
        return eqx.apply_updates(post, updates)

    post = ivon_step(post, opt.init(post))
    pruned_post = bx.BMRPruning(sparsity=0.5).prune(post)
    assert float(bx.sparsity_summary(pruned_post)["total"]) == 0.5

    step = eqx.filter_jit(lambda m, i, g: bx.MagnitudePruning(sparsity=0.5, schedule=bx.PeriodicSchedule(every=1)).update(m, i, grads=g))
    updated = step(model, jnp.asarray(0), grads)
    assert float(bx.sparsity_summary(updated)["total"]) == 0.5
    opt2 = bx.masked_updates(optax.sgd(0.1))
    u, _ = opt2.update(grads, opt2.init(updated), updated)
    after = eqx.apply_updates(updated, u)
    w = after.encoder.model.layers[0].weight
    assert jnp.all(jnp.where(after.encoder.masks["layers[0].weight"], 0.0, w) == 0)


def test_no_sparse_anywhere_is_a_clear_error():
    with pytest.raises(TypeError, match="No bmr_eqx.Sparse model found in MLP"):
        bx.MagnitudePruning(sparsity=0.5).update(mlp(), 0)
    with pytest.raises(TypeError, match="No bmr_eqx.Sparse model found"):
        bx.sparsity_summary((mlp(), mlp()))
