"""`bmr_eqx.compat`: JaxPruner's, BMRPruner's and blrax's interfaces over `bmr_eqx`.

Expected values come from NumPy (tests/compat_helpers.py) or are worked out by hand in the
comments, never from the code under test. Arrays are tiny and jit compiles few.
"""

import dataclasses
import functools
import inspect
import math
import os
import sys
import typing
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from compat_helpers import np_delta_f, np_erk, np_global_topk, np_ivon_step, np_sigma, np_topk, unpack

import bmr_eqx.compat as jaxpruner
from bmr_eqx.compat import (
    api,
    base_updater,
    blrax,
    mask_calculator,
    sparsity_distributions,
    sparsity_schedules,
    sparsity_types,
    utils,
)
from bmr_eqx.compat.algorithms import global_pruners, pruners, sparse_trainers, ste

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

# ------------------------------------------------------------------------------------------------
# Shared tiny parameters: distinct magnitudes, so every top-k below has no ties.

W1 = np.array([[0.3, -1.2, 0.05, 2.0], [-0.7, 0.1, 1.5, -0.25], [0.9, -0.4, 0.6, 0.02]], np.float32)
B1 = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
W2 = np.array([[0.5, -0.15], [1.1, 0.08], [-0.35, 0.7], [0.2, -1.4]], np.float32)
G1 = np.array([[0.2, 0.01, -0.9, 0.03], [0.5, -1.3, 0.04, 0.6], [-0.07, 0.8, 0.3, -1.1]], np.float32)
GB = np.array([0.4, -0.3, 0.2, 0.1], np.float32)
G2 = np.array([[-0.6, 0.9], [0.02, -0.45], [1.7, 0.11], [-0.08, 0.35]], np.float32)


def params():
    return {"w1": jnp.asarray(W1), "b1": jnp.asarray(B1), "w2": jnp.asarray(W2)}


def grads():
    return {"w1": jnp.asarray(G1), "b1": jnp.asarray(GB), "w2": jnp.asarray(G2)}


def is_none(x):
    return x is None


def np_tree(tree):
    return jax.tree.map(lambda x: None if x is None else np.asarray(x), tree, is_leaf=is_none)


def assert_masks(actual, expected):
    """`actual` (a dict of uint8 masks or None) equals `expected` (dict of 0/1 arrays or None)."""
    assert set(actual) == set(expected)
    for k, e in expected.items():
        if e is None:
            assert actual[k] is None, k
        else:
            assert actual[k].dtype == jnp.uint8, k
            np.testing.assert_array_equal(np.asarray(actual[k]), e, err_msg=k)


def jitted(fn, *args):
    """`fn(*args)` under `jax.jit`: one compile instead of the many small ones of eager dispatch."""
    return jax.jit(fn)(*args)


def mlp_params(key=0, in_size=3, out_size=2, width=4, depth=1):
    """The trainable part of a tiny Equinox MLP; its `activation` fields are None leaves."""
    model = eqx.nn.MLP(in_size, out_size, width, depth, key=jax.random.key(key))
    return eqx.filter(model, eqx.is_array)


# ================================================================================================
# 1. JaxPruner's public API


ALGORITHM_CLASSES = {
    "no_prune": jaxpruner.NoPruning,
    "magnitude": jaxpruner.MagnitudePruning,
    "random": jaxpruner.RandomPruning,
    "saliency": jaxpruner.SaliencyPruning,
    "magnitude_ste": jaxpruner.SteMagnitudePruning,
    "random_ste": jaxpruner.SteRandomPruning,
    "global_magnitude": jaxpruner.GlobalMagnitudePruning,
    "global_saliency": jaxpruner.GlobalSaliencyPruning,
    "static_sparse": jaxpruner.StaticRandomSparse,
    "rigl": jaxpruner.RigL,
    "set": jaxpruner.SET,
    "bmr": jaxpruner.BMRPruning,
    "adaptive_bmr": jaxpruner.AdaptiveBMR,
    "bmr_ste": jaxpruner.SteBMRPruning,
    "global_bmr": jaxpruner.BayesianGlobalPruning,
}

PUBLIC_NAMES = [
    # JaxPruner's __init__
    "ALGORITHM_REGISTRY", "all_algorithm_names", "create_updater_from_config", "register_algorithm", "apply_mask",
    "BaseUpdater", "NoPruning", "SparseState", "NoUpdateSchedule", "OneShotSchedule", "PeriodicSchedule",
    "PolynomialSchedule", "SparsityType", "summarize_intersection", "summarize_sparsity",
    "GlobalMagnitudePruning", "GlobalSaliencyPruning", "MagnitudePruning", "RandomPruning", "SaliencyPruning",
    "RigL", "SET", "StaticRandomSparse", "SteMagnitudePruning", "SteRandomPruning",
    # BMRPruner's additions, blrax's IVON
    "BMRPruning", "AdaptiveBMR", "UncertaintyMagnitudePruning", "PosteriorVariancePruning",
    "BayesianGlobalPruning", "GlobalBMRPruning", "SteBMRPruning", "ivon", "noisy_value_and_grad",
    # submodules
    "api", "base_updater", "blrax", "mask_calculator", "sparsity_distributions", "sparsity_schedules",
    "sparsity_types", "utils", "algorithms",
]


def test_public_names_and_submodules():
    missing = [n for n in PUBLIC_NAMES if not hasattr(jaxpruner, n)]
    assert not missing
    for module in (api, base_updater, mask_calculator, sparsity_distributions, sparsity_schedules,
                   sparsity_types, utils, blrax):
        assert getattr(jaxpruner, module.__name__.rsplit(".", 1)[1]) is module
    assert pruners.MagnitudePruning is jaxpruner.MagnitudePruning
    assert global_pruners.GlobalMagnitudePruning is jaxpruner.GlobalMagnitudePruning
    assert ste.SteMagnitudePruning is jaxpruner.SteMagnitudePruning
    assert sparse_trainers.RigL is jaxpruner.RigL
    assert jaxpruner.apply_mask is base_updater.apply_mask
    assert jaxpruner.summarize_sparsity is utils.summarize_sparsity
    assert jaxpruner.ivon is blrax.ivon and jaxpruner.noisy_value_and_grad is blrax.noisy_value_and_grad
    for name in jaxpruner.algorithms.__all__:
        assert getattr(jaxpruner, name) is getattr(jaxpruner.algorithms, name)
    # SparseState: JaxPruner's field order and defaults
    assert jaxpruner.SparseState._fields == ("masks", "inner_state", "target_sparsities", "count")
    assert jaxpruner.SparseState(masks=1) == (1, None, None, None)


def test_registry_and_register_algorithm():
    assert dict(jaxpruner.ALGORITHM_REGISTRY) == ALGORITHM_CLASSES
    assert tuple(jaxpruner.all_algorithm_names()) == tuple(ALGORITHM_CLASSES)
    assert jaxpruner.ALGORITHM_REGISTRY is api.ALGORITHM_REGISTRY

    @dataclasses.dataclass
    class HalfMagnitude(jaxpruner.MagnitudePruning):
        extra: int = 3

    jaxpruner.register_algorithm("half_magnitude", HalfMagnitude)
    try:
        assert "half_magnitude" in jaxpruner.all_algorithm_names()
        upd = jaxpruner.create_updater_from_config(
            {"algorithm": "half_magnitude", "dist_type": "uniform", "sparsity": 0.5, "extra": 7}
        )
        assert type(upd) is HalfMagnitude and upd.extra == 7
        assert upd.sparsity_distribution_fn(params()) == {"w1": 0.5, "b1": None, "w2": 0.5}
    finally:
        jaxpruner.ALGORITHM_REGISTRY.pop("half_magnitude")


def make_config(kind, **kwargs):
    return ml_collections.ConfigDict(kwargs) if kind == "configdict" else dict(kwargs)


CONFIG_KINDS = ["configdict", "dict"]


