import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import bmr_eqx as bx
from bmr_eqx._masks import keep_count, nm_mask


def expected_keep(n, s):
    # round(n·(1 − s)) in float32, ties to even (the same eagerly and traced)
    return min(n, max(1, int(np.round(np.float32(n) * (np.float32(1) - np.float32(s))))))


# topk_mask at a Python-float sparsity, compiled whole (one compilation per size, not one per op)
topk_mask_jit = jax.jit(bx.topk_mask, static_argnums=1)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 300),
    s=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_topk_exact_count_and_order(n, s, seed, ties):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, n).astype(np.float32) if ties else rng.normal(size=n).astype(np.float32)
    mask = np.asarray(topk_mask_jit(jnp.asarray(scores), s))
    k = expected_keep(n, s)
    assert keep_count(n, s) == k
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
def test_topk_paths_agree(ties):
    # The three selections (host introselect on a one-device CPU, streaming bit search with several
    # CPU devices, sort off CPU) must give the same mask, ties included.
    from bmr_eqx._masks import _keep_top_keys_host, _keep_top_keys_sort, _keep_top_keys_streaming, _order_key

    x = jax.random.normal(jax.random.key(1), (500,))
    x = jnp.round(x) if ties else x
    x = jnp.concatenate([x, jnp.array([-0.0, 0.0, jnp.inf, -jnp.inf])])
    keys = _order_key(x)
    host, stream, srt = (jax.jit(f) for f in (_keep_top_keys_host, _keep_top_keys_streaming, _keep_top_keys_sort))
    for k in [0, 1, 2, 17, 250, 503, 504]:
        want = srt(keys, jnp.int32(k)) if k else jnp.zeros(keys.shape, bool)
        assert int(want.sum()) == k
        np.testing.assert_array_equal(host(keys, jnp.int32(k)), want)
        if k:
            np.testing.assert_array_equal(stream(keys, jnp.int32(k)), want)
    # The key order is the float order.
    srt = jnp.unique(x[jnp.isfinite(x)])
    assert (np.diff(np.asarray(_order_key(srt)).astype(np.int64)) > 0).all()
    np.testing.assert_array_equal(bx.topk_mask(jnp.array([0.0, -0.0, 1.0]), 1 / 3), [True, False, True])


def test_topk_host_path_under_vmap_and_grad():
    # The host selection batches (one row per vmapped member, each with its own sparsity) and lets
    # gradients pass around it (a mask has none).
    scores = jax.random.normal(jax.random.key(2), (3, 40)).at[1].set(jnp.round(jax.random.normal(jax.random.key(3), (40,))))
    sparsity = jnp.array([0.1, 0.5, 0.9])
    got = jax.jit(jax.vmap(bx.topk_mask))(scores, sparsity)
    for row, s, mask in zip(scores, sparsity, got):
        np.testing.assert_array_equal(mask, jax.jit(bx.topk_mask, static_argnums=1)(row, float(s)))
    shared = jax.vmap(bx.topk_mask, in_axes=(0, None))(scores, 0.5)
    np.testing.assert_array_equal(shared.sum(axis=1), [20, 20, 20])
    grad = jax.grad(lambda x: jnp.sum(jnp.where(bx.topk_mask(x, 0.5), x, 0.0) ** 2))(scores[0])
    np.testing.assert_allclose(grad, np.where(np.asarray(bx.topk_mask(scores[0], 0.5)), 2 * scores[0], 0.0))


def test_topk_of_an_empty_leaf_is_empty_under_jit_and_vmap():
    assert jax.jit(lambda x: bx.topk_mask(x, 0.5))(jnp.ones((0,))).shape == (0,)
    assert jax.jit(jax.vmap(lambda x: bx.topk_mask(x, 0.5)))(jnp.ones((3, 0))).shape == (3, 0)


