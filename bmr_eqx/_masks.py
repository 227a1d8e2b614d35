"""Scores -> masks. The only top-k in the library lives here.

Every function keeps the entries with the *highest* scores. Ties are broken in favour of the lower
flat (row-major) index, so masks are deterministic. NaN scores count as `-inf` (pruned first) and
-0.0 ties with 0.0.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

Sparsity = float | Float[ArrayLike, ""]


def keep_count(size: int, sparsity: Sparsity) -> int | Int[Array, ""]:
    """How many of `size` entries a mask of sparsity `sparsity` keeps: `max(1, round(size·(1−s)))`.

    Exact (Python arithmetic) for a Python float `sparsity`; for a traced one, float32 arithmetic.
    """
    if isinstance(sparsity, (int, float)):
        return max(1, round(size * (1.0 - sparsity)))
    s = jnp.asarray(sparsity, jnp.float32)
    return jnp.maximum(1, jnp.round(size * (1.0 - s))).astype(jnp.int32)


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


def topk_mask(scores: Float[ArrayLike, "*shape"], sparsity: Sparsity) -> Bool[Array, "*shape"]:
    """Unstructured mask keeping the `max(1, round(n·(1−sparsity)))` highest scores.

    `sparsity` may be traced (no recompilation when it changes). Ties keep the lower flat index.
    Scores are compared as float32 (float64 scores that differ only beyond float32 precision tie).

    **Arguments:**

    - `scores`: array of any shape; higher = more important.
    - `sparsity`: fraction of entries to prune, in `[0, 1)`.

    **Returns:** a bool array of the shape of `scores`, `True` where kept.
    """
    scores = _sanitize(scores)
    keys = _order_key(scores.reshape(-1))
    k = jnp.asarray(keep_count(keys.size, sparsity), jnp.int32)
    keep = jax.lax.platform_dependent(keys, k, cpu=_keep_top_keys_cpu, default=_keep_top_keys_sort)
    return keep.reshape(scores.shape)


def threshold_mask(scores: Float[ArrayLike, "*shape"], threshold: Float[ArrayLike, ""] | float) -> Bool[Array, "*shape"]:
    """Keep every entry whose score is `>= threshold` (NaN scores are pruned)."""
    return _sanitize(scores) >= threshold


def keep_best(mask: Bool[Array, "*shape"], scores: Float[ArrayLike, "*shape"]) -> Bool[Array, "*shape"]:
    """`mask` with the highest-scoring entry (the first, on ties) kept too, so no leaf is emptied
    by a data-driven rule (top-k keeps at least one entry for the same reason)."""
    flat = _sanitize(scores).reshape(-1)
    return mask | (jnp.arange(flat.size) == jnp.argmax(flat)).reshape(mask.shape)


def _rank_along_last(scores: Array) -> Array:
    """0-based descending rank of each entry along the last axis; ties: lower index first."""
    order = jnp.argsort(-scores, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


class AbstractSparsityType(eqx.Module):
    """The structure of a mask: which entries are pruned together.

    A type pools a leaf's scores into groups (`group`), a selection rule keeps some groups (top-k
    at a target sparsity, or an evidence threshold for `AdaptiveBMR`), and `expand` turns the kept
    groups back into a mask of the leaf's shape. Subclasses: `Unstructured` (every entry its own
    group), `Block`, `Channel`, and `NByM` (which selects within its groups itself).
    """

    def group(self, scores: Array) -> Array:
        """The scores of the groups (default: every entry is its own group)."""
        return scores

    def expand(self, keep: Array, shape: tuple[int, ...]) -> Array:
        """A mask of `shape` from the keep flags of the groups."""
        return keep.reshape(shape)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raise a `ValueError` naming `path` if a leaf of this shape cannot take this sparsity type."""

    @property
    def needs_target(self) -> bool:
        """Whether a target sparsity decides the mask (False for N:M, where n/m does)."""
        return True

    def mask(self, scores: Array, sparsity: Sparsity, path: str = "leaf") -> Array:
        """A bool mask of `scores`' shape pruning (about) a fraction `sparsity` of the groups."""
        scores = _sanitize(scores)
        self.check(scores.shape, path)
        return self.expand(topk_mask(self.group(scores), sparsity), scores.shape)


class Unstructured(AbstractSparsityType):
    """Any individual entries may be pruned (top-k over the whole leaf)."""


