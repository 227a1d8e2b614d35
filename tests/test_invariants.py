"""One invariant suite over every algorithm x structure x distribution that applies, on an MLP, a
CNN with BatchNorm/State/Dropout, a small transformer and a scan-over-layers stack."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import MODELS, build, loss_for

import bmr_eqx as bx
from bmr_eqx._masks import keep_count

S = 0.75
SCHED = bx.PeriodicSchedule(every=3, start=2, end=20)

# name -> (factory(schedule) -> pruner, kind): kind says how the target is reached
ALGORITHMS = {
    "magnitude": (lambda sch: bx.MagnitudePruning(sparsity=S, schedule=sch), "uniform"),
    "magnitude-erk": (lambda sch: bx.MagnitudePruning(sparsity=S, distribution="erk", schedule=sch), "erk"),
    "magnitude-map": (lambda sch: bx.MagnitudePruning(sparsity=S, distribution={}, schedule=sch, keep_dense="HEAD"), "map"),
    "magnitude-global": (lambda sch: bx.GlobalMagnitudePruning(sparsity=S, schedule=sch), "global"),
    "magnitude-2:4": (lambda sch: bx.MagnitudePruning(sparsity_type="2:4", schedule=sch), "nm"),
    "magnitude-channel": (lambda sch: bx.MagnitudePruning(sparsity=0.5, sparsity_type="channel", schedule=sch), "channel"),
    "magnitude-block": (lambda sch: bx.MagnitudePruning(sparsity=0.5, sparsity_type=bx.Block((4, 4)), schedule=sch), "block"),
    "saliency": (lambda sch: bx.SaliencyPruning(sparsity=S, schedule=sch), "uniform"),
    "saliency-global": (lambda sch: bx.GlobalSaliencyPruning(sparsity=S, schedule=sch), "global"),
    "random": (lambda sch: bx.RandomPruning(sparsity=S, schedule=sch), "uniform"),
    "bmr": (lambda sch: bx.BMRPruning(sparsity=S, schedule=sch), "uniform"),
    "bmr-erk": (lambda sch: bx.BMRPruning(sparsity=S, distribution="erk", schedule=sch), "erk"),
    "bmr-channel": (lambda sch: bx.BMRPruning(sparsity=0.5, sparsity_type="channel", schedule=sch), "channel"),
    "bmr-global": (lambda sch: bx.GlobalBMRPruning(sparsity=S, schedule=sch), "global"),
    "bmr-adaptive": (lambda sch: bx.AdaptiveBMR(threshold=0.0, schedule=sch), "adaptive"),
    "bmr-spike-slab": (lambda sch: bx.AdaptiveBMR(method="spike_and_slab", schedule=sch), "adaptive"),
    "bmr-adaptive-channel": (lambda sch: bx.AdaptiveBMR(threshold=0.0, sparsity_type="channel", schedule=sch), "adaptive"),
    "snr": (lambda sch: bx.UncertaintyMagnitudePruning(sparsity=S, schedule=sch), "uniform"),
    "variance": (lambda sch: bx.PosteriorVariancePruning(sparsity=S, schedule=sch), "uniform"),
    "ste-bmr": (lambda sch: bx.SteBMRPruning(sparsity=S, schedule=sch), "uniform"),
}
HEADS = {"mlp": "layers[2].weight", "cnn": "head.weight", "transformer": "head.weight", "scan": "out.weight"}


def applies(alg, model_name, shapes):
    if alg == "magnitude-block":
        return all(len(s) >= 2 and s[0] % 4 == 0 and s[1] % 4 == 0 for s in shapes.values())
    if alg == "magnitude-2:4":
        return all(s[-1] % 4 == 0 for s in shapes.values())
    return True


def make_pruner(alg, model_name, schedule=bx.OneShotSchedule(0)):
    pruner = ALGORITHMS[alg][0](schedule)
    if pruner.keep_dense == ("HEAD",):
        pruner = eqx.tree_at(lambda p: p.keep_dense, pruner, (HEADS[model_name],))
    return pruner


def setup(alg, model_name, key=0):
    """The model to prune (a Sparse, or a Posterior of one with a varied curvature), its state,
    a batch, and what `update`/`prune` need (grads, key)."""
    model, state = build(model_name, key)
    pruner = make_pruner(alg, model_name)
    sparse = bx.Sparse(model, straight_through=pruner.straight_through)
    if "hess" in pruner.score.requires:
        post = bx.Posterior(sparse, ess=200.0, weight_decay=1e-2)
        leaves = list(post.hess)
        keys = jax.random.split(jax.random.key(key + 7), len(leaves))
        hess = {p: jax.random.uniform(k, post.hess[p].shape, minval=0.0, maxval=2.0) for p, k in zip(leaves, keys)}
        sparse = bx.Posterior(sparse, ess=200.0, weight_decay=1e-2, hess=hess)
    x, y = MODELS[model_name][1]()
    state_copy = None if state is None else jax.tree.unflatten(*reversed(jax.tree.flatten(state)))
    grads = _grads(model_name, sparse, state_copy, x, y)
    return sparse, state, (x, y), dict(grads=grads, key=jax.random.key(5))


@eqx.filter_jit
def _grads(model_name, model, state, x, y):
    return eqx.filter_grad(lambda m: loss_for(model_name)(m, state, x, y, jax.random.key(3))[0])(model)


# every algorithm on the MLP and the CNN; on the transformer a representative few by default (the
# rest with -m slow)
TRANSFORMER_DEFAULT = ("magnitude", "magnitude-2:4", "magnitude-channel", "bmr", "bmr-global", "bmr-adaptive-channel")
CASES = [(a, m) for m in ("mlp", "cnn") for a in ALGORITHMS] + [
    (a, "transformer") if a in TRANSFORMER_DEFAULT else pytest.param(a, "transformer", marks=pytest.mark.slow)
    for a in ALGORITHMS
]
TRAINING_CASES = [
    ("magnitude", "mlp"), ("magnitude-2:4", "mlp"), ("random", "mlp"),
    ("magnitude-channel", "cnn"), ("saliency-global", "cnn"), ("bmr-adaptive-channel", "cnn"),
    ("bmr", "transformer"), pytest.param("ste-bmr", "transformer", marks=pytest.mark.slow),
    pytest.param("magnitude-erk", "transformer", marks=pytest.mark.slow),
]


def sparse_of(model):
    return model.mean if isinstance(model, bx.Posterior) else model


def expected_keep(kind, shapes, leaf_path, pruner):
    n = math.prod(shapes[leaf_path])
    if kind == "uniform":
        return keep_count(n, S)
    if kind == "map":
        return n if leaf_path == pruner.keep_dense[0] else keep_count(n, S)
    if kind == "erk":
        return keep_count(n, bx.erk_sparsities(shapes, S)[leaf_path])
    return None


@pytest.mark.parametrize("alg,model_name", CASES)
def test_prune_invariants(alg, model_name):
    model, state, (x, y), extra = setup(alg, model_name)
    sparse = sparse_of(model)
    shapes = {p: tuple(m.shape) for p, m in sparse.masks.items()}
    if not applies(alg, model_name, shapes):
        with pytest.raises(ValueError, match="Block shape|N:M"):
            make_pruner(alg, model_name).prune(model, **extra)
        return
    pruner = make_pruner(alg, model_name)
    kind = ALGORITHMS[alg][1]
    pruned = pruner.prune(model, **extra)
    ps = sparse_of(pruned)
    leaves = {jax.tree_util.keystr(p).lstrip("."): w for p, w in jax.tree_util.tree_flatten_with_path(ps.model)[0]}
    total_kept, total = 0, 0
    for path, m in ps.masks.items():
        assert m.dtype == jnp.bool_ and m.shape == shapes[path], path
        w = leaves[path]
        assert jnp.all(jnp.where(m, 0.0, w) == 0), f"{path}: pruned weights not exactly 0"
        kept = int(m.sum())
        total_kept, total = total_kept + kept, total + m.size
        assert kept >= 1, path
        want = expected_keep(kind, shapes, path, pruner)
        if want is not None:
            assert kept == want, (path, kept, want)
        if kind == "nm":
            groups = np.asarray(m).reshape(*m.shape[:-1], m.shape[-1] // 4, 4)
            assert (groups.sum(-1) == 2).all(), path
        if kind in ("channel", "block"):
            if kind == "channel":
                per_channel = np.asarray(m).reshape(m.shape[0], -1)
                assert ((per_channel.all(1)) | (~per_channel.any(1))).all(), path
                assert per_channel.all(1).sum() == keep_count(m.shape[0], 0.5), path
            else:
                blocks = np.asarray(m).reshape(m.shape[0] // 4, 4, m.shape[1] // 4, 4, -1)
                assert ((blocks.all((1, 3, 4))) | (~blocks.any((1, 3, 4)))).all(), path
    if kind == "global":
        assert total_kept == keep_count(total, S)
    if kind == "adaptive":  # the evidence decides; never below one group per leaf
        assert 0 < total_kept <= total


def train_step_for(alg, model_name, pruner, traces):
    loss = loss_for(model_name)
    post = "hess" in pruner.score.requires
    opt = bx.ivon(1e-2) if post else bx.masked_updates(optax.adam(1e-2))
    value_and_grad = bx.noisy_value_and_grad(lambda m, s, x, y, k: loss(m, s, x, y, k), has_aux=True)

    @eqx.filter_jit
    def step(model, state, opt_state, batch, i, key):
        traces.append(1)
        x, y = batch
        k1, k2, k3 = jax.random.split(key, 3)
        if post:
            (value, state), grads, hess = value_and_grad(model, k1, state, x, y, k2)
            updates, opt_state = opt.update(grads, opt_state, model, hess_estimate=hess)
        else:
            (value, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, state, x, y, k2)
            updates, opt_state = opt.update(grads, opt_state, model)
        model = eqx.apply_updates(model, updates)
        model = pruner.update(model, i, grads=grads, key=k3)
        return model, state, opt_state

    return step, opt


@pytest.mark.parametrize("alg,model_name", TRAINING_CASES)
def test_training_invariants(alg, model_name):
    """30 jitted steps with a traced step: one compilation; after every step the stored pruned
    weights are exactly 0 (non-straight-through); monotone pruners never revive a weight."""
    model, state, batch, _ = setup(alg, model_name)
    shapes = {p: tuple(m.shape) for p, m in sparse_of(model).masks.items()}
    if not applies(alg, model_name, shapes):
        pytest.skip("structure does not tile this model")
    pruner = make_pruner(alg, model_name, SCHED)
    traces = []
    step, opt = train_step_for(alg, model_name, pruner, traces)
    opt_state = opt.init(model)
    prev = None
    for i in range(30):
        model, state, opt_state = step(model, state, opt_state, batch, jnp.asarray(i), jax.random.key(i))
        sp = sparse_of(model)
        masks = dict(sp.masks)
        if not sp.straight_through:
            flat = {jax.tree_util.keystr(p).lstrip("."): w for p, w in jax.tree_util.tree_flatten_with_path(sp.model)[0]}
            changed = prev is not None and any(bool(jnp.any(masks[p] != prev[p])) for p in masks)
            if not changed:  # the optimizer step after a mask change zeroes the newly pruned weights
                for p, m in masks.items():
                    assert jnp.all(jnp.where(m, 0.0, flat[p]) == 0), (i, p)
        if pruner.monotone and prev is not None:
            for p, m in masks.items():
                assert not bool(jnp.any(m & ~prev[p])), f"{p} revived at step {i}"
        prev = masks
    assert len(traces) == 1
    total = bx.sparsity_summary(model)["total"]
    assert float(total) > 0.2