def test_topk_under_nested_vmap_matches_one_row_at_a_time_and_never_copies_shared_scores():
    # Every way of batching scores and sparsity over two vmaps gives each row's own mask, and a
    # sparsity sweep over one leaf (scores shared) costs no copy of the scores per member.
    x = jax.random.normal(jax.random.key(1), (3, 4, 50))
    one = jax.jit(bx.topk_mask)
    s2, s3 = jnp.array([0.2, 0.7]), jnp.array([0.1, 0.5, 0.9])
    cases = [
        (jax.vmap(jax.vmap(bx.topk_mask, (0, None)), (0, 0)), (x, s3), lambda i, j: (x[i, j], s3[i])),
        (jax.vmap(jax.vmap(bx.topk_mask, (None, 0)), (0, None)), (x[:, 0], s2), lambda i, j: (x[i, 0], s2[j])),
        (jax.vmap(jax.vmap(bx.topk_mask, (0, None)), (None, 0)), (x[0], s2), lambda i, j: (x[0, j], s2[i])),
        (jax.vmap(jax.vmap(bx.topk_mask, (None, 0)), (None, 0)), (x[0, 0], jnp.stack([s2, s2[::-1]])),
         lambda i, j: (x[0, 0], jnp.stack([s2, s2[::-1]])[i, j])),
    ]
    for f, args, row in cases:
        got = jax.jit(f)(*args)
        for i, j in np.ndindex(got.shape[:2]):
            np.testing.assert_array_equal(got[i, j], one(*row(i, j)))
    scores = jax.random.normal(jax.random.key(2), (1 << 16,))
    sweep = jax.jit(jax.vmap(lambda s: bx.topk_mask(scores, s))).lower(jnp.linspace(0.1, 0.9, 8)).compile()
    assert sweep.memory_analysis().temp_size_in_bytes < scores.nbytes


def test_host_selection_of_a_batch_of_rows_matches_one_row_at_a_time():
    # A vmapped batch of short rows is sorted at once; each row must get what it gets alone
    # (ties, k = 0, k = n, k beyond n clipped).
    from bmr_eqx._masks import _threshold_and_last_host

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 6, (4, 3, 50)).astype(np.uint32)
    keys[0, 0] = 7  # one row of ties only
    k = rng.integers(0, 51, (4, 3))
    k[0, :] = [0, 50, 60]
    thr, last = _threshold_and_last_host(keys, k)
    for i in np.ndindex(k.shape):
        t1, l1 = _threshold_and_last_host(keys[i][None], k[i][None])
        assert (thr[i], last[i]) == (t1[0], l1[0]), i
        kept = (keys[i] > thr[i]) | ((keys[i] == thr[i]) & (np.arange(50) <= last[i]))
        order = sorted(range(50), key=lambda j: (-int(keys[i][j]), j))
        np.testing.assert_array_equal(np.flatnonzero(kept), sorted(order[: min(int(k[i]), 50)]))


@pytest.mark.parametrize("seed", range(6))
def test_host_selection_of_rows_with_a_dominant_value_matches_a_stable_sort(seed):
    # Rows where one value holds a share of the keys (5% to 95%) take the counting/shifted paths;
    # their threshold and last kept tie must be those of a stable descending sort, for every keep
    # around the block.
    from bmr_eqx._masks import _select_row

    rng = np.random.default_rng(seed)
    n = 5000
    v = rng.choice([0, 7, 1 << 31, 0xFFFFFFFF - 3])
    others = rng.integers(0, 12, n) * (1 << 28) // 3 + rng.integers(0, 3, n)  # few distinct values: ties
    row = np.where(rng.random(n) < [0.05, 0.2, 0.5, 0.55, 0.8, 0.95][seed], v, others).astype(np.uint32)
    order = np.lexsort((np.arange(n), -row.astype(np.int64)))  # descending value, then lower index
    above, at = int(np.sum(row > v)), int(np.sum(row == v))
    for keep in sorted({1, 2, n, n - 1, *(max(1, min(n, b + d)) for b in (above, above + at) for d in (-2, 0, 1, 3)),
                        *rng.integers(1, n + 1, 8)}):
        t, last = _select_row(row, int(keep))
        kept = (row > t) | ((row == t) & (np.arange(n) <= last))
        np.testing.assert_array_equal(np.flatnonzero(kept), np.sort(order[:keep]), err_msg=f"keep={keep}")
        assert t == row[order[keep - 1]]


def test_cpu_topk_selection_is_chosen_by_device_count_or_environment(monkeypatch):
    # One CPU device: the host selection (an FFI custom call, no Python callback, which would make
    # dispatch synchronous); BMR_EQX_CPU_TOPK=xla keeps the streaming search, which jax.export
    # serialises; a wrong value names the choices.
    def lowered(x):  # a new function each time: JAX caches traces by function
        return jax.jit(lambda x: bx.topk_mask(x, 0.5)).lower(x).as_text()

    x = jnp.arange(10.0)
    text = lowered(x)
    assert "bmr_eqx_threshold_and_last" in text and "callback" not in text
    with pytest.raises(ValueError, match="custom calls"):
        jax.export.export(jax.jit(lambda x: bx.topk_mask(x, 0.5)))(x)
    monkeypatch.setenv("BMR_EQX_CPU_TOPK", "xla")
    assert "bmr_eqx_threshold_and_last" not in lowered(x)
    exported = jax.export.export(jax.jit(lambda x: bx.topk_mask(x, 0.5)))(x)
    np.testing.assert_array_equal(exported.call(x), np.arange(10) >= 5)
    monkeypatch.setenv("BMR_EQX_CPU_TOPK", "fast")
    with pytest.raises(ValueError, match="'auto' .*'host' or 'xla'"):
        lowered(x)