@pytest.mark.parametrize("kind", CONFIG_KINDS)
@pytest.mark.parametrize("name", list(ALGORITHM_CLASSES))
def test_create_updater_every_algorithm(kind, name):
    config = make_config(kind, algorithm=name, dist_type="uniform", sparsity=0.5, update_freq=2,
                         update_start_step=0, update_end_step=10)
    upd = jaxpruner.create_updater_from_config(config)
    assert type(upd) is ALGORITHM_CLASSES[name]
    assert config["algorithm"] == name and config["sparsity"] == 0.5  # the config is not consumed
    if name == "no_prune":
        return
    assert upd.scheduler == jaxpruner.PolynomialSchedule(update_freq=2, update_start_step=0, update_end_step=10)
    if name.startswith("global_"):
        assert upd.sparsity == 0.5
    else:
        assert upd.sparsity_distribution_fn(params()) == {"w1": 0.5, "b1": None, "w2": 0.5}
    if name in ("rigl", "set"):
        # drop_fraction defaults to 0.1, cosine-decayed to 0 at update_end_step
        assert float(upd.drop_fraction_fn(0)) == pytest.approx(0.1)
        assert float(upd.drop_fraction_fn(5)) == pytest.approx(0.05)
        assert float(upd.drop_fraction_fn(10)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("kind", CONFIG_KINDS)
def test_create_updater_distributions_and_fields(kind):
    p = params()
    erk = jaxpruner.create_updater_from_config(make_config(kind, algorithm="magnitude", dist_type="erk", sparsity=0.5))
    # ERK by hand: raw densities 7/12 and 6/8, kept 6 + 4 = 10 -> eps = 10/13
    assert erk.sparsity_distribution_fn(p) == pytest.approx(
        {"w1": 1 - 7 / 12 * 10 / 13, "b1": None, "w2": 1 - 6 / 8 * 10 / 13}
    )
    filtered = jaxpruner.create_updater_from_config(
        make_config(kind, algorithm="magnitude", dist_type="uniform", sparsity=0.5, filter_fn=lambda k, x: k[-1] == "w2")
    )
    assert filtered.sparsity_distribution_fn(p) == {"w1": None, "b1": None, "w2": 0.5}
    for dist, w2 in (("uniform", 0.5), ("erk", 0.5)):  # erk: w2 alone in the budget keeps 8 - 4
        custom = jaxpruner.create_updater_from_config(
            make_config(kind, algorithm="magnitude", dist_type=dist, sparsity=0.5, custom_sparsity_map={("w1",): 0.25})
        )
        assert custom.sparsity_distribution_fn(p) == pytest.approx({"w1": 0.25, "b1": None, "w2": w2})
    fields = jaxpruner.create_updater_from_config(
        make_config(kind, algorithm="static_sparse", dist_type="uniform", sparsity=0.5, skip_gradients=True,
                    use_packed_masks=True, is_sparse_gradients=False)
    )
    assert fields.skip_gradients and fields.use_packed_masks and not fields.is_sparse_gradients
    glob = jaxpruner.create_updater_from_config(
        make_config(kind, algorithm="global_magnitude", dist_type="erk", sparsity=0.7, use_normalization=False,
                    filter_fn=lambda k, x: k[-1] == "w1")
    )
    assert glob.sparsity == 0.7 and not glob.use_normalization and glob.filter_fn(("w1",), None)
    set_ = jaxpruner.create_updater_from_config(
        make_config(kind, algorithm="set", dist_type="uniform", sparsity=0.5, drop_fraction=0.3, update_start_step=0,
                    update_end_step=8, update_freq=2)
    )
    assert float(set_.drop_fraction_fn(0)) == pytest.approx(0.3) and float(set_.drop_fraction_fn(4)) == pytest.approx(0.15)
    adaptive = jaxpruner.create_updater_from_config(
        make_config(kind, algorithm="adaptive_bmr", dist_type="uniform", sparsity=0.5, threshold=2.0)
    )
    assert adaptive.threshold == 2.0


@pytest.mark.parametrize("kind", CONFIG_KINDS)
@pytest.mark.parametrize(
    "schedule_keys,expected",
    [
        ({}, jaxpruner.NoUpdateSchedule()),
        ({"update_start_step": None, "update_end_step": 7}, jaxpruner.NoUpdateSchedule()),
        ({"update_start_step": 5, "update_end_step": 5, "update_freq": 3}, jaxpruner.OneShotSchedule(target_step=5)),
        ({"update_start_step": 2, "update_end_step": 8, "update_freq": 3},
         jaxpruner.PolynomialSchedule(update_freq=3, update_start_step=2, update_end_step=8)),
    ],
    ids=["absent", "none", "oneshot", "polynomial"],
)
def test_create_updater_schedules(kind, schedule_keys, expected):
    upd = jaxpruner.create_updater_from_config(
        make_config(kind, algorithm="magnitude", dist_type="uniform", sparsity=0.5, **schedule_keys)
    )
    assert upd.scheduler == expected and type(upd.scheduler) is type(expected)


# N:M (2 of every 4 along the last axis), 2x2 blocks ranked by mean |w|, rows ranked by sum |w|.
NM_W = np.array([[0.1, -0.9, 0.5, 0.3], [2.0, 1.0, -3.0, 0.5]], np.float32)
NM_MASK = np.array([[0, 1, 1, 0], [1, 0, 1, 0]])
BLOCK_W = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 3, 3], [0.5, 0, 3, 3]], np.float32) * np.array([1, -1, 1, -1])
BLOCK_MASK = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])  # block means 1, 0, .125, 3
CHANNEL_W = np.array([[1.0, -1.0, 1.0], [0.1, 0.2, -0.3], [-2.0, 0.0, 0.5]], np.float32)
CHANNEL_MASK = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 1]])  # row sums 3, .6, 2.5: keep round(3·(1−.3)) = 2


@pytest.mark.parametrize("kind", CONFIG_KINDS)
@pytest.mark.parametrize(
    "stype,expected_type,w,sparsity,expected_mask",
    [
        ("nm_2,4", sparsity_types.NByM(2, 4), NM_W, 0.5, NM_MASK),
        ("block_2,2", sparsity_types.Block(block_shape=(2, 2)), BLOCK_W, 0.5, BLOCK_MASK),
        ("channel_0", sparsity_types.Channel(axis=0), CHANNEL_W, 0.3, CHANNEL_MASK),
    ],
    ids=["nm", "block", "channel"],
)
def test_create_updater_sparsity_types(kind, stype, expected_type, w, sparsity, expected_mask):
    upd = jaxpruner.create_updater_from_config(
        make_config(kind, algorithm="magnitude", dist_type="uniform", sparsity=sparsity, sparsity_type=stype)
    )
    assert upd.sparsity_type == expected_type and type(upd.sparsity_type) is type(expected_type)
    if kind == "configdict":
        return
    pruned, masks = jitted(upd.instant_sparsify, {"w": jnp.asarray(w)})
    assert_masks(masks, {"w": expected_mask})
    np.testing.assert_array_equal(np.asarray(pruned["w"]), w * expected_mask)


@pytest.mark.parametrize("kind", CONFIG_KINDS)
@pytest.mark.parametrize(
    "keys,match",
    [
        ({"algorithm": "magnitude", "dist_type": "gaussian"}, "dist_type"),
        ({"algorithm": "magnitude"}, "dist_type"),
        ({"algorithm": "prune_everything", "dist_type": "uniform"}, "not supported"),
        ({"algorithm": "magnitude", "dist_type": "uniform", "sparsity_type": "diagonal_3"}, "Sparsity type"),
        ({"algorithm": "magnitude", "dist_type": "uniform", "sparsity_type": "nm_2"}, "Sparsity type"),
        ({"algorithm": "magnitude", "dist_type": "uniform", "sparsity_type": "block_a,b"}, "Sparsity type"),
        ({"algorithm": "magnitude", "dist_type": "uniform", "not_a_field": 1}, "not_a_field"),
        ({"algorithm": "rigl", "dist_type": "uniform", "update_start_step": 0}, "update_end_step"),
        ({"algorithm": "magnitude", "dist_type": "uniform", "update_start_step": 0, "update_end_step": 9}, "update_freq"),
    ],
    ids=["dist", "no-dist", "algorithm", "stype", "nm-short", "block-bad", "field", "rigl-end", "freq"],
)
def test_create_updater_errors(kind, keys, match):
    with pytest.raises(ValueError, match=match):
        jaxpruner.create_updater_from_config(make_config(kind, sparsity=0.5, **keys))


def test_apply_mask():
    p = jnp.arange(1.0, 13.0).reshape(3, 4) * jnp.array([1.0, -1.0, 1.0, -1.0])
    m = (np.abs(W1) > 0.5).astype(np.uint8)  # 6 ones
    expected = np.asarray(p) * m
    np.testing.assert_array_equal(np.asarray(jaxpruner.apply_mask(p, jnp.asarray(m))), expected)
    np.testing.assert_array_equal(np.asarray(jaxpruner.apply_mask(p, jnp.packbits(m), True)), expected)
    np.testing.assert_array_equal(np.asarray(jaxpruner.apply_mask(p, None)), np.asarray(p))


