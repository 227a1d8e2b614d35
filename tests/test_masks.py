import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import bmr_eqx as bx


def expected_keep(n, s):
    return max(1, round(n * (1 - s)))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 300),
    s=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_topk_exact_count_and_order(n, s, seed, ties):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, n).astype(np.float32) if ties else rng.normal(size=n).astype(np.float32)
    mask = np.asarray(bx.topk_mask(jnp.asarray(scores), s))
    k = expected_keep(n, s)
    assert mask.sum() == k
    # Oracle: stable sort by descending score, ties by lower index.
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    expected = np.zeros(n, bool)
    expected[order[:k]] = True
    np.testing.assert_array_equal(mask, expected)


def test_topk_traced_sparsity_matches_static_and_does_not_recompile():
    scores = jax.random.normal(jax.random.key(0), (37, 11))
    traces = []

    @jax.jit
    def f(x, s):
        traces.append(1)
        return bx.topk_mask(x, s)

    for s in [0.0, 0.1, 0.5, 0.9, 0.99]:
        got = f(scores, jnp.float32(s))
        assert got.shape == scores.shape
        assert int(got.sum()) == expected_keep(scores.size, s)
        np.testing.assert_array_equal(got, bx.topk_mask(scores, s))
    assert len(traces) == 1


def test_topk_ties_keep_lower_index_and_nan_is_pruned():
    mask = bx.topk_mask(jnp.array([1.0, 2.0, 2.0, 2.0, jnp.nan, 0.5]), 0.5)
    np.testing.assert_array_equal(mask, [False, True, True, True, False, False])
    mask = bx.topk_mask(jnp.ones(8), 0.75)
    np.testing.assert_array_equal(mask, [True, True] + [False] * 6)


@pytest.mark.parametrize("ties", [False, True])
def test_topk_sort_path_matches_cpu_path(ties):
    # The sort-based selection (used off CPU) must agree with the bit-search one.
    from bmr_eqx._masks import _keep_top_keys_cpu, _keep_top_keys_sort, _order_key

    x = jax.random.normal(jax.random.key(1), (500,))
    x = jnp.round(x) if ties else x
    x = jnp.concatenate([x, jnp.array([-0.0, 0.0, jnp.inf, -jnp.inf])])
    keys = _order_key(x)
    for k in [1, 2, 17, 250, 503, 504]:
        np.testing.assert_array_equal(_keep_top_keys_cpu(keys, jnp.int32(k)), _keep_top_keys_sort(keys, jnp.int32(k)))
    # The key order is the float order.
    srt = jnp.unique(x[jnp.isfinite(x)])
    assert (np.diff(np.asarray(_order_key(srt)).astype(np.int64)) > 0).all()
    np.testing.assert_array_equal(bx.topk_mask(jnp.array([0.0, -0.0, 1.0]), 1 / 3), [True, False, True])


@pytest.mark.parametrize("n,m,axis", [(2, 4, -1), (1, 4, 0), (3, 8, 1), (4, 4, -1)])
def test_nm_keeps_n_of_every_m(n, m, axis):
    scores = jax.random.normal(jax.random.key(2), (8, 16))
    mask = np.asarray(bx.NByM(n, m, axis).mask(scores, 0.0))
    moved = np.moveaxis(mask, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, m)
    assert (groups.sum(-1) == n).all()
    sc = np.moveaxis(np.asarray(scores), axis, -1).reshape(groups.shape)
    # Every kept score is >= every pruned one in its group.
    kept_min = np.where(groups, sc, np.inf).min(-1)
    pruned_max = np.where(groups, -np.inf, sc).max(-1)
    assert (kept_min >= pruned_max).all()


def test_nm_ties_keep_lower_index():
    mask = bx.NByM(2, 4).mask(jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0, 5.0, 5.0, 5.0]]), 0.0)
    np.testing.assert_array_equal(mask, [[True, True, False, False, False, True, True, False]])


def test_nm_errors():
    with pytest.raises(ValueError, match="1 <= n <= m"):
        bx.NByM(5, 4)
    with pytest.raises(ValueError, match=r"layer\.w.*divisible by 4"):
        bx.NByM(2, 4).mask(jnp.ones((3, 6)), 0.0, "layer.w")


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_block_mask_counts_and_shape(pool):
    scores = jax.random.normal(jax.random.key(3), (8, 12))
    mask = np.asarray(bx.Block((2, 3), pool).mask(scores, 0.75))
    blocks = mask.reshape(4, 2, 4, 3)
    per_block = blocks.sum((1, 3))
    assert set(np.unique(per_block)) <= {0, 6}  # whole blocks only
    assert (per_block == 6).sum() == expected_keep(16, 0.75)
    pooled = np.asarray(scores).reshape(4, 2, 4, 3)
    pooled = pooled.max((1, 3)) if pool == "max" else pooled.mean((1, 3))
    assert pooled[per_block == 6].min() >= pooled[per_block == 0].max()


def test_block_errors():
    with pytest.raises(ValueError, match=r"does not tile `w`"):
        bx.Block((3, 3)).mask(jnp.ones((4, 4)), 0.5, "w")
    with pytest.raises(ValueError, match="pool"):
        bx.Block((2, 2), "median")


def test_channel_mask_whole_slices():
    scores = jnp.arange(24.0).reshape(6, 4)
    mask = np.asarray(bx.Channel(0).mask(scores, 0.5))
    np.testing.assert_array_equal(mask.all(1), [False, False, False, True, True, True])
    assert (mask.all(1) == mask.any(1)).all()
    conv = jax.random.normal(jax.random.key(0), (8, 3, 3, 3))
    m = np.asarray(bx.Channel(0).mask(conv, 0.25))
    assert m.reshape(8, -1).all(1).sum() == 6 and (m.reshape(8, -1).all(1) == m.reshape(8, -1).any(1)).all()


def test_threshold_mask():
    np.testing.assert_array_equal(bx.threshold_mask(jnp.array([0.1, 0.5, jnp.nan, 0.6]), 0.5), [False, True, False, True])


def test_global_topk_masks_counts_and_split():
    a = jnp.array([[3.0, 1.0], [0.0, 5.0]])
    b = jnp.array([4.0, 2.0, 2.0])
    ma, mb = bx.global_topk_masks([a, b], 3 / 7)
    np.testing.assert_array_equal(ma, [[True, False], [False, True]])
    np.testing.assert_array_equal(mb, [True, True, False])  # tie at 2.0: the earlier index wins


def test_sparsity_type_strings():
    from bmr_eqx._masks import sparsity_type

    assert sparsity_type("2:4") == bx.NByM(2, 4)
    assert isinstance(sparsity_type("channel"), bx.Channel)
    with pytest.raises(ValueError, match="Unknown sparsity type 'diagonal'"):
        sparsity_type("diagonal")


def test_masks_are_jittable_modules():
    f = eqx.filter_jit(lambda t, s: t.mask(s, 0.5))
    assert f(bx.NByM(2, 4), jnp.ones((4, 8))).dtype == jnp.bool_