class NByM(AbstractSparsityType):
    """N:M sparsity: keep `n` of every `m` consecutive entries along `axis` (default: the last,
    which is the input axis of an `eqx.nn.Linear` weight, as sparse tensor cores expect)."""

    n: int
    m: int
    axis: int = -1

    def __check_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.m):
            raise ValueError(f"N:M needs positive integers, got n={self.n!r}, m={self.m!r}.")
        if self.n > self.m or self.n < 1:
            raise ValueError(f"N:M needs 1 <= n <= m, got n={self.n}, m={self.m}.")

    @property
    def needs_target(self) -> bool:
        return False

    def check(self, shape: tuple[int, ...], path: str) -> None:
        if not -len(shape) <= self.axis < len(shape):
            raise ValueError(f"N:M axis {self.axis} is out of range for `{path}` of shape {shape}.")
        length = shape[self.axis]
        if length % self.m:
            raise ValueError(
                f"N:M with m={self.m} needs the length of axis {self.axis} of `{path}` (shape {shape}) to be "
                f"divisible by {self.m}; leave this leaf out of pruning or choose another m or axis."
            )

    def mask(self, scores: Array, sparsity: Sparsity = 0.0, path: str = "leaf") -> Array:
        scores = _sanitize(scores)
        self.check(scores.shape, path)
        moved = jnp.moveaxis(scores, self.axis, -1)
        groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // self.m, self.m)
        keep = _rank_along_last(groups) < self.n
        return jnp.moveaxis(keep.reshape(moved.shape), -1, self.axis)


class Block(AbstractSparsityType):
    """Prune whole blocks: scores are pooled (`"mean"` or `"max"`) over blocks of `shape` on the
    leading axes (missing trailing block sizes are 1) and the top blocks are kept."""

    shape: tuple[int, ...] = (4, 4)
    pool: str = "mean"

    def __check_init__(self):
        if self.pool not in ("mean", "max"):
            raise ValueError(f"Block pool must be 'mean' or 'max', got {self.pool!r}.")
        if not self.shape or any((not isinstance(b, int)) or b < 1 for b in self.shape):
            raise ValueError(f"Block shape must be positive integers, got {self.shape!r}.")

    def _full(self, ndim: int) -> tuple[int, ...]:
        return tuple(self.shape) + (1,) * (ndim - len(self.shape))

    def check(self, shape: tuple[int, ...], path: str) -> None:
        if len(self.shape) > len(shape) or any(d % b for d, b in zip(shape, self._full(len(shape)))):
            raise ValueError(
                f"Block shape {tuple(self.shape)} does not tile `{path}` of shape {shape}; every block size "
                "must divide the matching axis."
            )

    def group(self, scores: Array) -> Array:
        split = []
        for d, b in zip(scores.shape, self._full(scores.ndim)):
            split += [d // b, b]
        reduce = jnp.max if self.pool == "max" else jnp.mean
        return reduce(scores.reshape(split), axis=tuple(range(1, 2 * scores.ndim, 2)))

    def expand(self, keep: Array, shape: tuple[int, ...]) -> Array:
        for axis, b in enumerate(self._full(len(shape))):
            keep = jnp.repeat(keep, b, axis=axis)
        return keep


class Channel(AbstractSparsityType):
    """Prune whole slices along `axis` (default 0: output neurons of `eqx.nn.Linear`, filters of
    `eqx.nn.Conv`), ranked by the sum of their scores (the L1 norm for magnitude, the group ΔF for
    BMR). A pruner also prunes a layer's bias with its channels when the bias is prunable."""

    axis: int = 0

    def check(self, shape: tuple[int, ...], path: str) -> None:
        if not -len(shape) <= self.axis < len(shape):
            raise ValueError(f"Channel axis {self.axis} is out of range for `{path}` of shape {shape}.")

    def group(self, scores: Array) -> Array:
        axis = self.axis % scores.ndim
        return jnp.sum(scores, axis=tuple(a for a in range(scores.ndim) if a != axis))

    def expand(self, keep: Array, shape: tuple[int, ...]) -> Array:
        axis = self.axis % len(shape)
        return jnp.broadcast_to(jnp.expand_dims(keep, tuple(a for a in range(len(shape)) if a != axis)), shape)


def sparsity_type(value: "AbstractSparsityType | str") -> AbstractSparsityType:
    """Normalise a sparsity type: an `AbstractSparsityType`, `"unstructured"`, `"channel"`, or `"N:M"`
    such as `"2:4"`."""
    if isinstance(value, AbstractSparsityType):
        return value
    if isinstance(value, str):
        if value == "unstructured":
            return Unstructured()
        if value == "channel":
            return Channel()
        if value == "block":
            return Block()
        parts = value.split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return NByM(int(parts[0]), int(parts[1]))
    raise ValueError(
        f"Unknown sparsity type {value!r}; use 'unstructured', 'channel', 'block', an 'N:M' string like "
        "'2:4', or an instance of bmr_eqx.Unstructured / NByM / Block / Channel."
    )


def global_topk_masks(scores: list[Array], sparsity: Sparsity) -> list[Array]:
    """One top-k over the concatenation of `scores` (flattened in order); ties keep the earlier leaf
    and lower index. Returns one mask per input, shaped like it."""
    flat = jnp.concatenate([_sanitize(s).reshape(-1) for s in scores])
    keep = topk_mask(flat, sparsity)
    sizes = [math.prod(s.shape) for s in scores]
    splits = list(jnp.split(keep, [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]))
    return [m.reshape(s.shape) for m, s in zip(splits, scores)]