def test_schedules():
    targets = {"a": 0.8, "b": None, "c": {"d": 0.4}}
    none = jaxpruner.NoUpdateSchedule()
    assert none.get_sparsity_at_step(targets, 3) == targets
    assert not any(bool(none.is_mask_update_iter(s)) for s in range(5))

    one = jaxpruner.OneShotSchedule(target_step=3)
    assert [s for s in range(8) if one.is_mask_update_iter(s)] == [3]
    assert one.get_sparsity_at_step(targets, 0) == targets

    # JaxPruner: update iff step % freq == 0 and start <= step <= end
    periodic = jaxpruner.PeriodicSchedule(update_freq=3, update_start_step=4, update_end_step=12)
    assert [s for s in range(20) if periodic.is_mask_update_iter(s)] == [6, 9, 12]
    endless = jaxpruner.PeriodicSchedule(update_freq=5, update_start_step=0, update_end_step=None)
    assert [s for s in range(22) if endless.is_mask_update_iter(s)] == [0, 5, 10, 15, 20]
    assert not periodic.is_mask_update_iter(None)

    poly = jaxpruner.PolynomialSchedule(update_freq=2, update_start_step=2, update_end_step=10)
    assert [s for s in range(14) if poly.is_mask_update_iter(s)] == [2, 4, 6, 8, 10]
    for step in range(13):
        progress = min(max(step + 1 - 2, 0), 8) / 8
        coeff = 1 - (1 - progress) ** 3
        got = poly.get_sparsity_at_step(targets, step)
        assert got["b"] is None
        assert float(got["a"]) == pytest.approx(0.8 * coeff, abs=1e-6)
        assert float(got["c"]["d"]) == pytest.approx(0.4 * coeff, abs=1e-6)
    linear = jaxpruner.PolynomialSchedule(update_freq=1, update_start_step=0, update_end_step=4, power=1)
    assert float(linear.get_sparsity_at_step({"a": 0.8}, 1)["a"]) == pytest.approx(0.8 * 2 / 4)
    with pytest.raises(ValueError, match="end_step"):
        jaxpruner.PolynomialSchedule(update_freq=1, update_start_step=5, update_end_step=2).get_sparsity_at_step(
            targets, 0
        )


def test_sparsity_types_and_topk_fns():
    assert set(typing.get_args(jaxpruner.SparsityType)) == {
        sparsity_types.Unstructured, sparsity_types.Block, sparsity_types.NByM, sparsity_types.Channel
    }
    assert sparsity_types.NByM(2, 4).axis == -1 and sparsity_types.Channel().axis == -1
    assert sparsity_types.Block((2, 2)).use_avg_pooling
    assert sparsity_types.is_sparsity_type(sparsity_types.Unstructured())
    assert not sparsity_types.is_sparsity_type((2, 4))

    def masks(scores, nm_scores, block_scores):
        return (
            mask_calculator.get_topk_fn(sparsity_types.Unstructured)(scores, 0.75),  # the class itself
            mask_calculator.get_topk_fn(sparsity_types.Unstructured())(scores, 0.75),
            mask_calculator.get_topk_fn(sparsity_types.Unstructured())(scores, 0.0),
            # N:M along axis 0 of the transpose: the transpose of the mask along the last axis
            mask_calculator.get_topk_fn(sparsity_types.NByM(2, 4, axis=0))(nm_scores, 0.5),
            # max pooling: block maxima 1, 0, .5, 3 -> keep the first and last block
            mask_calculator.get_topk_fn(sparsity_types.Block((2, 2), use_avg_pooling=False))(block_scores, 0.5),
        )

    cls_mask, inst_mask, zero_mask, nm0, mx = jitted(masks, jnp.abs(W1), jnp.abs(NM_W).T, jnp.abs(BLOCK_W))
    np.testing.assert_array_equal(np.asarray(cls_mask), np_topk(np.abs(W1), 0.75))
    np.testing.assert_array_equal(np.asarray(inst_mask), np_topk(np.abs(W1), 0.75))
    np.testing.assert_array_equal(np.asarray(zero_mask), np.ones((3, 4)))
    np.testing.assert_array_equal(np.asarray(nm0), NM_MASK.T)
    np.testing.assert_array_equal(np.asarray(mx), BLOCK_MASK)
    with pytest.raises(ValueError, match="sparsity type"):
        mask_calculator.get_topk_fn("nm_2,4")


class Triple(NamedTuple):
    w: Any
    b: Any
    v: Any
    n: Any = None


# every tree holds a None leaf as well (last key)
TREE_KINDS = {
    "dict": lambda a, b, c: {"x": {"a": a, "b": b}, "y": c, "z": None},
    "list": lambda a, b, c: [a, b, c, None],
    "tuple": lambda a, b, c: (a, (b, c), None),
    "namedtuple": lambda a, b, c: Triple(a, b, c),
}
TREE_KEYS = {
    "dict": ["x/a", "x/b", "y", "z"],
    "list": ["0", "1", "2", "3"],
    "tuple": ["0", "1/0", "1/1", "2"],
    "namedtuple": ["w", "b", "v", "n"],
}


@pytest.mark.parametrize("kind", list(TREE_KINDS))
def test_distributions_and_summaries_on_pytrees(kind):
    make = TREE_KINDS[kind]
    a = np.where(np.abs(W1) > 0.5, W1, 0.0)  # 6 non-zeros of 12
    b = B1  # one zero of 4
    c = W2  # dense 4x2
    tree = make(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c))
    uni = sparsity_distributions.uniform(tree, 0.6)
    assert jax.tree.structure(uni, is_leaf=is_none) == jax.tree.structure(make(0, None, 0), is_leaf=is_none)
    assert jax.tree.leaves(uni, is_leaf=is_none) == [0.6, None, 0.6, None]
    erk = sparsity_distributions.erk(tree, 0.5)
    expected = np_erk({"a": (3, 4), "c": (4, 2)}, 0.5)
    assert jax.tree.leaves(erk, is_leaf=is_none) == pytest.approx([expected["a"], None, expected["c"], None])

    summary = jaxpruner.summarize_sparsity(tree)
    keys = TREE_KEYS[kind]
    expected_sparsity = [6 / 12, 1 / 4, 0.0]
    assert set(summary) == set(keys) | {"_total_sparsity", "_nparams_nnz", "_nparams"}
    for k, s in zip(keys, expected_sparsity):
        assert float(summary[k]) == pytest.approx(s)
    assert summary[keys[3]] is None
    assert float(summary["_nparams"]) == 24 and float(summary["_nparams_nnz"]) == 6 + 3 + 8
    assert float(summary["_total_sparsity"]) == pytest.approx(7 / 24)
    assert set(jaxpruner.summarize_sparsity(tree, only_total_sparsity=True)) == {
        "_total_sparsity", "_nparams_nnz", "_nparams"
    }

    m1 = (np.abs(W1) > 0.5).astype(np.uint8)  # 6 ones
    m2 = (np.abs(W1) > 0.25).astype(np.uint8)  # 8 ones, contains m1
    n1 = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.uint8)
    n2 = np.array([[1, 1], [0, 0], [0, 1], [1, 0]], np.uint8)
    inter = jaxpruner.summarize_intersection(make(jnp.asarray(m2), None, jnp.asarray(n1)),
                                             make(jnp.asarray(m1), None, jnp.asarray(n2)))
    assert float(inter[keys[0]]) == pytest.approx(6 / 8)
    assert inter[keys[1]] is None and inter[keys[3]] is None
    assert float(inter[keys[2]]) == pytest.approx(2 / 4)
    assert float(inter["_total_intersection"]) == pytest.approx(8 / 12)
    assert set(jaxpruner.summarize_intersection(make(jnp.asarray(m1), None, jnp.asarray(n1)),
                                                make(jnp.asarray(m1), None, jnp.asarray(n1)),
                                                only_total_intersection=True)) == {"_total_intersection"}


def test_distributions_and_summaries_on_equinox_modules():
    p = mlp_params(in_size=4, out_size=2, width=3, depth=1)  # weights (3, 4), (2, 3)
    uni = sparsity_distributions.uniform(p, 0.5)
    assert uni.layers[0].weight == 0.5 and uni.layers[1].weight == 0.5
    assert uni.layers[0].bias is None and uni.activation is None
    erk = sparsity_distributions.erk(p, 0.5)
    # by hand: raw 7/12 and 5/6; kept 6 + 3 = 9 over 7 + 5 -> eps 0.75
    assert (erk.layers[0].weight, erk.layers[1].weight) == pytest.approx((1 - 7 / 12 * 0.75, 1 - 5 / 6 * 0.75))
    assert erk.layers[0].bias is None
    # ERK with a saturated layer: (2, 2) has raw density 1 and is made dense; (100, 100) keeps the rest
    shapes = {"big": np.zeros((100, 100), np.float32), "small": np.zeros((2, 2), np.float32)}
    assert sparsity_distributions.erk(shapes, 0.5) == pytest.approx({"big": 1 - 4998 / 10000, "small": 0.0})
    custom = sparsity_distributions.uniform(p, 0.5, custom_sparsity_map={("layers", 1, "weight"): 0.1})
    assert (custom.layers[0].weight, custom.layers[1].weight) == (0.5, 0.1)
    single = sparsity_distributions.uniform(jnp.zeros((3, 3)), 0.4)
    assert single == 0.4

    pruned, masks = jitted(jaxpruner.MagnitudePruning(sparsity=0.5).instant_sparsify, p)
    summary = jaxpruner.summarize_sparsity(pruned)
    assert summary["activation"] is None and summary["final_activation"] is None
    w0, w1 = np.asarray(p.layers[0].weight), np.asarray(p.layers[1].weight)
    assert float(summary["layers/0/weight"]) == pytest.approx(6 / 12)
    assert float(summary["layers/1/weight"]) == pytest.approx(3 / 6)
    np.testing.assert_array_equal(np.asarray(masks.layers[0].weight), np_topk(np.abs(w0), 0.5))
    np.testing.assert_array_equal(np.asarray(masks.layers[1].weight), np_topk(np.abs(w1), 0.5))
    assert masks.layers[0].bias is None
    inter = jaxpruner.summarize_intersection(masks, masks)
    assert float(inter["layers/0/weight"]) == 1.0 and inter["layers/0/bias"] is None
    _, gmasks = jitted(jaxpruner.GlobalMagnitudePruning(sparsity=0.5).instant_sparsify, p)
    e0, e1 = np_global_topk([normalized(w0), normalized(w1)], 0.5)
    np.testing.assert_array_equal(np.asarray(gmasks.layers[0].weight), e0)
    np.testing.assert_array_equal(np.asarray(gmasks.layers[1].weight), e1)
    assert gmasks.layers[1].bias is None and gmasks.activation is None


