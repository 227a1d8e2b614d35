"""Regression tests for the defects that real models hit in the first core (issue "Core v2")."""

import inspect
import pathlib
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import CNN, cnn_batch, cnn_loss, mlp, mlp_batch, scan_mlp, stateless_loss

import bmr_eqx as bx
from bmr_eqx._masks import _keep_top_keys_sort, _keep_top_keys_streaming, _order_key, keep_count

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_default_rule_prunes_weights_not_conv_or_stacked_biases():
    model = bx.Sparse(CNN(jax.random.key(0)))
    assert model.model.conv1.bias.shape == (8, 1, 1)  # ndim 3, yet a bias
    assert sorted(model.masks) == ["conv1.weight", "conv2.weight", "head.weight"]
    stack = bx.Sparse(scan_mlp())
    assert stack.model.layers.bias.shape == (3, 16)
    assert "layers.bias" not in stack.masks and "layers.weight" in stack.masks
    gru = bx.Sparse(eqx.nn.GRUCell(4, 8, key=jax.random.key(0)))
    assert sorted(gru.masks) == ["weight_hh", "weight_ih"]
    norms = bx.Sparse((eqx.filter_vmap(lambda _: eqx.nn.LayerNorm(4))(jnp.arange(3)), eqx.nn.Linear(4, 4, key=jax.random.key(0))))
    assert list(norms.masks) == ["[1].weight"]  # a stacked LayerNorm scale (3, 4) is no weight


def cnn_posterior(mean_scale):
    model, _ = eqx.nn.make_with_state(lambda k: bx.Posterior(bx.Sparse(CNN(k)), ess=10.0, weight_decay=1.0))(jax.random.key(0))
    small = jax.tree.map(lambda w: w * mean_scale if eqx.is_inexact_array(w) else w, model.mean)
    return bx.Posterior(small, ess=10.0, weight_decay=1.0, hess={k: jnp.ones_like(h) for k, h in model.hess.items()})


def test_adaptive_channel_bmr_keeps_the_head_and_never_empties_a_layer():
    post = cnn_posterior(1e-3)  # every weight is near 0: the evidence wants almost everything gone
    pruned = bx.AdaptiveBMR(threshold=0.0, sparsity_type="channel").prune(post)
    for path, m in pruned.mean.masks.items():
        assert bool(m.reshape(m.shape[0], -1).all(1).any()), f"{path} lost all its outputs"
    kept_head = bx.AdaptiveBMR(threshold=0.0, sparsity_type="channel", keep_dense=("head.weight",)).prune(post)
    assert bool(kept_head.mean.masks["head.weight"].all())
    assert float(bx.sparsity_summary(kept_head)["conv2.weight"]) > 0.5
    with pytest.raises(ValueError, match=r"keep_dense names \['classifier.weight'\]"):
        bx.AdaptiveBMR(keep_dense="classifier.weight").prune(post)


def one_ivon_step(opt, post, x, y):
    state = opt.init(post)
    loss, grads, hess = bx.noisy_value_and_grad(stateless_loss)(post, jax.random.key(0), x, y)
    updates, _ = opt.update(grads, state, post, hess_estimate=hess)
    return eqx.apply_updates(post, updates)


def test_transformations_chained_with_ivon_leave_the_curvature_estimate_alone():
    post = bx.Posterior(bx.Sparse(mlp()), ess=32.0, weight_decay=1e-3, hess_init=0.1)
    x, y = mlp_batch()
    step = eqx.filter_jit(one_ivon_step)  # compiled whole, not op by op
    plain = step(bx.ivon(0.1, b2=0.9), post, x, y)
    clipped = step(optax.chain(optax.clip_by_global_norm(1e-3), bx.ivon(0.1, b2=0.9)), post, x, y)
    after = step(optax.chain(bx.ivon(0.1, b2=0.9), optax.apply_if_finite(optax.identity(), 3)), post, x, y)
    for path in post.hess:
        np.testing.assert_array_equal(plain.hess[path], clipped.hess[path])
        np.testing.assert_array_equal(plain.hess[path], after.hess[path])
        assert not jnp.array_equal(plain.hess[path], post.hess[path])
    # the clip did act on the gradient: the mean moved less
    move = lambda p: sum(float(jnp.abs(a - b).sum()) for a, b in zip(  # noqa: E731
        jax.tree.leaves(bx.trainable(p.mean)), jax.tree.leaves(bx.trainable(post.mean))))
    assert move(clipped) < 0.5 * move(plain)


def test_ivon_without_the_curvature_estimate_is_a_clear_error():
    post = bx.Posterior(bx.Sparse(mlp()), ess=32.0)
    opt = bx.ivon(0.1)
    _, grads, _ = eqx.filter_jit(bx.noisy_value_and_grad(stateless_loss))(post, jax.random.key(0), *mlp_batch())
    with pytest.raises(TypeError, match="hess_estimate="):
        opt.update(grads, opt.init(post), post)