PATTERNS = ["normal", "abs", "ties", "constant", "periodic", "sorted", "three values", "half inf", "90% zeros",
            "90% zeros, signed", "zeros at the top", "90% zeros, tied signed"]


def pattern_keys(pattern, n):
    from bmr_eqx._masks import _order_key

    rng = np.random.default_rng(0)
    x = {
        "normal": lambda: rng.normal(size=n), "abs": lambda: np.abs(rng.normal(size=n)),
        "ties": lambda: np.round(rng.normal(size=n)), "constant": lambda: np.ones(n),
        "periodic": lambda: np.resize(rng.normal(size=512), n), "sorted": lambda: np.sort(rng.normal(size=n)),
        "three values": lambda: rng.integers(0, 3, n).astype(float),
        "half inf": lambda: np.where(rng.random(n) < 0.5, np.inf, rng.normal(size=n)),
        "90% zeros": lambda: np.where(rng.random(n) < 0.9, 0.0, np.abs(rng.normal(size=n))),
        "90% zeros, signed": lambda: np.where(rng.random(n) < 0.9, 0.0, rng.normal(size=n)),
        "zeros at the top": lambda: np.where(rng.random(n) < 0.9, 0.0, -np.abs(rng.normal(size=n))),
        "90% zeros, tied signed": lambda: np.where(rng.random(n) < 0.9, 0.0, np.round(3 * rng.normal(size=n))),
    }[pattern]()
    return _order_key(jnp.asarray(x, jnp.float32))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_topk_cpu_paths_on_hard_patterns_match_sort_path(pattern, monkeypatch):
    # Large leaves: the streaming search brackets the threshold from a sample first, and the host
    # selection sets a dominant value aside; a misleading sample (periodic rows, few distinct values,
    # sorted scores, a tie block at the bottom, middle or top) must never change the mask.
    from bmr_eqx import _masks
    from bmr_eqx._masks import _SAMPLE, _keep_top_keys_host, _keep_top_keys_sort, _keep_top_keys_streaming

    monkeypatch.setattr(_masks, "_BRACKET_MIN", 0)  # bracket leaves of any size >= 4 samples
    n = 4 * _SAMPLE + 1234
    keys = pattern_keys(pattern, n)
    host, stream, srt = (jax.jit(f) for f in (_keep_top_keys_host, _keep_top_keys_streaming, _keep_top_keys_sort))
    zeros = int(np.sum(np.asarray(keys) == np.asarray(_masks._order_key(jnp.zeros(())))))
    for k in sorted({min(n, max(1, k)) for k in (1, 7, n // 100, n // 10, n // 2, n - 5, n, n - zeros - 1, n - zeros, n - zeros + 1)}):
        want = srt(keys, jnp.int32(k))
        assert int(want.sum()) == k
        np.testing.assert_array_equal(host(keys, jnp.int32(k)), want)
        np.testing.assert_array_equal(stream(keys, jnp.int32(k)), want)


def structured_mask(structure, scores, sparsity, path="w"):
    """What the pruner does with a structure: check the leaf, pool its scores into groups, keep the
    top groups, and expand the kept groups to a mask of the leaf's shape."""
    structure.check(tuple(scores.shape), path)
    return structure.expand(bx.topk_mask(structure.group(scores), sparsity), tuple(scores.shape))


def nm_select(selection, scores, path="w"):
    """The mask an N:M selection gives one leaf with these scores (as inside the pruner)."""
    leaf = bx.Leaf(path, scores, jnp.ones(scores.shape, bool))
    (keep,) = selection.select([bx.Unit(leaf, scores, bx.Unstructured())], lambda t: t)
    return keep


@pytest.mark.parametrize("n,m,axis", [(2, 4, -1), (1, 4, 0), (3, 8, 1), (4, 4, -1)])
def test_nm_keeps_n_of_every_m(n, m, axis):
    scores = jax.random.normal(jax.random.key(2), (8, 16))
    mask = np.asarray(nm_mask(scores, n, m, axis))
    np.testing.assert_array_equal(nm_select(bx.NByM(n, m, axis), scores), mask)  # the selection uses it
    moved = np.moveaxis(mask, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, m)
    assert (groups.sum(-1) == n).all()
    sc = np.moveaxis(np.asarray(scores), axis, -1).reshape(groups.shape)
    # Every kept score is >= every pruned one in its group.
    kept_min = np.where(groups, sc, np.inf).min(-1)
    pruned_max = np.where(groups, -np.inf, sc).max(-1)
    assert (kept_min >= pruned_max).all()


def test_nm_ties_keep_lower_index():
    scores = jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0, 5.0, 5.0, 5.0]])
    expected = [[True, True, False, False, False, True, True, False]]
    np.testing.assert_array_equal(nm_mask(scores, 2, 4), expected)
    np.testing.assert_array_equal(nm_select(bx.NByM(2, 4), scores), expected)