# ------------------------------------------------------------------------------------------------
# Every algorithm class through wrap_optax / instant_sparsify / pre_forward_update /
# post_gradient_update / update_state / apply_masks, at sparsity 0.5 (w1 keeps 6 of 12, w2 4 of 8).


def normalized(x):
    return np.abs(x) / np.linalg.norm(np.abs(x).reshape(-1))


DENSE_TO_SPARSE = {
    "magnitude": (jaxpruner.MagnitudePruning, lambda: (np_topk(np.abs(W1), 0.5), np_topk(np.abs(W2), 0.5))),
    "saliency": (jaxpruner.SaliencyPruning, lambda: (np_topk(np.abs(W1 * G1), 0.5), np_topk(np.abs(W2 * G2), 0.5))),
    "global_magnitude": (jaxpruner.GlobalMagnitudePruning,
                         lambda: tuple(np_global_topk([normalized(W1), normalized(W2)], 0.5))),
    "global_saliency": (jaxpruner.GlobalSaliencyPruning,
                        lambda: tuple(np_global_topk([normalized(W1 * G1), normalized(W2 * G2)], 0.5))),
    "random": (jaxpruner.RandomPruning, None),
}


@pytest.mark.parametrize("name", list(DENSE_TO_SPARSE))
def test_dense_to_sparse_pruners(name):
    cls, expected_fn = DENSE_TO_SPARSE[name]
    upd = cls(sparsity=0.5, scheduler=jaxpruner.OneShotSchedule(target_step=0))
    tx = upd.wrap_optax(optax.sgd(1.0))
    p, g = params(), grads()
    state = tx.init(p)
    assert isinstance(state, jaxpruner.SparseState) and int(state.count) == 0
    assert_masks(state.masks, {"w1": np.ones((3, 4)), "b1": None, "w2": np.ones((4, 2))})

    updates, state = jax.jit(tx.update)(g, state, p)
    assert int(state.count) == 1
    if expected_fn is None:  # random: the right number of ones
        expected = {"w1": None, "b1": None, "w2": None}
        assert [int(state.masks[k].sum()) for k in ("w1", "w2")] == [6, 4]
    else:
        e1, e2 = expected_fn()
        expected = {"w1": e1, "b1": None, "w2": e2}
        assert_masks(state.masks, expected)
    m = np_tree(state.masks)
    for k in p:  # dense gradients: plain SGD updates
        np.testing.assert_array_equal(np.asarray(updates[k]), -np.asarray(g[k]))
    assert upd.pre_forward_update(p, state) is p
    stepped = optax.apply_updates(p, updates)
    after = upd.post_gradient_update(stepped, state)
    np.testing.assert_array_equal(np.asarray(after["w1"]), np.asarray(stepped["w1"]) * m["w1"])
    np.testing.assert_array_equal(np.asarray(after["b1"]), np.asarray(stepped["b1"]))
    masked = upd.apply_masks(p, state.masks)
    np.testing.assert_array_equal(np.asarray(masked["w2"]), W2 * m["w2"])

    if expected_fn is not None:
        pruned, masks = jitted(lambda p, g: upd.instant_sparsify(p, grads=g), p, g)
        assert_masks(masks, expected)
        np.testing.assert_array_equal(np.asarray(pruned["w1"]), W1 * expected["w1"])
        np.testing.assert_array_equal(np.asarray(pruned["b1"]), B1)


def test_saliency_needs_grads_and_random_keeps_pruned_pruned():
    with pytest.raises(ValueError, match="grads"):
        jaxpruner.SaliencyPruning(sparsity=0.5).instant_sparsify(params())
    upd = jaxpruner.RandomPruning(sparsity=0.5)
    p = params()
    _, first = upd.instant_sparsify(p)
    assert int(first["w1"].sum()) == 6
    # a random update at a later step only prunes among the kept weights (pruned ones score lowest)
    state = upd.init_state(p)._replace(masks=first, count=jnp.asarray(3))
    tighter = dataclasses.replace(upd, sparsity=None, sparsity_distribution_fn=functools.partial(
        sparsity_distributions.uniform, sparsity=0.75))
    new = tighter.update_state(state._replace(target_sparsities=tighter.sparsity_distribution_fn(p)), p, None)
    assert int(new.masks["w1"].sum()) == 3
    assert np.all(np.asarray(new.masks["w1"]) <= np.asarray(first["w1"]))


@pytest.mark.parametrize("cls", [jaxpruner.SteMagnitudePruning, jaxpruner.SteRandomPruning], ids=["magnitude", "random"])
def test_straight_through_pruners(cls):
    upd = cls(sparsity=0.5)
    tx = upd.wrap_optax(optax.sgd(1.0))
    p, g = params(), grads()
    state = tx.init(p)
    assert all(m is None for m in jax.tree.leaves(state.masks, is_leaf=is_none))
    seen = upd.pre_forward_update(p, state)
    kept1 = np.asarray(seen["w1"]) != 0
    if cls is jaxpruner.SteMagnitudePruning:
        np.testing.assert_array_equal(kept1, np_topk(np.abs(W1), 0.5).astype(bool))
        np.testing.assert_array_equal(np.asarray(seen["w2"]) != 0, np_topk(np.abs(W2), 0.5).astype(bool))
    assert kept1.sum() == 6 and int((np.asarray(seen["w2"]) != 0).sum()) == 4
    np.testing.assert_array_equal(np.asarray(seen["w1"])[kept1], W1[kept1])
    np.testing.assert_array_equal(np.asarray(seen["b1"]), B1)
    updates, new = tx.update(g, state, p)
    np.testing.assert_array_equal(np.asarray(updates["w1"]), -G1)  # dense weights keep training
    assert upd.update_state(state, p, g) is state
    assert upd.post_gradient_update(p, new) is p
    _, masks = upd.instant_sparsify(p)
    assert int(masks["w1"].sum()) == 6 and masks["b1"] is None


@pytest.mark.parametrize("cls", [jaxpruner.StaticRandomSparse, jaxpruner.SET, jaxpruner.RigL],
                         ids=["static", "set", "rigl"])
def test_sparse_trainers(cls):
    kwargs = {} if cls is jaxpruner.StaticRandomSparse else {
        "scheduler": jaxpruner.PeriodicSchedule(update_freq=1, update_start_step=0, update_end_step=None),
        "drop_fraction_fn": lambda step: 0.5,
    }
    upd = cls(sparsity=0.5, **kwargs)
    tx = upd.wrap_optax(optax.sgd(1.0))
    p, g = params(), grads()
    state = tx.init(p)
    old = np_tree(state.masks)
    assert old["b1"] is None and old["w1"].sum() == 6 and old["w2"].sum() == 4
    with pytest.raises(RuntimeError, match="not supported"):
        upd.instant_sparsify(p)
    # sparse training starts from the initial masks: the forward pass sees them after post_gradient_update
    start = upd.post_gradient_update(p, state)
    np.testing.assert_array_equal(np.asarray(start["w1"]), W1 * old["w1"])

    updates, new_state = jax.jit(tx.update)(g, state, p)
    new = np_tree(new_state.masks)
    if cls is jaxpruner.StaticRandomSparse:
        assert_masks(new_state.masks, old)
        # sparse gradients: the updates are the masked gradients
        np.testing.assert_array_equal(np.asarray(updates["w1"]), -G1 * old["w1"])
        np.testing.assert_array_equal(np.asarray(updates["b1"]), -GB)
        return
    for k, w, gk in (("w1", W1, G1), ("w2", W2, G2)):
        n_active = old[k].sum()
        assert new[k].sum() == n_active  # drop and grow keep the density
        n_keep = round(old[k].size * (n_active / old[k].size) * 0.5)  # drop fraction 0.5 of the active
        kept = np_topk(np.where(old[k] == 1, np.abs(w), -1.0), 1 - n_keep / old[k].size).astype(bool)
        assert np.all(new[k][kept] == 1)
        if cls is jaxpruner.RigL:  # grow the largest |g| among the rest
            grow = np_topk(np.where(kept, -1.0, np.abs(gk)), 1 - (n_active - n_keep) / old[k].size)
            np.testing.assert_array_equal(new[k], (kept | grow.astype(bool)).astype(np.uint8))
    # skip_gradients (SET's default): no parameter update on a mask-update step
    for k in p:
        np.testing.assert_array_equal(np.asarray(updates[k]), 0.0)
    after = upd.post_gradient_update(p, new_state)
    np.testing.assert_array_equal(np.asarray(after["w2"]), W2 * new["w2"])


