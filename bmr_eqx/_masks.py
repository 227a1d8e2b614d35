"""Scores -> masks. The only top-k in the library lives here.

Every function keeps the entries with the *highest* scores. Ties are broken in favour of the lower
flat (row-major) index, so masks are deterministic. NaN scores count as `-inf` (pruned first) and
-0.0 ties with 0.0.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._host import host_kernel

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
    s = lax.convert_element_type(sparsity, jnp.float32)  # lax, not jnp: see below
    kept = lax.round(lax.mul(lax.full_like(s, size), lax.sub(lax.full_like(s, 1), s)), lax.RoundingMethod.TO_NEAREST_EVEN)
    return lax.convert_element_type(lax.clamp(lax.full_like(s, 1), kept, lax.full_like(s, size)), jnp.int32)


# The elementwise helpers below are written with `lax` rather than `jnp`: every `jnp` function is a
# nested jit whose first trace costs about a millisecond, and they run once per pruned leaf.


def _sanitize(scores: Array) -> Array:
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    # NaN ranks lowest; -0.0 ties with +0.0.
    zero = lax.full_like(scores, 0)
    return lax.select(lax.ne(scores, scores), lax.full_like(scores, -jnp.inf),
                      lax.select(lax.eq(scores, zero), zero, scores))


def _order_key(x: Array) -> Array:
    """Unsigned integers with the same order as the floats `x` (bit trick for radix selection)."""
    bits = lax.bitcast_convert_type(jnp.asarray(x).astype(jnp.float32), jnp.uint32)
    negative = lax.ne(lax.shift_right_logical(bits, lax.full_like(bits, 31)), lax.full_like(bits, 0))
    return lax.select(negative, lax.bitwise_not(bits), lax.bitwise_or(bits, lax.full_like(bits, 0x80000000)))


_SAMPLE = 1 << 14  # keys a CPU top-k samples to bracket its threshold
# leaves at least this large bracket first: it saves a dozen passes over the keys (7 ms at 1M keys
# on a 2-core CPU, 110 ms at 10M) but sorting the sample adds ~130 ms of compile time per leaf shape
_BRACKET_MIN = 1 << 22


def _bracket(keys: Array, k: Array) -> tuple[Array, Array]:
    """`(lo, span)` with the `k`-th largest key in `[lo, lo + span]`, from a sample of `_SAMPLE`
    keys: usually a few percent of the key range, so the exact search needs fewer passes. Checked
    with one pass over all keys; if the sample misleads, the whole range `(0, 2**32 - 1)`."""
    n = keys.size
    stride = n // _SAMPLE
    i = jnp.arange(_SAMPLE, dtype=jnp.uint32)
    # one key from each block of `stride`, at a scrambled offset, so no row or column pattern aliases
    sample = keys[(i * stride + (i * jnp.uint32(2654435761)) % stride).astype(jnp.int32)]
    ks = k.astype(jnp.float32) * (_SAMPLE / n)  # the threshold's rank in the sample
    margin = 4.0 * jnp.sqrt(ks * (1.0 - ks / _SAMPLE)) + 4.0  # 4 standard deviations and then some
    r_hi = jnp.floor(ks - margin).astype(jnp.int32)  # fewer than k keys are >= hi, probably
    r_lo = jnp.ceil(ks + margin).astype(jnp.int32)  # at least k keys are >= lo, probably
    ranked = jnp.sort(sample)  # ascending: the r-th largest is at _SAMPLE - r
    hi = jnp.where(r_hi >= 1, ranked[_SAMPLE - jnp.clip(r_hi, 1, _SAMPLE)], jnp.uint32(0xFFFFFFFF))
    lo = jnp.where(r_lo <= _SAMPLE, ranked[_SAMPLE - jnp.clip(r_lo, 1, _SAMPLE)], jnp.uint32(0))
    ok = (jnp.sum(keys >= lo, dtype=jnp.int32) >= k) & ((r_hi < 1) | (jnp.sum(keys >= hi, dtype=jnp.int32) < k))
    return jnp.where(ok, lo, jnp.uint32(0)), jnp.where(ok, hi - lo, jnp.uint32(0xFFFFFFFF))


def _keep_top_keys_streaming(keys: Array, k: Array) -> Array:
    """Keep the `k` largest `keys` (ties: lower index) by binary searches over bits: streaming
    reductions inside XLA, no sort of the keys (XLA:CPU sorts slowly), so it shards like the keys.
    On large arrays a sorted sample narrows the range of the search (about 20 passes over the keys
    instead of 32), and the search over indices that breaks ties runs only when more keys tie at the
    threshold than there is room for."""
    if keys.size >= max(_BRACKET_MIN, 4 * _SAMPLE):
        lo, span = _bracket(keys, k)
    else:
        lo, span = jnp.uint32(0), jnp.uint32(0xFFFFFFFF)
    nbits = 32 - jax.lax.clz(span).astype(jnp.int32)

    def threshold_bit(carry):  # the largest offset t <= span with #(keys >= lo + t) >= k
        i, off = carry
        cand = off | (jnp.uint32(1) << (i - 1).astype(jnp.uint32))
        found = (cand <= span) & (jnp.sum(keys >= lo + cand, dtype=jnp.int32) >= k)
        return i - 1, jnp.where(found, cand, off)

    _, off = jax.lax.while_loop(lambda c: c[0] > 0, threshold_bit, (nbits, jnp.uint32(0)))
    thr = lo + off  # the k-th largest key
    tied = keys == thr
    room = k - jnp.sum(keys > thr, dtype=jnp.int32)  # >= 1 tied entries to keep, lowest index first
    bits = max(1, int(keys.size - 1).bit_length())

    def index_bit(i, last):  # the largest index whose count of tied entries before it is < room
        cand = last | (jnp.int32(1) << (bits - 1 - i))
        before = jnp.sum(tied & (jax.lax.iota(jnp.int32, keys.size) < cand), dtype=jnp.int32)
        return jnp.where(before < room, cand, last)

    last = jax.lax.cond(jnp.sum(tied, dtype=jnp.int32) <= room, lambda: jnp.int32(keys.size - 1),
                        lambda: jax.lax.fori_loop(0, bits, index_bit, jnp.int32(0)))
    return (keys > thr) | (tied & (jax.lax.iota(jnp.int32, keys.size) <= last))


def _keep_top_keys_sort(keys: Array, k: Array) -> Array:
    """Keep the `k` largest `keys` (ties: lower index) with one sort and one cumsum (GPU/TPU). The
    sort needs the keys whole: on a mesh with explicit axes (`jax.make_mesh`'s default) sharded keys
    are gathered for it, and the mask is sharded like them again."""
    typeof = getattr(jax, "typeof", None)
    sharding = getattr(typeof(keys), "sharding", None) if typeof is not None else None
    explicit = sharding is not None and any(getattr(sharding, "spec", None) or ())
    if explicit:
        keys = jax.sharding.reshard(keys, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
    thr = lax.dynamic_index_in_dim(lax.sort(keys), keys.size - k, keepdims=False)
    tied, above = lax.eq(keys, thr), lax.gt(keys, thr)
    room = k - lax.reduce_sum(above.astype(jnp.int32), (0,))
    mask = lax.bitwise_or(above, lax.bitwise_and(tied, lax.le(lax.cumsum(tied.astype(jnp.int32)), room)))
    return jax.sharding.reshard(mask, sharding) if explicit else mask


def _select_row(row: np.ndarray, keep: int) -> tuple[np.generic, int]:
    """For the 1-D uint32 `row` and `1 <= keep <= row.size`: the `keep`-th largest entry `t`, and
    the index of the last entry `== t` that is kept (ties: lower index first).

    NumPy's introselect (`np.partition`, linear time) selects. It slows down up to forty-fold when
    the entry it looks for sits just above a block of equal values (the zeros of a pruned leaf: 1M
    keys, 10% to 90% zeros, 2-core x86: 4 to 40 ms), so when one value `v` holds 8 or more of a
    sample of 257 keys (about 3% of the row), the entries are counted against `v` first: `v` may be
    the answer (a pruner raising its sparsity keeps the pruned weights pruned); otherwise the row is
    shifted (modulo 2**32) so that the entries on the answer's side of `v` come first, ordered from
    `v` outwards, and the block of `v` last, where introselect is fast (0.5 ms there)."""
    n = row.size
    shifted, j, front_kept, to_row = None, n - keep, False, None  # the n - keep smallest are dropped
    if n >= 4096:
        values, counts = np.unique(row[:: n // 256], return_counts=True)
        if counts.max() >= 8:  # a value holding about 3% of the row or more
            v = values[counts.argmax()]
            above = int(np.count_nonzero(row > v))
            if keep <= above:  # entries above v first, smallest first: the first above - keep are dropped
                origin = v + np.uint32(1)
                shifted, j = row - origin, above - keep
                to_row = lambda s: origin + s  # noqa: E731
            else:
                tied = row == v
                at = int(np.count_nonzero(tied))
                if keep <= above + at:
                    return v, (n - 1 if keep == above + at else _nth_true(tied, keep - above))
                # entries below v first, largest first: the first keep - above - at are kept
                origin = v - np.uint32(1)
                shifted, j, front_kept = origin - row, keep - above - at - 1, True
                to_row = lambda s: origin - s  # noqa: E731
    shifted = row.copy() if shifted is None else shifted
    shifted.partition(j)
    s = shifted[j]
    t = s if to_row is None else to_row(s)
    if not front_kept and (j == 0 or shifted[:j].max() < s):  # no tie of t is dropped
        return t, n - 1
    ties_in_front = int(np.count_nonzero(shifted[:j] == s))
    tied = row == t
    count = int(np.count_nonzero(tied))
    kept = ties_in_front + 1 if front_kept else count - ties_in_front
    return t, (n - 1 if kept == count else _nth_true(tied, kept))


def _nth_true(mask: np.ndarray, nth: int) -> int:
    """The index of the `nth` (from 1) True of the 1-D `mask`, counted in chunks so that a long run
    of True (a tie block) is never turned into an index array."""
    step = max(1 << 16, mask.size // 64)
    for start in range(0, mask.size, step):
        chunk = mask[start:start + step]
        count = np.count_nonzero(chunk)
        if nth <= count:
            return start + int(np.flatnonzero(chunk)[nth - 1])
        nth -= count
    raise ValueError("mask has fewer True entries than asked for")


def _threshold_and_last_host(keys: ArrayLike, k: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `keys` (last axis) and its `k` (clipped to `[0, n]`): the `k`-th largest key
    `t` and the last flat index of the tied entries `== t` that are kept (ties: lower index first);
    `k = 0` keeps nothing. Many short rows (a vmapped batch) are sorted together; long ones one by one."""
    keys, k = np.asarray(keys, np.uint32), np.asarray(k)
    batch = np.broadcast_shapes(keys.shape[:-1], k.shape)
    n = keys.shape[-1]
    keys, k = np.broadcast_to(keys, (*batch, n)), np.clip(np.broadcast_to(k, batch), 0, n).astype(np.int64)
    if len(batch) and math.prod(batch) > 1 and n <= 1 << 16:
        thr = np.take_along_axis(np.sort(keys, axis=-1), np.minimum(n - k, n - 1)[..., None], -1)[..., 0]
        tied = keys == thr[..., None]
        room = k - np.count_nonzero(keys > thr[..., None], axis=-1)
        last = np.where(np.count_nonzero(tied, axis=-1) <= room, n - 1,
                        np.argmax(np.cumsum(tied, axis=-1) >= np.maximum(room, 1)[..., None], axis=-1))
        keep_none = k == 0
        return (np.where(keep_none, np.uint32(0xFFFFFFFF), thr).astype(np.uint32),
                np.where(keep_none, -1, last).astype(np.int32))
    thr, last = np.full(batch, 0xFFFFFFFF, np.uint32), np.full(batch, -1, np.int32)
    for i in np.ndindex(batch):
        row, keep = keys[i], int(k[i])
        if keep == 0:
            continue  # no key exceeds 0xFFFFFFFF (NaN is sanitized away), and no tie is kept
        thr[i], last[i] = _select_row(row, keep)
    return thr, last


_select_on_host = host_kernel(
    "bmr_eqx_threshold_and_last", _threshold_and_last_host,
    probe=(np.array([[3, 1, 2, 2]], np.uint32), np.array([2], np.int32)))


def _keep_top_keys_host(keys: Array, k: Array) -> Array:
    """Keep the `k` largest `keys` (ties: lower index): the threshold is selected by NumPy on the
    host (XLA:CPU has no selection and its sort is slow), the mask by XLA. NumPy reads the keys in
    XLA's buffer, through an FFI custom call that leaves dispatch asynchronous (`_host`)."""
    keys = jax.lax.stop_gradient(keys)
    out = (jax.ShapeDtypeStruct((), jnp.uint32), jax.ShapeDtypeStruct((), jnp.int32))
    thr, last, keys = _select_on_host(out, keys, jnp.asarray(k, jnp.int32))
    return lax.bitwise_or(lax.gt(keys, thr),
                          lax.bitwise_and(lax.eq(keys, thr), lax.le(lax.iota(jnp.int32, keys.size), last)))


def _cpu_selection() -> str:
    """Where a CPU top-k selects: `"host"` (NumPy, through an FFI custom call) in a one-device
    process, `"xla"` (the streaming search) with several CPU devices, whose keys may be sharded. The
    environment variable `BMR_EQX_CPU_TOPK=xla` keeps it inside XLA, for `jax.export`, which does
    not serialise custom calls it has no compatibility guarantee for."""
    choice = os.environ.get("BMR_EQX_CPU_TOPK", "auto")
    if choice not in ("auto", "host", "xla"):
        raise ValueError(f"BMR_EQX_CPU_TOPK={choice!r}: use 'auto' (the default), 'host' or 'xla'")
    if choice == "auto":
        return "host" if len(jax.devices("cpu")) == 1 else "xla"
    return choice


def _keep_top_keys(keys: Array, k: Array) -> Array:
    """The top-k of every backend: a sort off CPU; on CPU, the host selection (about 3 ms for 1M keys on
    a 2-core machine against 11 ms for the streaming search, and a fraction of its compile time) or
    the streaming search (see `_cpu_selection`)."""
    if keys.size == 0:
        return jnp.zeros(keys.shape, bool)
    cpu = _keep_top_keys_host if _cpu_selection() == "host" else _keep_top_keys_streaming
    return jax.lax.platform_dependent(keys, k, cpu=cpu, default=_keep_top_keys_sort)


def after(x: Array, previous: Array) -> Array:
    """`x` unchanged, but computed only once `previous` is: XLA then runs the top-k of one leaf
    after the other and reuses their scratch memory (an update costs the scratch of the largest
    leaf, not of the model). `lax.optimization_barrier` would not do: XLA:CPU removes it. A few
    entries of `previous` make the dependency: XLA computes them from its inputs (the threshold of
    the previous top-k), so this costs no pass over `previous`."""
    flat = jnp.ravel(previous)
    zero = jnp.minimum(jnp.sum(flat[:: max(1, flat.size // 4)], dtype=jnp.int32), 0)  # 0, but XLA cannot prove it
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize in (2, 4, 8):
        ut = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, ut) | zero.astype(ut)
        return jax.lax.bitcast_convert_type(bits, x.dtype)
    return x + zero.astype(x.dtype)


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