def test_bfloat16_posterior_stays_bfloat16():
    bf16 = jax.tree.map(lambda w: w.astype(jnp.bfloat16) if eqx.is_inexact_array(w) else w, mlp())
    post = bx.Posterior(bx.Sparse(bf16), ess=32.0, weight_decay=1e-3)
    x, y = mlp_batch()
    step = eqx.filter_jit(lambda p: one_ivon_step(bx.ivon(optax.cosine_decay_schedule(0.1, 10)), p, x.astype(jnp.bfloat16), y))
    new = step(post)
    assert {a.dtype for a in jax.tree.leaves(bx.trainable(new))} == {jnp.dtype(jnp.bfloat16)}
    assert {h.dtype for h in new.hess.values()} == {jnp.dtype(jnp.float32)}  # 1 − b2 would round away in bf16
    assert float(jnp.mean(new.hess["layers[1].weight"] != post.hess["layers[1].weight"])) > 0.9
    assert jnp.all(jnp.isfinite(new.mean.model.layers[0].weight.astype(jnp.float32)))


def test_masked_updates_passes_extra_arguments_on():
    model = bx.MagnitudePruning(sparsity=0.5).prune(bx.Sparse(mlp()))
    x, y = mlp_batch()
    opt = bx.masked_updates(optax.chain(optax.adam(1e-2), optax.contrib.reduce_on_plateau(patience=1, factor=0.5)))
    state = opt.init(model)
    for _ in range(4):
        loss, grads = eqx.filter_value_and_grad(stateless_loss)(model, x, y)
        updates, state = opt.update(grads, state, model, value=jnp.asarray(5.0))  # a plateau
        model = eqx.apply_updates(model, updates)
    scale = jax.tree.leaves(state.inner)[-4:]
    assert any(float(s) < 1.0 for s in scale if jnp.ndim(s) == 0 and jnp.issubdtype(jnp.result_type(s), jnp.floating))
    w, m = model.model.layers[0].weight, model.masks["layers[0].weight"]
    assert jnp.all(jnp.where(m, 0.0, w) == 0)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), jnp.asarray(0.5), 0.5, np.int64(0)])
def test_numpy_and_jax_scalars_are_sparsities(value):
    pruned = bx.MagnitudePruning(sparsity=value).prune(bx.Sparse(mlp()))
    assert float(bx.sparsity_summary(pruned)["total"]) == pytest.approx(float(value), abs=1e-3)


@pytest.mark.parametrize("value", [1.0, -0.1, True, jnp.ones(2) * 0.5, "0.5"])
def test_bad_sparsities_are_rejected(value):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        bx.MagnitudePruning(sparsity=value)


def test_sparsity_with_nm_is_rejected_not_ignored():
    with pytest.raises(ValueError, match="conflicts with N:M sparsity 2:4"):
        bx.MagnitudePruning(sparsity=0.9, sparsity_type="2:4")
    assert float(bx.sparsity_summary(bx.MagnitudePruning(sparsity_type="2:4").prune(bx.Sparse(mlp())))["total"]) == 0.5


@pytest.mark.parametrize("sparsity", [-0.5, 0.0, 0.3, 0.99, 1.0, 1.7])
def test_traced_sparsity_is_clamped_the_same_on_every_backend_path(sparsity):
    scores = jax.random.normal(jax.random.key(0), (257,))
    keys = _order_key(scores)
    k = jnp.asarray(keep_count(scores.size, jnp.float32(sparsity)), jnp.int32)
    cpu, sort = _keep_top_keys_streaming(keys, k), _keep_top_keys_sort(keys, k)
    np.testing.assert_array_equal(cpu, sort)
    expect = min(257, max(1, round(257 * (1 - sparsity))))
    assert int(cpu.sum()) == expect
    np.testing.assert_array_equal(jax.jit(bx.topk_mask)(scores, jnp.float32(sparsity)), cpu)


def test_user_facing_text_never_points_outside_the_project():
    files = [*ROOT.joinpath("bmr_eqx").glob("*.py"), ROOT / "README.md", *ROOT.joinpath("docs").rglob("*.md")]
    assert len(files) > 10
    for f in files:
        text = f.read_text()
        assert not re.search(r"BMR\.md|DESIGN\.md|shared/", text), f


def _public():
    return {n: getattr(bx, n) for n in dir(bx) if not n.startswith("_") and (inspect.isfunction(getattr(bx, n)) or inspect.isclass(getattr(bx, n)))}


@pytest.mark.parametrize("name", sorted(_public()))
def test_every_public_name_is_documented(name):
    obj = _public()[name]
    doc = inspect.getdoc(obj) or ""
    assert len(doc) > 20, name
    if inspect.isfunction(obj) and inspect.signature(obj).parameters:
        assert "**Arguments:**" in doc and "**Returns:**" in doc, name
    if inspect.isclass(obj) and issubclass(obj, eqx.Module) and not inspect.isabstract(obj) and obj.__init__ is not object.__init__:
        params = [p for p in inspect.signature(obj).parameters if p != "self"]
        if params:
            assert "**Arguments:**" in doc or "**Fields:**" in doc, name