def test_no_pruning():
    upd = jaxpruner.NoPruning()
    tx = upd.wrap_optax(optax.sgd(0.5))
    p, g = params(), grads()
    state = tx.init(p)
    assert all(m is None for m in jax.tree.leaves(state.masks, is_leaf=is_none))
    updates, state = tx.update(g, state, p)
    np.testing.assert_allclose(np.asarray(updates["w1"]), -0.5 * G1)
    assert int(state.count) == 1
    pruned, masks = upd.instant_sparsify(p)
    assert pruned is p and all(m is None for m in jax.tree.leaves(masks, is_leaf=is_none))
    assert upd.update_state(state, p, g) is state
    np.testing.assert_array_equal(np.asarray(upd.post_gradient_update(p, state)["w1"]), W1)
    assert upd.pre_forward_update(p, state) is p


# ================================================================================================
# 2. Beyond JaxPruner


def test_sparsity_shorthand():
    upd = jaxpruner.MagnitudePruning(sparsity=0.9)
    assert upd.sparsity_distribution_fn({"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)}) == {"w": 0.9, "b": None}
    with pytest.raises(ValueError, match="sparsity"):
        jaxpruner.MagnitudePruning(
            sparsity=0.9, sparsity_distribution_fn=functools.partial(sparsity_distributions.uniform, sparsity=0.5)
        )


OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-2),
    "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "clip_adamw": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2)),
    "lion": lambda: optax.lion(1e-3),
}


@pytest.mark.parametrize(
    "cls,opt_name",
    [(jaxpruner.RigL, "adam"), (jaxpruner.RigL, "clip_adamw"), (jaxpruner.SET, "sgd_momentum"), (jaxpruner.SET, "lion")],
    ids=["rigl-adam", "rigl-clip_adamw", "set-sgd_momentum", "set-lion"],
)
def test_drop_and_grow_restarts_moments(cls, opt_name):
    """Equinox MLP (None leaves), None masks where filter_fn excludes a leaf (the biases; for SET the
    second weight too): the moments of newly grown weights are 0 after the update, every other entry
    of the optimizer state is untouched."""
    p = mlp_params(in_size=3, out_size=2, width=4, depth=1)  # weights (4, 3), (2, 4)
    g = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(x.size).normal(size=x.shape), x.dtype), p)
    opt = OPTIMIZERS[opt_name]()
    masked_layers = (0, 1) if cls is jaxpruner.RigL else (0,)

    def filter_fn(key, x):
        return key[-1] == "weight" and key[1] in masked_layers

    dist = functools.partial(sparsity_distributions.uniform, sparsity=0.5, filter_fn=filter_fn)
    upd = cls(sparsity_distribution_fn=dist, drop_fraction_fn=lambda step: 0.5)

    def run(p, g):
        state = upd.wrap_optax(opt).init(p)
        _, inner = opt.update(g, state.inner_state, p)  # every moment non-zero
        state = state._replace(inner_state=inner)
        return state, upd.update_state(state, p, g)

    state, new = jitted(run, p, g)
    assert state.masks.layers[0].bias is None and state.masks.activation is None

    grown = {}
    if cls is jaxpruner.SET:
        assert state.masks.layers[1].weight is None and new.masks.layers[1].weight is None
    for i in masked_layers:
        old_m, new_m = np.asarray(state.masks.layers[i].weight), np.asarray(new.masks.layers[i].weight)
        assert new_m.sum() == old_m.sum()
        grown[f".layers[{i}].weight"] = (old_m == 0) & (new_m == 1)
    assert sum(x.sum() for x in grown.values()) > 0  # the case is not trivial

    old_leaves = jax.tree_util.tree_flatten_with_path(state.inner_state)[0]
    new_leaves = jax.tree_util.tree_flatten_with_path(new.inner_state)[0]
    assert [k for k, _ in old_leaves] == [k for k, _ in new_leaves]
    checked = 0
    for (path, before), (_, after) in zip(old_leaves, new_leaves):
        name = jax.tree_util.keystr(path)
        before, after = np.asarray(before), np.asarray(after)
        suffix = next((s for s in grown if name.endswith(s)), None)
        if suffix is None:
            np.testing.assert_array_equal(after, before, err_msg=name)
        else:
            checked += 1
            np.testing.assert_array_equal(after, np.where(grown[suffix], 0.0, before), err_msg=name)
    assert checked >= len(masked_layers)


def test_drop_and_grow_over_ivon_keeps_a_usable_curvature():
    p = {"w": jnp.asarray(W1), "b": jnp.asarray(B1)}
    g = {"w": jnp.asarray(G1), "b": jnp.asarray(GB)}
    hess_init = 0.5
    upd = jaxpruner.RigL(sparsity=0.5, drop_fraction_fn=lambda step: 0.5)
    state = upd.wrap_optax(jaxpruner.ivon(lr=0.1, ess=100.0, hess_init=hess_init)).init(p)
    new = jitted(upd.update_state, state, p, g)
    old_m, new_m = np.asarray(state.masks["w"]), np.asarray(new.masks["w"])
    grown = (old_m == 0) & (new_m == 1)
    assert grown.sum() > 0
    np.testing.assert_array_equal(np.asarray(new.inner_state[0].momentum["w"])[grown], 0.0)  # moments restart
    # the curvature of a regrown weight is that of a fresh IVON weight (or its old one), never 0
    np.testing.assert_array_equal(np.asarray(new.inner_state[0].hess["w"])[grown], hess_init)


def test_packed_masks_with_sparse_gradients():
    p = {"w": jnp.asarray(W1), "b": jnp.asarray(B1)}
    upd = jaxpruner.StaticRandomSparse(sparsity=0.5, use_packed_masks=True)
    assert upd.is_sparse_gradients
    tx = upd.wrap_optax(optax.sgd(1.0))
    state = tx.init(p)
    packed = state.masks["w"]
    assert packed.dtype == jnp.uint8 and packed.shape == (2,) and state.masks["b"] is None
    mask = unpack(packed, (3, 4))
    assert mask.sum() == 6
    plain = jaxpruner.StaticRandomSparse(sparsity=0.5).wrap_optax(optax.sgd(1.0)).init(p)
    np.testing.assert_array_equal(mask, np.asarray(plain.masks["w"]))  # same draw, packed
    np.testing.assert_array_equal(np.asarray(upd.apply_masks(p, state.masks)["w"]), W1 * mask)

    @jax.jit
    def step(p, state, g):
        updates, state = tx.update(g, state, p)
        return upd.post_gradient_update(optax.apply_updates(p, updates), state), state, updates

    p = upd.post_gradient_update(p, state)
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
        before = p
        p, state, updates = step(p, state, g)
        np.testing.assert_array_equal(np.asarray(updates["w"]), -(mask * np.asarray(g["w"])))
        np.testing.assert_array_equal(np.asarray(updates["b"]), -np.asarray(g["b"]))
        np.testing.assert_array_equal(np.asarray(p["w"])[mask == 0], 0.0)
        np.testing.assert_allclose(np.asarray(p["w"])[mask == 1],
                                   np.asarray(before["w"])[mask == 1] - np.asarray(g["w"])[mask == 1], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(state.masks["w"]), np.asarray(packed))


def test_packed_masks_rigl_with_none_masks():
    p = {"w": jnp.asarray(W1), "b": jnp.asarray(B1)}
    upd = jaxpruner.RigL(sparsity=0.5, use_packed_masks=True, drop_fraction_fn=lambda step: 0.5)
    state = upd.wrap_optax(optax.adam(1e-2)).init(p)
    old = unpack(state.masks["w"], (3, 4))
    new_state = jitted(upd.update_state, state, p, {"w": jnp.asarray(G1), "b": jnp.asarray(GB)})
    assert new_state.masks["b"] is None and new_state.masks["w"].shape == (2,)
    new = unpack(new_state.masks["w"], (3, 4))
    kept = np_topk(np.where(old == 1, np.abs(W1), -1.0), 1 - 3 / 12).astype(bool)
    grow = np_topk(np.where(kept, -1.0, np.abs(G1)), 1 - 3 / 12).astype(bool)
    np.testing.assert_array_equal(new, (kept | grow).astype(np.uint8))