def test_nm_errors():
    with pytest.raises(ValueError, match="1 <= n <= m"):
        bx.NByM(5, 4)
    with pytest.raises(ValueError, match=r"layer\.w.*divisible by 4"):
        nm_select(bx.NByM(2, 4), jnp.ones((3, 6)), "layer.w")


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_block_mask_counts_and_shape(pool):
    scores = jax.random.normal(jax.random.key(3), (8, 12))
    assert bx.Block((2, 3), pool).group(scores).shape == (4, 4)
    mask = np.asarray(structured_mask(bx.Block((2, 3), pool), scores, 0.75))
    assert mask.shape == (8, 12)
    blocks = mask.reshape(4, 2, 4, 3)
    per_block = blocks.sum((1, 3))
    assert set(np.unique(per_block)) <= {0, 6}  # whole blocks only
    assert (per_block == 6).sum() == expected_keep(16, 0.75)
    pooled = np.asarray(scores).reshape(4, 2, 4, 3)
    pooled = pooled.max((1, 3)) if pool == "max" else pooled.mean((1, 3))
    assert pooled[per_block == 6].min() >= pooled[per_block == 0].max()


def test_block_errors():
    with pytest.raises(ValueError, match=r"does not tile `w`"):
        structured_mask(bx.Block((3, 3)), jnp.ones((4, 4)), 0.5, "w")
    with pytest.raises(ValueError, match="pool"):
        bx.Block((2, 2), "median")


def test_channel_mask_whole_slices():
    scores = jnp.arange(24.0).reshape(6, 4)
    mask = np.asarray(structured_mask(bx.Channel(0), scores, 0.5))
    np.testing.assert_array_equal(mask.all(1), [False, False, False, True, True, True])
    assert (mask.all(1) == mask.any(1)).all()
    conv = jax.random.normal(jax.random.key(0), (8, 3, 3, 3))
    m = np.asarray(structured_mask(bx.Channel(0), conv, 0.25))
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
    from bmr_eqx._selection import structure_and_selection

    assert structure_and_selection(None, "uniform", "2:4") == (bx.Unstructured(), bx.NByM(2, 4))
    structure, selection = structure_and_selection(0.5, "uniform", "channel")
    assert isinstance(structure, bx.Channel) and selection == bx.TopK(0.5, "uniform")
    with pytest.raises(ValueError, match="Unknown sparsity type 'diagonal'"):
        structure_and_selection(0.5, "uniform", "diagonal")


def test_masks_are_jittable_modules():
    f = eqx.filter_jit(lambda sel, s: nm_select(sel, s))
    assert f(bx.NByM(2, 4), jnp.ones((4, 8))).dtype == jnp.bool_
    g = eqx.filter_jit(lambda st, s: structured_mask(st, s, 0.5))
    assert g(bx.Block((2, 2)), jnp.ones((4, 8))).dtype == jnp.bool_


def test_keep_count_is_the_same_eagerly_and_traced():
    # 35·(1 − 0.9) is 3.4999… in float64 but 3.5000008 in float32: both paths keep 4.
    traced = jax.jit(keep_count, static_argnums=0)
    for n, s in [(35, 0.9), (7, 0.5), (1000, 0.999), (10, 0.25), (3, 0.5)]:
        assert keep_count(n, s) == int(traced(n, jnp.float32(s)))
    assert keep_count(35, 0.9) == 4