def test_cnn_batchnorm_losses_run_through_sparse():
    model, state = eqx.nn.make_with_state(lambda k: bx.Sparse(CNN(k)))(jax.random.key(0))
    loss, _ = cnn_loss(model, state, *cnn_batch(), jax.random.key(0))
    assert jnp.isfinite(loss)


def test_channel_along_inputs_does_not_pair_the_output_bias():
    model = bx.Sparse(eqx.nn.MLP(6, 6, 6, 1, key=jax.random.key(0)), filter_spec=eqx.is_inexact_array)
    columns = bx.MagnitudePruning(sparsity=0.5, sparsity_type=bx.Channel(axis=1))
    with pytest.raises(ValueError, match=r"Channel axis 1 is out of range for `layers\[0\].bias`.*keep_dense"):
        columns.prune(model)  # before the fix the bias silently shared the input columns' fate
    biases = ("layers[0].bias", "layers[1].bias")
    pruned = bx.MagnitudePruning(sparsity=0.5, sparsity_type=bx.Channel(axis=1), keep_dense=biases).prune(model)
    assert int(pruned.masks["layers[0].weight"].all(axis=0).sum()) == 3  # half of the input columns
    assert bool(pruned.masks["layers[0].bias"].all())
    rows = bx.MagnitudePruning(sparsity=0.5, sparsity_type="channel").prune(model)
    np.testing.assert_array_equal(rows.masks["layers[0].bias"], rows.masks["layers[0].weight"].all(axis=1))


def test_clear_errors_for_traced_erk_unknown_requirements_and_missing_estimates():
    model = bx.Sparse(mlp())
    with pytest.raises(ValueError, match="erk.*concrete sparsity"):
        eqx.filter_jit(lambda s: bx.Pruner(bx.Magnitude(), bx.TopK(s, "erk")).prune(model))(jnp.asarray(0.5))

    class Typo(bx.AbstractScore):
        requires = ("grads",)

        def __call__(self, leaf):
            return leaf.grad

    with pytest.raises(ValueError, match=r"requires names \['grads'\]"):
        bx.Pruner(Typo(), bx.TopK(0.5))
    post = bx.Posterior(model, ess=10.0)
    opt = bx.ivon(0.1)
    _, g, h = bx.noisy_value_and_grad(stateless_loss)(post, jax.random.key(0), *mlp_batch())
    del h["layers[0].weight"]
    with pytest.raises(ValueError, match=r"hess_estimate has no entry for \['layers\[0\].weight'\]"):
        opt.update(g, opt.init(post), post, hess_estimate=h)
    bad = eqx.tree_at(lambda t: t[1].masks, (mlp(), bx.Sparse(mlp())), {"w": jnp.ones(3, bool)})
    with pytest.raises(ValueError, match=r"`w` \(in the Sparse at `\[1\]`\)"):
        bx.MagnitudePruning(sparsity=0.5).prune(bad)


def test_untouched_leaves_keep_their_masks():
    model = bx.MagnitudePruning(sparsity=0.5).prune(bx.Sparse(mlp()))
    before = model.masks["layers[2].weight"]
    assert not bool(before.all())
    for pruner in (
        bx.MagnitudePruning(sparsity=0.8, keep_dense="layers[2].weight"),
        bx.MagnitudePruning(sparsity=0.8, distribution={"layers[2].weight": None}),
    ):
        again = pruner.prune(model)
        np.testing.assert_array_equal(again.masks["layers[2].weight"], before)  # not revived
        assert float(bx.sparsity_summary(again)["layers[0].weight"]) == pytest.approx(0.8, abs=1 / 512)
    same = bx.NoPruning().prune(model)
    for path, m in model.masks.items():
        np.testing.assert_array_equal(same.masks[path], m)


def test_adaptive_block_bmr_thresholds_the_group_delta_f():
    model = bx.Sparse(eqx.nn.Linear(8, 8, key=jax.random.key(0)))
    model = eqx.tree_at(lambda m: m.model.weight, model, model.model.weight * jnp.where(jnp.arange(8) < 4, 0.05, 1.0)[:, None])
    keys = jax.random.split(jax.random.key(1), 2)
    hess = {"weight": jax.random.uniform(keys[0], (8, 8), minval=0.1, maxval=3.0), "bias": jnp.ones(8)}
    post = bx.Posterior(model, ess=100.0, weight_decay=0.1, hess=hess)
    threshold = 2.0
    pruned = bx.AdaptiveBMR(threshold=threshold, sparsity_type=bx.Block((2, 2))).prune(post)
    df = bx.delta_f_spike(model.model.weight, hess["weight"], 100.0, 0.1)
    group = df.reshape(4, 2, 4, 2).sum(axis=(1, 3))
    keep = group <= threshold
    keep = keep.at[jnp.unravel_index(jnp.argmin(group), group.shape)].set(True)
    np.testing.assert_array_equal(pruned.mean.masks["weight"], jnp.repeat(jnp.repeat(keep, 2, 0), 2, 1))
    assert 0 < int(keep.sum()) < 16
    mean_rule = df.reshape(4, 2, 4, 2).mean(axis=(1, 3)) <= threshold  # what pooling by the mean would keep
    assert not jnp.array_equal(mean_rule, keep)