# ================================================================================================
# 3. BMRPruner's Bayesian pruners (posterior read from sparse_state.inner_state[0])

ESS, WD = 50.0, 0.01
H1 = np.array([[0.5, 2.0, 0.1, 1.0], [3.0, 0.2, 0.05, 4.0], [0.7, 1.5, 0.3, 0.01]], np.float32)
HB = np.array([1.0, 0.5, 2.0, 0.1], np.float32)
H2 = np.array([[0.3, 5.0], [0.02, 0.9], [2.5, 0.4], [0.6, 0.08]], np.float32)


class HandState(NamedTuple):
    """A blrax-like IVON state made by hand (ess and weight_decay as jnp scalars)."""

    count: Any
    momentum: Any
    hess: Any
    ess: Any
    weight_decay: Any


def hess_tree():
    return {"w1": jnp.asarray(H1), "b1": jnp.asarray(HB), "w2": jnp.asarray(H2)}


def hand_state():
    p = params()
    return HandState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, p), hess_tree(),
                     jnp.asarray(ESS, jnp.float32), jnp.asarray(WD, jnp.float32))


def ivon_state():
    (state,) = jaxpruner.ivon(learning_rate=0.1, ess=ESS, weight_decay=WD).init(params())
    return (state._replace(hess=hess_tree()),)


def sparse_state(inner, sparsity=0.5):
    return jaxpruner.SparseState(masks=None, inner_state=inner, count=jnp.zeros([], jnp.int32),
                                 target_sparsities={"w1": sparsity, "b1": None, "w2": sparsity})


def minus_delta_f(w, h):
    return -np_delta_f(w, h, ESS, WD)


def signal_to_noise(w, h):
    return np.abs(w) / np_sigma(h, ESS, WD)


BMR_CASES = {
    "bmr": (jaxpruner.BMRPruning, minus_delta_f),
    "uncertainty": (jaxpruner.UncertaintyMagnitudePruning, signal_to_noise),
    "variance": (jaxpruner.PosteriorVariancePruning, lambda w, h: np.asarray(h, np.float64)),
}


@pytest.mark.parametrize(
    "name,state_kind",
    [
        (name, kind)
        for name in BMR_CASES
        for kind in ("compat_ivon", "hand_made")
    ],
)
def test_bmr_scores_and_masks(name, state_kind):
    cls, score_fn = BMR_CASES[name]
    # inner_state[0] is the IVON state, whatever follows it
    inner = ivon_state() + (optax.EmptyState(),) if state_kind == "compat_ivon" else (hand_state(),)
    upd = cls(sparsity=0.5)
    p = params()
    scores = upd.calculate_scores(p, sparse_state=sparse_state(inner))
    for k, w, h in (("w1", W1, H1), ("b1", B1, HB), ("w2", W2, H2)):
        np.testing.assert_allclose(np.asarray(scores[k]), score_fn(w, h), rtol=1e-5, atol=1e-6, err_msg=k)
    if state_kind == "compat_ivon":  # the masks: the top half of these scores
        new = jitted(lambda s, p: upd.update_state(s, p, None), sparse_state(inner), p)
        expected = {"w1": np_topk(score_fn(W1, H1), 0.5), "b1": None, "w2": np_topk(score_fn(W2, H2), 0.5)}
        assert_masks(new.masks, expected)


def test_bmr_duck_typed_state_under_jit():
    upd = jaxpruner.BMRPruning(sparsity=0.5)
    state = sparse_state((hand_state(),))
    scores = jax.jit(lambda p, s: upd.calculate_scores(p, sparse_state=s))(params(), state)
    np.testing.assert_allclose(np.asarray(scores["w1"]), minus_delta_f(W1, H1), rtol=1e-5, atol=1e-6)
    masks = jax.jit(lambda p, s: upd.update_state(s, p, None).masks)(params(), state)
    assert_masks(masks, {"w1": np_topk(minus_delta_f(W1, H1), 0.5), "b1": None,
                         "w2": np_topk(minus_delta_f(W2, H2), 0.5)})


def test_bmr_global_adaptive_and_ste():
    p, inner = params(), ivon_state()
    s1, s2 = minus_delta_f(W1, H1), minus_delta_f(W2, H2)

    glob = jaxpruner.BayesianGlobalPruning(sparsity=0.6)
    assert glob.init_state(p).target_sparsities == 0.6
    e1, e2 = np_global_topk([s1, s2], 0.6)  # ΔF is in nats everywhere: no normalisation
    new = jitted(lambda s, p: glob.update_state(s, p, None), sparse_state(inner)._replace(target_sparsities=0.6), p)
    assert_masks(new.masks, {"w1": e1, "b1": None, "w2": e2})

    for threshold in (0.0, 2.0):
        adaptive = jaxpruner.AdaptiveBMR(sparsity=0.5, threshold=threshold)
        new = jitted(lambda s, p: adaptive.update_state(s, p, None), sparse_state(inner), p)
        expected = {}
        for k, s in (("w1", s1), ("w2", s2)):
            keep = s >= -threshold  # prune where ΔF > threshold ...
            keep.reshape(-1)[np.argmax(s)] = True  # ... but keep each parameter's best weight
            expected[k] = keep.astype(np.uint8)
        assert_masks(new.masks, {**expected, "b1": None})
    # a posterior where the evidence wants everything gone still keeps one weight per parameter
    far = (inner[0]._replace(hess=jax.tree.map(lambda h: h * 0 + 100.0, hess_tree())),)
    zero_p = jax.tree.map(lambda x: x * 1e-4, p)
    new = jitted(lambda s, p: jaxpruner.AdaptiveBMR(sparsity=0.5).update_state(s, p, None), sparse_state(far), zero_p)
    assert int(new.masks["w1"].sum()) == 1 and int(new.masks["w2"].sum()) == 1

    bmr_ste = jaxpruner.SteBMRPruning(sparsity=0.5)
    seen = jitted(bmr_ste.pre_forward_update, p, sparse_state(inner))
    np.testing.assert_array_equal(np.asarray(seen["w1"]) != 0, np_topk(s1, 0.5).astype(bool))
    np.testing.assert_array_equal(np.asarray(seen["b1"]), B1)
    assert bmr_ste.post_gradient_update(p, None) is p


@pytest.mark.parametrize(
    "inner", [(optax.adam(1e-3).init({"w": jnp.zeros(2)}),), None, (optax.EmptyState(),)],
    ids=["adam", "none", "empty"],
)
@pytest.mark.parametrize("cls", [jaxpruner.BMRPruning, jaxpruner.PosteriorVariancePruning, jaxpruner.AdaptiveBMR])
def test_bmr_without_posterior_is_a_clear_error(cls, inner):
    with pytest.raises(AttributeError, match="hess"):
        cls(sparsity=0.5).calculate_scores(params(), sparse_state=sparse_state(inner))
    if inner is None:  # instant_sparsify has no optimizer state to read the posterior from
        with pytest.raises(AttributeError, match="hess"):
            cls(sparsity=0.5).instant_sparsify(params())


# ================================================================================================
# 4. blrax-style IVON


def quadratic_loss(p, a, key):
    """½·a·Σθ²: ĝ = a·θ_sample, so the noise ε = (ĝ/a − m)/σ can be read back from the gradient."""
    assert key.shape == () or key.shape == (2,)
    return 0.5 * a * sum(jnp.sum(x**2) for x in jax.tree.leaves(p))


