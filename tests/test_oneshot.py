"""One-shot pruning from calibration data: input statistics, Wanda, SparseGPT (against NumPy oracles)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmr_eqx import Leaf, Magnitude, NByM, Pruner, Sparse
from bmr_eqx._oneshot import (
    PerRow,
    Wanda,
    WandaPruning,
    input_statistics,
    sparsegpt,
    sparsegpt_layer,
)

FWD = lambda m, x: jax.vmap(m)(x)  # noqa: E731


def _np(x):
    return np.asarray(x, np.float64)


def _relu(x):
    return np.maximum(x, 0.0)


def _batches(key=0, n=3, rows=8, d=16, corr=False):
    out = []
    mix = np.random.default_rng(100 + key).normal(size=(d, d)) if corr else None
    for i in range(n):
        x = np.random.default_rng(key * 10 + i).normal(size=(rows, d)).astype(np.float32)
        out.append(jnp.asarray(x @ mix / np.sqrt(d) if corr else x, jnp.float32))
    return out


def _mlp_inputs(mlp, x):
    """The input of each layer of an `eqx.nn.MLP` (relu hidden activations), by hand."""
    h, out = _np(x), []
    for i, layer in enumerate(mlp.layers):
        out.append(h)
        h = h @ _np(layer.weight).T + _np(layer.bias)
        if i < len(mlp.layers) - 1:
            h = _relu(h)
    return out


def _check_stats(s, x, gram=True):
    assert s.count == x.shape[0]
    np.testing.assert_allclose(_np(s.sq_norm), np.sum(x * x, axis=0), rtol=1e-5, atol=1e-5)
    if gram:
        np.testing.assert_allclose(_np(s.gram), x.T @ x, rtol=1e-5, atol=1e-4)
    else:
        assert s.gram is None


# ---- input statistics ----------------------------------------------------------------------------


def test_mlp_statistics_sum_over_batches():
    mlp = eqx.nn.MLP(16, 4, 32, 2, key=jax.random.key(0))
    xs = _batches()
    stats = input_statistics(mlp, FWD, xs)
    assert list(stats) == ["layers[0].weight", "layers[1].weight", "layers[2].weight"]
    ins = _mlp_inputs(mlp, np.concatenate([_np(x) for x in xs]))
    for k, x in enumerate(ins):
        assert stats[f"layers[{k}].weight"].axis == 1
        _check_stats(stats[f"layers[{k}].weight"], x)
    # a Sparse model is run as its plain model; paths restricts; gram=False skips the Gram matrices
    only = input_statistics(Sparse(mlp), FWD, iter(xs), paths=["layers[1].weight"], gram=False)
    assert list(only) == ["layers[1].weight"]
    _check_stats(only["layers[1].weight"], ins[1], gram=False)


def test_attention_projections_get_their_inputs():
    mha = eqx.nn.MultiheadAttention(2, 8, key_size=6, value_size=5, qk_size=3, vo_size=4, key=jax.random.key(1))
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, s, d)), jnp.float32) for s, d in ((3, 8), (4, 6), (4, 5)))
    stats = input_statistics(mha, lambda m, b: jax.vmap(m)(*b), [(q, k, v)])
    _check_stats(stats["query_proj.weight"], _np(q).reshape(-1, 8))
    _check_stats(stats["key_proj.weight"], _np(k).reshape(-1, 6))
    _check_stats(stats["value_proj.weight"], _np(v).reshape(-1, 5))
    # the output projection reads the concatenated heads: softmax(q k^T / sqrt(3)) v per head
    heads = []
    for b in range(2):
        qh = (_np(q[b]) @ _np(mha.query_proj.weight).T).reshape(3, 2, 3)
        kh = (_np(k[b]) @ _np(mha.key_proj.weight).T).reshape(4, 2, 3)
        vh = (_np(v[b]) @ _np(mha.value_proj.weight).T).reshape(4, 2, 4)
        logits = np.einsum("shd,Shd->hsS", qh, kh) / np.sqrt(3)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        heads.append(np.einsum("hsS,Shd->shd", p, vh).reshape(3, 8))
    _check_stats(stats["output_proj.weight"], np.concatenate(heads))


class _Twice(eqx.Module):
    lin: eqx.nn.Linear
    w: jax.Array  # used as `x @ w`: input features along axis 0

    def __call__(self, x):
        return jnp.tanh(self.lin(self.lin(x))) @ self.w


def test_shared_weight_accumulates_and_axis_zero():
    model = _Twice(eqx.nn.Linear(4, 4, key=jax.random.key(2)), jax.random.normal(jax.random.key(3), (4, 3)))
    xs = _batches(n=2, rows=5, d=4)
    stats = input_statistics(model, FWD, xs)
    x = np.concatenate([_np(b) for b in xs])
    h = x @ _np(model.lin.weight).T + _np(model.lin.bias)
    _check_stats(stats["lin.weight"], np.concatenate([x, h]))
    out = np.tanh(h @ _np(model.lin.weight).T + _np(model.lin.bias))
    assert stats["w"].axis == 0
    _check_stats(stats["w"], out)
    # sparsegpt prunes such a weight along its input axis (each output column keeps 2 of its 4 inputs)
    pruned = sparsegpt(model, FWD, xs, sparsity=0.5, block_size=4, paths=["w"])
    assert list(pruned.masks) == ["w"] and np.all(np.asarray(pruned.masks["w"]).sum(0) == 2)


def test_statistics_errors():
    mlp = eqx.nn.MLP(16, 4, 32, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="no calibration batches"):
        input_statistics(mlp, FWD, [])
    with pytest.raises(ValueError, match=r"\['layers\[0\].bias'\].*weights that have them are \['layers\[0\].weight'"):
        input_statistics(mlp, FWD, _batches(n=1), paths=["layers[0].bias"])


# ---- Wanda ---------------------------------------------------------------------------------------


def test_wanda_scores_and_masks():
    mlp = eqx.nn.MLP(16, 4, 32, 2, key=jax.random.key(0))
    xs = _batches()
    stats = input_statistics(mlp, FWD, xs, gram=False)
    ins = _mlp_inputs(mlp, np.concatenate([_np(x) for x in xs]))
    oracle = {}
    for k, x in enumerate(ins):
        path, w = f"layers[{k}].weight", mlp.layers[k].weight
        oracle[path] = np.abs(_np(w)) * np.linalg.norm(x, axis=0)[None, :]
        got = Wanda(stats)(Leaf(path, w, jnp.ones(w.shape, bool)))
        np.testing.assert_allclose(_np(got), oracle[path], rtol=1e-5, atol=1e-6)

    pruned = WandaPruning(stats, sparsity=0.3).prune(mlp)
    for path, mask in pruned.masks.items():
        mask, s = np.asarray(mask), oracle[path]
        d = s.shape[1]
        assert np.all((~mask).sum(1) == round(0.3 * d))  # exactly round(s·d_in) pruned per row
        kth = np.sort(s, axis=1)[:, round(0.3 * d)][:, None]  # the lowest kept score of each row
        np.testing.assert_array_equal(mask, s >= kth)
    for n, m in ((2, 4), (4, 8)):
        pruned = WandaPruning(stats, sparsity_type=f"{n}:{m}").prune(mlp)
        for path, mask in pruned.masks.items():
            groups = np.asarray(mask).reshape(mask.shape[0], -1, m)
            s = oracle[path].reshape(groups.shape)
            assert np.all(groups.sum(-1) == n)
            np.testing.assert_array_equal(groups, s >= np.sort(s, -1)[..., m - n : m - n + 1])


def test_per_row_counts_and_ties():
    w = jnp.ones((3, 10))
    model = Sparse(eqx.nn.Linear(10, 3, key=jax.random.key(0)))
    model = eqx.tree_at(lambda s: s.model.weight, model, w)
    for sparsity, pruned in ((0.25, 2), (0.5, 5), (0.96, 9)):  # round(2.5) = 2 (to even); one always kept
        mask = np.asarray(Pruner(Magnitude(), PerRow(sparsity)).prune(model).masks["weight"])
        expected = np.arange(10) < 10 - pruned  # ties: the lower indices are kept
        np.testing.assert_array_equal(mask, np.broadcast_to(expected, (3, 10)))


class _ConvNet(eqx.Module):
    conv: eqx.nn.Conv1d
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(jnp.mean(self.conv(x), axis=-1))


def test_wanda_without_statistics_is_a_clear_error():
    model = _ConvNet(eqx.nn.Conv1d(2, 4, 3, key=jax.random.key(0)), eqx.nn.Linear(4, 2, key=jax.random.key(1)))
    xs = [jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 6)), jnp.float32)]
    stats = input_statistics(model, FWD, xs, gram=False)
    assert list(stats) == ["head.weight"]
    with pytest.raises(ValueError, match=r"no input statistics for `conv.weight`.*with statistics are \['head.weight'\]"):
        WandaPruning(stats, sparsity=0.5).prune(model)
    pruned = WandaPruning(stats, sparsity=0.5, keep_dense=("conv.weight",)).prune(model)
    assert np.asarray(pruned.masks["head.weight"]).sum() == 4


# ---- SparseGPT -----------------------------------------------------------------------------------

LAMBDA = 0.01


def _damped(x, lam=LAMBDA):
    h = x.T @ x
    return h + lam * np.mean(np.diag(h)) * np.eye(h.shape[0])


def _obs_oracle(w, x, *, prune=None, sparsity=None, nm=None, block=None, lam=LAMBDA):
    """Sequential OBS in float64 with inverses of the trailing sub-Hessians H[j:, j:] (no Cholesky):
    at column j, a pruned w_j is set to 0 and the columns after j take the optimal correction
    −w_j·inv(H[j:, j:])[0, 1:]/inv(H[j:, j:])[0, 0], the earlier ones staying fixed. Masks: fixed
    (`prune`), per row per block from w²/inv(H[j:, j:])[0, 0] at the block's start (`sparsity`,
    the block's share of round(s·d)), or per group of m at its first column (`nm`)."""
    w, h = _np(w).copy(), _damped(x, lam)
    d = w.shape[1]
    sub = [np.linalg.inv(h[j:, j:]) for j in range(d)]
    diag = np.array([s[0, 0] for s in sub])
    prune = np.zeros(w.shape, bool) if prune is None else prune.copy()
    total = round(sparsity * d) if sparsity is not None else 0
    for j in range(d):
        if sparsity is not None and j % block == 0:
            j2 = min(j + block, d)
            k = (total * j2 + d // 2) // d - (total * j + d // 2) // d
            score = w[:, j:j2] ** 2 / diag[j:j2]
            order = np.argsort(score, axis=1, kind="stable")
            prune[:, j:j2] = False
            np.put_along_axis(prune[:, j:j2], order[:, :k], True, axis=1)
        if nm is not None and j % nm[1] == 0:
            n, m = nm
            score = w[:, j : j + m] ** 2 / diag[j : j + m]
            order = np.argsort(-score, axis=1, kind="stable")
            prune[:, j : j + m] = True
            np.put_along_axis(prune[:, j : j + m], order[:, :n], False, axis=1)
        rows = prune[:, j]
        w[rows, j:] -= w[rows, j : j + 1] * sub[j][0][None, :] / sub[j][0, 0]
    return w, ~prune


def _err(w, w_hat, x):
    return float(np.sum(((_np(w) - _np(w_hat)) @ x.T) ** 2))


def _least_squares(w, x, keep, lam=LAMBDA):
    """Per row, the exact optimum for the mask `keep`: ŵ zero off the kept columns K, minimising
    (w − ŵ)H(w − ŵ)ᵀ with the damped H = XᵀX + λ·mean(diag)·I, i.e. H[K, K]ŵ_K = (Hw)[K]."""
    h = _damped(x, lam)
    out = np.zeros_like(_np(w))
    for r in range(w.shape[0]):
        kk = np.flatnonzero(keep[r])
        out[r, kk] = np.linalg.solve(h[np.ix_(kk, kk)], (h @ _np(w)[r])[kk])
    return out


@pytest.fixture(scope="module")
def layer():
    """A (3, 8) weight and 64 correlated inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)) @ rng.normal(size=(8, 8)) + rng.normal(size=(1, 8))
    w = rng.normal(size=(3, 8))
    return w.astype(np.float32), x.astype(np.float32).astype(np.float64)


def test_sparsegpt_fixed_mask_reconstruction(layer):
    w, x = layer
    gram = jnp.asarray(x.T @ x, jnp.float32)
    # pruned columns before every kept one: sequential OBS is the exact least-squares optimum
    keep = np.arange(8)[None, :] >= np.array([[3], [4], [5]])
    new, mask = sparsegpt_layer(w, gram, mask=jnp.asarray(keep), block_size=8, dampening=LAMBDA)
    np.testing.assert_array_equal(np.asarray(mask), keep)
    np.testing.assert_allclose(_np(new), _least_squares(w, x, keep), rtol=2e-3, atol=2e-4)
    # any other mask: the columns are pruned left to right and the kept columns before a pruned one
    # stay fixed, so the result is not the optimum (and, for a mask chosen beforehand, not even
    # always better than zeroing). It equals the sequential-OBS oracle exactly, for every block size
    # (lazy batched updates, padding of the last block), and the optimum bounds its error below.
    for keep in (np.random.default_rng(1).random((3, 8)) < 0.5, _row_magnitude(w, sparsity=0.5)):
        oracle, _ = _obs_oracle(w, x, prune=~keep)
        for block in (8, 3):
            new, _ = sparsegpt_layer(w, gram, mask=jnp.asarray(keep), block_size=block, dampening=LAMBDA)
            np.testing.assert_allclose(_np(new), oracle, rtol=2e-3, atol=2e-4)
        assert _err(w, _least_squares(w, x, keep), x) <= _err(w, new, x) * (1 + 1e-4)
    # an input that is always 0 (diag XᵀX = 0) gets weight 0 and leaves everything finite
    x0 = x.copy()
    x0[:, 5] = 0
    new, _ = sparsegpt_layer(w, jnp.asarray(x0.T @ x0, jnp.float32), mask=jnp.asarray(keep), block_size=8)
    assert np.all(np.isfinite(np.asarray(new))) and np.all(np.asarray(new)[:, 5] == 0)


def test_sparsegpt_layer_matches_oracle_masks(layer):
    w, x = layer
    gram = jnp.asarray(x.T @ x, jnp.float32)
    for kwargs, oracle_kwargs in (
        (dict(sparsity=0.5, block_size=8), dict(sparsity=0.5, block=8)),
        (dict(sparsity=0.5, block_size=3), dict(sparsity=0.5, block=3)),
        (dict(n_by_m=(2, 4), block_size=4), dict(nm=(2, 4))),
    ):
        new, mask = sparsegpt_layer(w, gram, dampening=LAMBDA, **kwargs)
        w_o, keep_o = _obs_oracle(w, x, **oracle_kwargs)
        np.testing.assert_array_equal(np.asarray(mask), keep_o)
        np.testing.assert_allclose(_np(new), w_o, rtol=2e-3, atol=2e-4)
        assert np.all(np.asarray(new)[~np.asarray(mask)] == 0)


def _row_magnitude(w, sparsity=None, nm=None):
    a = np.abs(_np(w))
    if nm is not None:
        g = a.reshape(a.shape[0], -1, nm[1])
        return (g >= np.sort(g, -1)[..., nm[1] - nm[0] : nm[1] - nm[0] + 1]).reshape(a.shape)
    k = round(sparsity * a.shape[1])
    return a >= np.sort(a, axis=1)[:, k : k + 1]


def test_sparsegpt_linear_beats_magnitude_with_exact_counts():
    lin = eqx.nn.Linear(16, 6, key=jax.random.key(4))
    xs = _batches(key=2, n=2, rows=32, corr=True)
    x = np.concatenate([_np(b) for b in xs])
    for kwargs, mag in ((dict(sparsity=0.5), dict(sparsity=0.5)), (dict(n_by_m="2:4"), dict(nm=(2, 4)))):
        out = sparsegpt(lin, FWD, xs, block_size=8, **kwargs)
        mask, new = np.asarray(out.masks["weight"]), out.model.weight
        assert list(out.masks) == ["weight"] and np.all(np.asarray(new)[~mask] == 0)
        np.testing.assert_array_equal(out.model.bias, lin.bias)
        if "sparsity" in kwargs:
            assert np.all(mask.sum(1) == 8)
        else:
            assert np.all(mask.reshape(6, 4, 4).sum(-1) == 2)
        assert _err(lin.weight, new, x) < _err(lin.weight, lin.weight * _row_magnitude(lin.weight, **mag), x)
        stats = input_statistics(lin, FWD, xs, gram=False)
        wanda = WandaPruning(stats, sparsity=0.5) if "sparsity" in kwargs else WandaPruning(stats, sparsity_type="2:4")
        assert _err(lin.weight, new, x) < _err(lin.weight, wanda.prune(lin).model.weight, x)


def test_sparsegpt_is_sequential():
    mlp = eqx.nn.MLP(16, 4, 32, 2, key=jax.random.key(0))
    xs = _batches(n=2, rows=16)
    out = sparsegpt(mlp, FWD, xs, sparsity=0.5, block_size=16, paths=["layers[1].weight", "layers[0].weight"])
    assert list(out.masks) == ["layers[0].weight", "layers[1].weight"]  # in the order of use
    np.testing.assert_array_equal(out.model.layers[2].weight, mlp.layers[2].weight)
    # layer 1 was pruned from the inputs the pruned layer 0 gives it
    x = np.concatenate([_np(b) for b in xs])
    h = _mlp_inputs(out.model, x)[1]
    h_dense = _mlp_inputs(mlp, x)[1]
    assert not np.allclose(h, h_dense)
    for k, inp in ((0, x), (1, h)):
        new, keep = sparsegpt_layer(mlp.layers[k].weight, jnp.asarray(inp.T @ inp, jnp.float32), sparsity=0.5,
                                    block_size=16)
        np.testing.assert_array_equal(out.masks[f"layers[{k}].weight"], keep)
        np.testing.assert_allclose(out.model.layers[k].weight, new, rtol=1e-4, atol=1e-5)


def test_sparsegpt_errors(layer):
    w, x = layer
    lin = eqx.nn.Linear(8, 3, key=jax.random.key(0))
    for damp in (0.0, -1.0):
        with pytest.raises(ValueError, match="dampening must be a number > 0"):
            sparsegpt(lin, FWD, [x], sparsity=0.5, dampening=damp)
    with pytest.raises(ValueError, match="dampening must be a number > 0"):
        sparsegpt_layer(w, x.T @ x, sparsity=0.5, dampening=0)
    with pytest.raises(ValueError, match="no calibration batches"):
        sparsegpt(lin, FWD, [], sparsity=0.5)
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        sparsegpt(lin, FWD, [x], sparsity=0.5, n_by_m=(2, 4))
    with pytest.raises(ValueError, match=r"\['bias'\].*weights that have them are \['weight'\]"):
        sparsegpt(lin, FWD, [x], sparsity=0.5, paths=["bias"])
    with pytest.raises(ValueError, match="multiple of m=4"):
        sparsegpt_layer(w, x.T @ x, n_by_m=NByM(2, 4), block_size=6)
