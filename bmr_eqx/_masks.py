"""Scores -> masks. The only top-k in the library lives here.

Every function keeps the entries with the *highest* scores. Ties are broken in favour of the lower
flat (row-major) index, so masks are deterministic. NaN scores count as `-inf` (pruned first) and
-0.0 ties with 0.0.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

Sparsity = float | Float[ArrayLike, ""]


def keep_count(size: int, sparsity: Sparsity) -> int | Int[Array, ""]:
    """How many of `size` entries a mask of sparsity `sparsity` keeps: `round(size·(1−s))` clipped to
    `[1, size]`, so a sparsity outside `[0, 1)` is clamped into it (the same on every backend).

    The product is taken in float32 (ties round to even) whether `sparsity` is a Python float or a
    traced one, so eager pruning and a jitted update keep the same count (as JaxPruner does): at
    90% a 35-entry leaf keeps 4 (`35·0.1` is 3.5000002 in float32), not Python's `round(3.4999…) = 3`.
    """
    if isinstance(sparsity, (int, float)):
        k = int(np.round(np.float32(size) * (np.float32(1.0) - np.float32(sparsity))))
        return min(size, max(1, k))
    s = jnp.asarray(sparsity, jnp.float32)
    return jnp.clip(jnp.round(size * (1.0 - s)), 1, size).astype(jnp.int32)


def _sanitize(scores: Array) -> Array:
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    # NaN ranks lowest; -0.0 ties with +0.0.
    return jnp.where(jnp.isnan(scores), -jnp.inf, jnp.where(scores == 0, jnp.zeros((), scores.dtype), scores))


def _order_key(x: Array) -> Array:
    """Unsigned integers with the same order as the floats `x` (bit trick for radix selection)."""
    x = x.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _keep_top_keys_cpu(keys: Array, k: Array) -> Array:
    """Keep the `k` largest `keys` (ties: lower index) by binary searches over bits: a few dozen
    streaming reductions and no sort (XLA:CPU sorts slowly). No cumsum, nested `lax.cond`,
    data-dependent loop or materialised iota either: inside the pruner's `lax.cond`, each of those
    slows down every training step on XLA:CPU, even the steps that skip the update."""

    def threshold_bit(i, thr):
        cand = thr | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(jnp.sum(keys >= cand, dtype=jnp.int32) >= k, cand, thr)

    thr = jax.lax.fori_loop(0, 32, threshold_bit, jnp.uint32(0))  # the k-th largest key
    tied = keys == thr
    room = k - jnp.sum(keys > thr, dtype=jnp.int32)  # >= 1 tied entries to keep, lowest index first
    bits = max(1, int(keys.size - 1).bit_length())

    def index_bit(i, last):  # the largest index whose count of tied entries before it is < room
        cand = last | (jnp.int32(1) << (bits - 1 - i))
        before = jnp.sum(tied & (jax.lax.iota(jnp.int32, keys.size) < cand), dtype=jnp.int32)
        return jnp.where(before < room, cand, last)

    last = jax.lax.fori_loop(0, bits, index_bit, jnp.int32(0))
    return (keys > thr) | (tied & (jax.lax.iota(jnp.int32, keys.size) <= last))


def _keep_top_keys_sort(keys: Array, k: Array) -> Array:
    """Keep the `k` largest `keys` (ties: lower index) with one sort and one cumsum (GPU/TPU)."""
    thr = jnp.sort(keys)[keys.size - k]
    tied = keys == thr
    room = k - jnp.sum(keys > thr, dtype=jnp.int32)
    return (keys > thr) | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= room))


def _keep_top_keys(keys: Array, k: Array) -> Array:
    return jax.lax.platform_dependent(keys, k, cpu=_keep_top_keys_cpu, default=_keep_top_keys_sort)


def top_count_mask(scores: Array, k: Int[ArrayLike, ""], among: Bool[Array, "*shape"]) -> Bool[Array, "*shape"]:
    """Keep the `k` highest `scores` among the entries where `among` is True (ties: lower flat
    index); `k` may be traced and must not exceed `among`'s count (0 keeps nothing). Entries outside
    `among` are never kept, whatever their score (NaN and -inf included)."""
    keys = jnp.where(among.reshape(-1), _order_key(_sanitize(scores).reshape(-1)), jnp.uint32(0))
    return _keep_top_keys(keys, jnp.asarray(k, jnp.int32)).reshape(among.shape) & among


def topk_mask(scores: Float[ArrayLike, "*shape"], sparsity: Sparsity) -> Bool[Array, "*shape"]:
    """Unstructured mask keeping the `max(1, round(n·(1−sparsity)))` highest scores.

    `sparsity` may be traced (no recompilation when it changes). Ties keep the lower flat index.
    Scores are compared as float32 (float64 scores that differ only beyond float32 precision tie).

    **Arguments:**

    - `scores`: array of any shape; higher = more important.
    - `sparsity`: fraction of entries to prune, in `[0, 1)`; a traced value outside it is clamped
      (at least one entry is always kept, at most all).

    **Returns:** a bool array of the shape of `scores`, `True` where kept.
    """
    scores = _sanitize(scores)
    keys = _order_key(scores.reshape(-1))
    k = jnp.asarray(keep_count(keys.size, sparsity), jnp.int32)
    return _keep_top_keys(keys, k).reshape(scores.shape)


def threshold_mask(scores: Float[ArrayLike, "*shape"], threshold: Float[ArrayLike, ""] | float) -> Bool[Array, "*shape"]:
    """Keep every entry whose score is `>= threshold` (NaN scores are pruned).

    **Arguments:** `scores` of any shape; `threshold`, a scalar.

    **Returns:** a bool array of the shape of `scores`, `True` where kept.
    """
    return _sanitize(scores) >= threshold


def keep_best(mask: Bool[Array, "*shape"], scores: Float[ArrayLike, "*shape"]) -> Bool[Array, "*shape"]:
    """`mask` with the highest-scoring entry (the first, on ties) kept too, so no leaf is emptied
    by a data-driven rule (top-k keeps at least one entry for the same reason)."""
    flat = _sanitize(scores).reshape(-1)
    return mask | (jnp.arange(flat.size) == jnp.argmax(flat)).reshape(mask.shape)


def rank_along_last(scores: Array) -> Array:
    """0-based descending rank of each entry along the last axis; ties: lower index first."""
    order = jnp.argsort(-scores, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def nm_mask(scores: Float[ArrayLike, "*shape"], n: int, m: int, axis: int = -1) -> Bool[Array, "*shape"]:
    """N:M mask: keep the `n` highest of every `m` consecutive scores along `axis` (ties: lower index).
    The length of `axis` must be divisible by `m`."""
    scores = _sanitize(scores)
    moved = jnp.moveaxis(scores, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    keep = rank_along_last(groups) < n
    return jnp.moveaxis(keep.reshape(moved.shape), -1, axis)


def global_topk_masks(scores: list[Array], sparsity: Sparsity) -> list[Array]:
    """One top-k over the concatenation of `scores` (flattened in order); ties keep the earlier leaf
    and lower index.

    **Arguments:** `scores`, a list of arrays; `sparsity`, the fraction of all their entries to prune.

    **Returns:** one bool mask per input, shaped like it.
    """
    flat = jnp.concatenate([_sanitize(s).reshape(-1) for s in scores])
    keep = topk_mask(flat, sparsity)
    sizes = [math.prod(s.shape) for s in scores]
    splits = list(jnp.split(keep, [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]))
    return [m.reshape(s.shape) for m, s in zip(splits, scores)]