IVON_P = {"w": np.array([[0.5, -1.0, 2.0], [0.1, 0.4, -0.3]], np.float32), "b": np.array([0.2, -0.4, 0.05], np.float32)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0.1},
        {"lr": 0.3, "rescale_lr": True, "hess_every": 2, "clip_radius": 0.5},
    ],
    ids=["plain", "rescale-hess_every-clip"],
)
def test_ivon_matches_numpy(kwargs):
    ess, hess_init, wd, b1, b2, a = 20.0, 0.5, 0.1, 0.8, 0.7, 2.0
    opt = jaxpruner.ivon(ess=ess, hess_init=hess_init, b1=b1, b2=b2, weight_decay=wd, **kwargs)
    p = {k: jnp.asarray(v) for k, v in IVON_P.items()}
    (state,) = opt.init(p)
    for field in ("count", "momentum", "hess", "ess", "weight_decay"):
        assert hasattr(state, field)
    assert int(state.count) == 0 and float(state.ess) == ess and float(state.weight_decay) == wd
    np.testing.assert_array_equal(np.asarray(state.hess["w"]), np.full((2, 3), hess_init))
    np.testing.assert_array_equal(np.asarray(state.momentum["b"]), 0.0)

    lr = kwargs.get("learning_rate", kwargs.get("lr"))
    alpha = lr * (hess_init + wd) if kwargs.get("rescale_lr") else lr
    every, clip = kwargs.get("hess_every", 1), kwargs.get("clip_radius", math.inf)
    m = {k: v.astype(np.float64) for k, v in IVON_P.items()}
    g = {k: np.zeros_like(v) for k, v in m.items()}
    h = {k: np.full_like(v, hess_init) for k, v in m.items()}
    opt_state = (state,)
    clipped = False
    noisy = jax.jit(functools.partial(jaxpruner.noisy_value_and_grad, quadratic_loss))
    update = jax.jit(opt.update)
    for t in (1, 2):
        loss, grads, opt_state = noisy(opt_state, p, jax.random.key(t), jnp.float32(a))
        for k in m:
            g_hat = np.asarray(grads[k], np.float64)
            sigma = np_sigma(h[k], ess, wd)
            eps = (g_hat / a - m[k]) / sigma
            assert np.all(np.abs(eps) < 6) and np.any(np.abs(eps) > 0.05)  # a standard normal draw
            h_hat = g_hat * eps / sigma
            np.testing.assert_allclose(np.asarray(opt_state[0].h_bar[k]), h_hat, rtol=2e-4, atol=1e-4)
            m_new, g[k], h[k] = np_ivon_step(m[k], g[k], h[k], g_hat, h_hat, t, alpha, b1, b2, wd, clip,
                                             refresh=(t - 1) % every == 0)
            clipped |= bool(np.any(np.abs(m_new - m[k]) >= alpha * clip * (1 - 1e-9)))
            m[k] = m_new
        theta = {k: np.asarray(grads[k], np.float64) / a for k in m}
        assert float(loss) == pytest.approx(0.5 * a * sum((x**2).sum() for x in theta.values()), rel=1e-5)
        updates, opt_state = update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
        assert int(opt_state[0].count) == t
        for k in m:
            np.testing.assert_allclose(np.asarray(p[k]), m[k], rtol=1e-4, atol=1e-5, err_msg=f"mean {k} t={t}")
            np.testing.assert_allclose(np.asarray(opt_state[0].momentum[k]), g[k], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(np.asarray(opt_state[0].hess[k]), h[k], rtol=1e-4, atol=1e-5)
    assert clipped == ("clip_radius" in kwargs)  # the clipped case does clip somewhere


def test_noisy_value_and_grad_samples_masks_and_args():
    ess, wd, a = 10.0, 0.2, 3.0
    opt = jaxpruner.ivon(lr=0.1, ess=ess, weight_decay=wd, hess_init=1.0)
    p = {k: jnp.asarray(v) for k, v in IVON_P.items()}
    opt_state = opt.init(p)
    seen = []

    def loss_fn(q, x, y, key):  # positional args, then the key
        jax.debug.callback(lambda w, b: seen.append((np.asarray(w), np.asarray(b))), q["w"], q["b"])
        return 0.5 * x * y * (jnp.sum(q["w"] ** 2) + jnp.sum(q["b"] ** 2))

    mask = {"w": jnp.asarray([[1, 0, 1], [0, 1, 1]], jnp.uint8), "b": None}
    loss, grads, new_state = jitted(
        lambda s, p, k, x, y, mask: jaxpruner.noisy_value_and_grad(loss_fn, s, p, k, x, y, mc_samples=2, mask=mask),
        opt_state, p, jax.random.key(0), jnp.float32(a), jnp.float32(1.0), mask,
    )
    jax.effects_barrier()
    assert len(seen) == 2
    sigma = np_sigma(1.0, ess, wd)
    m = np.asarray(mask["w"])
    g_hat = {"w": 0.0, "b": 0.0}
    h_hat = {"w": 0.0, "b": 0.0}
    losses = []
    for w, b in seen:
        assert np.all(w[m == 0] == 0)  # masked entries are sampled at 0
        for k, theta in (("w", w), ("b", b)):
            eps = (theta - IVON_P[k]) / sigma
            if k == "w":
                eps = np.where(m == 1, eps, 0.0)
            g_hat[k] = g_hat[k] + a * theta / 2
            h_hat[k] = h_hat[k] + a * theta * eps / sigma / 2
        losses.append(0.5 * a * ((w**2).sum() + (b**2).sum()))
    assert not np.allclose(seen[0][0], seen[1][0])  # two different samples
    assert float(loss) == pytest.approx(np.mean(losses), rel=1e-5)
    for k in ("w", "b"):
        np.testing.assert_allclose(np.asarray(grads[k]), g_hat[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(new_state[0].h_bar[k]), h_hat[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(new_state[0].h_bar["w"])[m == 0], 0.0)
    np.testing.assert_array_equal(np.asarray(grads["w"])[m == 0], 0.0)
    # the rest of the state is left alone
    np.testing.assert_array_equal(np.asarray(new_state[0].hess["w"]), 1.0)
    assert int(new_state[0].count) == 0

    # without an IVON state: plain value_and_grad at the mean
    loss0, grads0, same = jaxpruner.noisy_value_and_grad(
        lambda q, x, key: x * jnp.sum(q["w"]), optax.adam(1e-3).init(p), p, jax.random.key(1), 2.0
    )
    assert float(loss0) == pytest.approx(2.0 * IVON_P["w"].sum())
    np.testing.assert_array_equal(np.asarray(grads0["w"]), 2.0)


# blrax.ivon's parameters in order, in every release since mid-2025 (src/blrax/optim.py)
BLRAX_IVON_ORDER = ["learning_rate", "ess", "hess_init", "clip_radius", "b1", "b2", "weight_decay", "hess_every",
                    "rescale_lr"]


def test_ivon_positional_order_is_blrax():
    assert list(inspect.signature(jaxpruner.ivon).parameters)[: len(BLRAX_IVON_ORDER)] == BLRAX_IVON_ORDER


def test_ivon_arguments():
    with pytest.raises(TypeError):
        jaxpruner.ivon()
    with pytest.raises(TypeError):
        jaxpruner.ivon(0.1, lr=0.1)
    with pytest.raises(ValueError):
        jaxpruner.ivon(lr=0.1, ess=0.0)


# ================================================================================================
# 5. End to end: BMRPruner's quick start and Equinox example on scikit-learn's digits


@pytest.fixture(scope="module")
def digits():
    from digits_data import load_digits_split

    return load_digits_split()


def _quick_start(init_params, forward, digits):
    """BMRPruner's README quick start as written (syntax slips fixed), on the digits."""
    x_train, y_train, x_test, y_test = digits
    n = x_train.shape[0]

    def loss_fn(params, x, y, key):
        del key
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    config = ml_collections.ConfigDict()
    config.algorithm = "bmr"
    config.update_freq = 10
    config.update_start_step = 50
    config.update_end_step = 150
    config.sparsity = 0.9
    config.dist_type = "erk"

    optimizer = blrax.ivon(lr=0.5, ess=n, hess_init=1.0)
    updater = jaxpruner.create_updater_from_config(config)
    optimizer = updater.wrap_optax(optimizer)
    params = init_params
    optstate = optimizer.init(params)

    def step_fn(params, optstate, key, x, y):
        loss, grads, inner = blrax.noisy_value_and_grad(
            loss_fn, optstate.inner_state, params, key, x, y, mc_samples=1, mask=optstate.masks
        )
        optstate = optstate._replace(inner_state=inner)
        updates, optstate = optimizer.update(grads, optstate, params)
        params = optax.apply_updates(params, updates)
        params = updater.post_gradient_update(params, optstate)
        return params, optstate, loss

    traces = []
    step = jax.jit(lambda *args: traces.append(None) or step_fn(*args))
    key = jax.random.key(0)
    order = np.random.default_rng(0).permutation(200 * 128) % n
    for i in range(200):
        key, sub = jax.random.split(key)
        idx = order[i * 128 : (i + 1) * 128]
        params, optstate, loss = step(params, optstate, sub, x_train[idx], y_train[idx])
    assert len(traces) == 1  # one trace, one compile: the whole step runs jitted

    # the masked leaves (the two kernels / weights; biases stay dense) reach the target: ERK keeps
    # sum(n - floor(0.9 n)) weights in all, each leaf round(n (1 - its sparsity))
    masked = jax.tree.map(lambda m, p: None if m is None else p, optstate.masks, params, is_leaf=is_none)
    leaves = jax.tree.leaves(masked)
    targets = [float(t) for t in jax.tree.leaves(optstate.target_sparsities)]
    assert [x.size for x in leaves] == [64 * 32, 32 * 10] and len(targets) == 2
    summary = jaxpruner.summarize_sparsity(masked)
    kept = sum(x.size - math.floor(0.9 * x.size) for x in leaves)
    assert float(summary["_nparams_nnz"]) == kept
    assert float(summary["_total_sparsity"]) == pytest.approx(1 - kept / sum(x.size for x in leaves))
    assert float(summary["_total_sparsity"]) == pytest.approx(0.9, abs=1e-3)
    for x, t in zip(leaves, targets):
        assert t > 0.7
        assert np.count_nonzero(np.asarray(x)) == round(x.size * (1 - t))
    accuracy = float(jnp.mean(jnp.argmax(forward(params, x_test), -1) == y_test))
    assert accuracy > 0.8, accuracy  # chance: 0.1; about 0.95 here
    return params


def test_quick_start_dict_mlp(digits):
    k1, k2 = jax.random.split(jax.random.key(42))
    hidden = 32
    init = {
        "dense1": {"kernel": jax.random.normal(k1, (64, hidden)) / 8.0, "bias": jnp.zeros(hidden)},
        "dense2": {"kernel": jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden), "bias": jnp.zeros(10)},
    }

    def forward(p, x):
        h = jax.nn.relu(x @ p["dense1"]["kernel"] + p["dense1"]["bias"])
        return h @ p["dense2"]["kernel"] + p["dense2"]["bias"]

    _quick_start(init, forward, digits)


def test_quick_start_equinox_mlp(digits):
    model = eqx.nn.MLP(64, 10, 32, 1, key=jax.random.key(42))
    trainable = eqx.filter(model, eqx.is_array)
    static = eqx.filter(model, eqx.is_array, inverse=True)

    def forward(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    trained = _quick_start(trainable, forward, digits)
    assert isinstance(trained, eqx.nn.MLP)


def test_equinox_magnitude_example(digits):
    x_train, y_train, _, _ = digits
    model = eqx.nn.MLP(64, 10, 32, 2, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_array)
    static = eqx.filter(model, eqx.is_array, inverse=True)
    pruner = jaxpruner.MagnitudePruning(sparsity=0.9)
    tx = pruner.wrap_optax(optax.adam(1e-3))
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(eqx.combine(p, static))(x), y).mean()

        value, g = jax.value_and_grad(loss)(params)
        updates, state = tx.update(g, state, params)
        return pruner.post_gradient_update(optax.apply_updates(params, updates), state), state, value

    losses = []
    for i in range(5):
        params, state, value = step(params, state, x_train[i * 128 : (i + 1) * 128], y_train[i * 128 : (i + 1) * 128])
        losses.append(float(value))
    assert losses[-1] < losses[0]
    pruned, masks = jitted(pruner.instant_sparsify, params)
    summary = jaxpruner.summarize_sparsity(pruned)
    for i, n in ((0, 32 * 64), (1, 32 * 32), (2, 10 * 32)):
        assert float(summary[f"layers/{i}/weight"]) == pytest.approx(1 - round(0.1 * n) / n, abs=1e-6)
        assert float(summary[f"layers/{i}/bias"]) == 0.0
        assert masks.layers[i].bias is None
        w = np.asarray(params.layers[i].weight)
        np.testing.assert_array_equal(np.asarray(masks.layers[i].weight), np_topk(np.abs(w), 0.9))


# ---- review fixes: blrax options, packed masks, counts, errors ---------------------------------


def _ivon_problem():
    from bmr_eqx.compat import blrax as bl

    p = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 8)), jnp.float32), "b": jnp.zeros(8)}

    def loss(p, key):
        return jnp.sum(p["w"] ** 2) + jnp.sum(jnp.sin(p["b"]))

    opt = bl.ivon(lr=0.1, ess=50.0, hess_init=0.5)
    return bl, p, loss, opt, opt.init(p)


def test_blrax_method_is_accepted_and_other_estimators_refused():
    bl, p, loss, _, st = _ivon_problem()
    a = bl.noisy_value_and_grad(loss, st, p, jax.random.key(3), method="sequential")
    b = bl.noisy_value_and_grad(loss, st, p, jax.random.key(3), method="parallel")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(NotImplementedError, match="sampling"):
        bl.noisy_value_and_grad(loss, st, p, jax.random.key(3), estimator="hutchinson")
    with pytest.raises(ValueError, match="method"):
        bl.noisy_value_and_grad(loss, st, p, jax.random.key(3), method="vmap")


def test_blrax_packed_masks_act_like_unpacked_ones():
    bl, p, loss, _, st = _ivon_problem()
    mask = {"w": (jnp.arange(48).reshape(6, 8) % 3 == 0).astype(jnp.uint8), "b": None}
    packed = {"w": jnp.packbits(mask["w"]), "b": None}
    a = bl.noisy_value_and_grad(loss, st, p, jax.random.key(4), mask=mask)
    b = bl.noisy_value_and_grad(loss, st, p, jax.random.key(4), mask=packed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert float(jnp.abs(a[2][0].h_bar["w"][mask["w"] == 0]).max()) == 0.0


def test_blrax_get_scale_sample_posterior_and_m_dtype():
    bl, p, loss, _, st = _ivon_problem()
    scale = bl.get_scale(st[0])
    np.testing.assert_allclose(scale["w"], 1 / np.sqrt(50.0 * (0.5 + 1e-4)), rtol=1e-6)
    samples, noise = bl.sample_posterior(jax.random.key(5), p, st[0], shape=(4,), mask={"w": jnp.zeros((6, 8)), "b": None})
    assert samples["w"].shape == (4, 6, 8) and float(jnp.abs(samples["w"]).max()) == 0.0
    np.testing.assert_allclose(samples["b"], p["b"] + noise["b"])
    assert float(noise["b"].std()) == pytest.approx(float(scale["b"][0]), rel=0.5)
    opt = bl.ivon(lr=0.1, ess=50.0, hess_init=0.5, m_dtype=jnp.bfloat16)
    st = opt.init(p)
    _, g, st = bl.noisy_value_and_grad(loss, st, p, jax.random.key(1))
    _, st = opt.update(g, st, p)
    assert st[0].momentum["w"].dtype == jnp.bfloat16


def test_blrax_ivon_under_inject_hyperparams():
    bl, p, loss, _, _ = _ivon_problem()
    opt = optax.inject_hyperparams(bl.ivon, static_args=("ess", "weight_decay", "hess_init", "hess_every"))(
        learning_rate=0.1, ess=50.0, hess_init=0.5)
    st = opt.init(p)

    @jax.jit
    def step(p, st, lr):
        st.hyperparams["learning_rate"] = lr
        _, g, inner = bl.noisy_value_and_grad(loss, st.inner_state, p, jax.random.key(0))
        return opt.update(g, st._replace(inner_state=inner), p)

    u_small, _ = step(p, st, 0.01)
    u_big, _ = step(p, st, 0.1)
    np.testing.assert_allclose(u_big["w"], 10 * u_small["w"], rtol=1e-4)
    loose = optax.inject_hyperparams(bl.ivon)(learning_rate=0.1, ess=50.0)  # ess traced under jit
    with pytest.raises(ValueError, match="static_args"):
        jax.jit(loose.update)(jax.tree.map(jnp.zeros_like, p), loose.init(p), p)


def test_eager_and_jitted_masks_keep_the_same_count():
    p = {"w": jnp.asarray(np.random.default_rng(2).normal(size=(5, 7)), jnp.float32)}
    upd = jaxpruner.MagnitudePruning(sparsity=0.9, scheduler=jaxpruner.OneShotSchedule(target_step=0))
    _, masks = upd.instant_sparsify(p)
    tx = upd.wrap_optax(optax.sgd(0.1))
    _, st = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    assert int(masks["w"].sum()) == int(st.masks["w"].sum()) == 4  # round(35·0.1) in float32 (JaxPruner: 4)


def test_review_errors_and_replace():
    p = {"w": jnp.ones((4, 6))}
    upd = jaxpruner.MagnitudePruning(sparsity=0.5)
    assert dataclasses.replace(upd, use_packed_masks=True).sparsity == 0.5
    with pytest.raises(AttributeError, match="not supported for global pruning"):
        jaxpruner.GlobalMagnitudePruning(sparsity=0.5, sparsity_type=jaxpruner.sparsity_types.NByM(2, 4)).instant_sparsify(p)
    with pytest.raises(ValueError, match=r"Parameter \('w',\) of shape \(4, 6\).*filter_fn"):
        jaxpruner.MagnitudePruning(sparsity=0.5, sparsity_type=jaxpruner.sparsity_types.NByM(2, 4)).instant_sparsify(p)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\]"):
        jaxpruner.sparsity_distributions.uniform(p, 1.5)
    assert jaxpruner.algorithms.bmr_pruners.AbosluteZscorePruning is jaxpruner.UncertaintyMagnitudePruning
