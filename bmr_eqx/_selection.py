"""Structures (which entries are pruned together) and selections (which groups are kept)."""

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ._bmr import spike_and_slab_mask
from ._distributions import Distribution, as_distribution, as_sparsity, leaf_sparsities
from ._masks import (
    after,
    global_topk_masks,
    keep_best,
    keep_count,
    nm_mask,
    rank_along_last,
    threshold_mask,
    top_count_mask,
    topk_mask,
)
from ._scores import AbstractScore, Leaf

SparsityAt = Callable[[Any], Any]


def in_turn(units: Sequence["Unit"], fn: Callable[["Unit"], Array | None]) -> list[Array | None]:
    """`[fn(u) for u in units]`, each unit's scores computed only once the previous unit's result
    is: XLA then selects one leaf after the other and reuses the scratch memory (an update needs
    that of the largest leaf, not of the whole model)."""
    out: list[Array | None] = []
    done: Array | None = None
    for u in units:
        if done is not None:
            u = u._replace(scores=after(u.scores, done))
        result = fn(u)
        done = result if result is not None else done
        out.append(result)
    return out


# ---- structures ----------------------------------------------------------------------------------


class AbstractStructure(eqx.Module):
    """Which entries of a leaf are pruned together: `group` pools a leaf's scores into one score
    per group, a selection keeps some groups, and `expand` turns the kept groups back into a mask
    of the leaf's shape."""

    def group(self, scores: Array) -> Array:
        """The scores of the groups (default: every entry is its own group)."""
        return scores

    def expand(self, keep: Array, shape: tuple[int, ...]) -> Array:
        """A mask of `shape` from the keep flags of the groups."""
        return keep.reshape(shape)

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raise a `ValueError` naming `path` if a leaf of this shape cannot take this structure."""


class Unstructured(AbstractStructure):
    """Any individual entries may be pruned."""


class Block(AbstractStructure):
    """Prune whole blocks: scores are pooled (`"mean"`, `"max"` or `"sum"`) over blocks of `shape`
    on the leading axes (missing trailing block sizes are 1). Evidence scores (ΔF) add up over a
    block, so adaptive BMR pools them with `"sum"`.

    **Arguments:** `shape` (default `(4, 4)`), `pool` (default `"mean"`).
    """

    shape: tuple[int, ...] = (4, 4)
    pool: str = "mean"

    def __check_init__(self):
        if self.pool not in ("mean", "max", "sum"):
            raise ValueError(f"Block pool must be 'mean', 'max' or 'sum', got {self.pool!r}.")
        if not self.shape or any((not isinstance(b, int)) or b < 1 for b in self.shape):
            raise ValueError(f"Block shape must be positive integers, got {self.shape!r}.")

    def _full(self, ndim: int) -> tuple[int, ...]:
        return tuple(self.shape) + (1,) * (ndim - len(self.shape))

    def check(self, shape: tuple[int, ...], path: str) -> None:
        if len(self.shape) > len(shape) or any(d % b for d, b in zip(shape, self._full(len(shape)))):
            raise ValueError(
                f"Block shape {tuple(self.shape)} does not tile `{path}` of shape {shape}; every block size "
                "must divide the matching axis (leave the leaf out with keep_dense=..., or pick another shape)."
            )

    def group(self, scores: Array) -> Array:
        split = []
        for d, b in zip(scores.shape, self._full(scores.ndim)):
            split += [d // b, b]
        reduce = {"mean": jnp.mean, "max": jnp.max, "sum": jnp.sum}[self.pool]
        return reduce(scores.reshape(split), axis=tuple(range(1, 2 * scores.ndim, 2)))

    def expand(self, keep: Array, shape: tuple[int, ...]) -> Array:
        for axis, b in enumerate(self._full(len(shape))):
            keep = jnp.repeat(keep, b, axis=axis)
        return keep


class Channel(AbstractStructure):
    """Prune whole slices along `axis` (default 0: output neurons of `eqx.nn.Linear`, filters of
    `eqx.nn.Conv`), ranked by the sum of their scores (the L1 norm for magnitude, the group ΔF for
    BMR). A prunable bias (`X.bias` beside `X.weight`, one entry per channel) joins its weight's
    channels (axis 0 only). For a scan-over-layers stack `(layers, out, in)`, `Channel(axis=1)`
    ranks the output rows of all layers together; prune ensembles member by member with
    `eqx.filter_vmap(pruner.prune)`.

    **Arguments:** `axis` (default 0).
    """

    axis: int = 0

    def check(self, shape: tuple[int, ...], path: str) -> None:
        if not -len(shape) <= self.axis < len(shape):
            raise ValueError(
                f"Channel axis {self.axis} is out of range for `{path}` of shape {shape}; leave that leaf out "
                f"(keep_dense=('{path}',)) or choose another axis."
            )

    def group(self, scores: Array) -> Array:
        axis = self.axis % scores.ndim
        return jnp.sum(scores, axis=tuple(a for a in range(scores.ndim) if a != axis))

    def expand(self, keep: Array, shape: tuple[int, ...]) -> Array:
        axis = self.axis % len(shape)
        return jnp.broadcast_to(jnp.expand_dims(keep, tuple(a for a in range(len(shape)) if a != axis)), shape)


# ---- selections ----------------------------------------------------------------------------------


class Unit(NamedTuple):
    """What a selection sees of one prunable leaf: the `leaf` (path, weight, mask, ...), the
    `scores` of its groups, and the `structure` that grouped them."""

    leaf: Leaf
    scores: Array
    structure: AbstractStructure


class AbstractSelection(eqx.Module):
    """Turns the group scores of all leaves into keep flags (one bool array per unit, shaped like
    its scores). A selection sees every leaf at once, so global rankings and rules that read the
    leaf itself (its current mask, its gradient) fit the same interface."""

    regrows: ClassVar[bool] = False
    """True for selections that revive pruned weights on purpose (drop-and-grow): the pruner then
    sets regrown weights to exactly 0 and their posterior curvature back to `hess_init`."""

    @abc.abstractmethod
    def select(self, units: Sequence[Unit], sparsity_at: SparsityAt, step: Any = None) -> list[Array | None]:
        """Keep flags of every unit's groups (None: leave that leaf's mask as it is).
        `sparsity_at(target)` is the sparsity the schedule puts in force now for a leaf whose final
        sparsity is `target`; `step` is the training step (None for one-shot `prune`)."""

    @property
    def requires(self) -> tuple[str, ...]:
        """`Leaf` fields this selection reads beyond what its pruner's score needs."""
        return ()

    def check(self, structure: AbstractStructure) -> None:
        """Raise if this selection cannot work on groups of `structure`."""


class TopK(AbstractSelection):
    """Keep the highest-scoring groups at a target sparsity.

    **Arguments:**

    - `sparsity`: the final fraction of pruned groups in `[0, 1)` (None when a custom map gives
      every leaf its sparsity).
    - `distribution`: `"uniform"` (every leaf at `sparsity`), `"erk"` (Erdős–Rényi-kernel),
      `"global"` (one ranking across all leaves), or a dict `{leaf path: sparsity or None}`;
      leaves missing from the dict get `sparsity`, leaves mapped to None stay dense.
    - `floor`: with `"global"`, every leaf keeps at least `floor` times the density it would
      keep under a uniform allocation (`round(n·floor·(1 − sparsity))` of its `n` entries, and at
      least one), so a global ranking never collapses a layer; the rest of the budget goes to the
      best entries anywhere. Exact while the floors fit in the budget (`floor ≤ 1`).
    """

    sparsity: Any = eqx.field(default=None, converter=as_sparsity)
    distribution: Distribution = eqx.field(default="uniform", converter=as_distribution)
    floor: float = 0.0

    def __check_init__(self):
        if self.sparsity is None and not isinstance(self.distribution, dict):
            raise ValueError("TopK needs a target: pass sparsity=<number in [0, 1)> (or a per-path distribution).")
        if isinstance(self.floor, bool) or not isinstance(self.floor, (int, float)) or not 0 <= self.floor <= 1:
            raise ValueError(f"floor must be a number in [0, 1], got {self.floor!r}.")
        if self.floor and self.distribution != "global":
            raise ValueError("floor applies to distribution='global' (per-leaf distributions fix every leaf's share).")

    def check(self, structure: AbstractStructure) -> None:
        if self.distribution == "global" and not isinstance(structure, Unstructured):
            raise ValueError(
                f"distribution='global' ranks single weights across leaves and needs unstructured sparsity, got {structure!r}."
            )

    def select(self, units: Sequence[Unit], sparsity_at: SparsityAt, step: Any = None) -> list[Array | None]:
        if self.distribution == "global":
            sparsity = sparsity_at(self.sparsity)
            scores = [u.scores for u in units]
            if self.floor:
                # the best floor·density of each leaf first (+inf), then the best of the rest anywhere
                density = 1 - (sparsity if isinstance(sparsity, float) else jnp.asarray(sparsity, jnp.float32))
                floor_sparsity = 1 - self.floor * density
                scores = [jnp.where(topk_mask(s, floor_sparsity), jnp.inf, s) for s in scores]
            return global_topk_masks(scores, sparsity)
        shapes = {u.leaf.path: tuple(u.leaf.weight.shape) for u in units}
        targets = leaf_sparsities(shapes, self.sparsity, self.distribution)
        return in_turn(units, lambda u: None if targets[u.leaf.path] is None
                       else topk_mask(u.scores, sparsity_at(targets[u.leaf.path])))


class NByM(AbstractSelection):
    """N:M sparsity: keep `n` of every `m` consecutive entries along `axis` (default: the last, the
    input axis of an `eqx.nn.Linear` weight, as sparse tensor cores expect). `n/m` fixes the
    sparsity; schedules only say when masks are recomputed.

    **Arguments:** `n`, `m`, `axis` (default -1).
    """

    n: int
    m: int
    axis: int = -1

    def __check_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.m):
            raise ValueError(f"N:M needs positive integers, got n={self.n!r}, m={self.m!r}.")
        if self.n > self.m or self.n < 1:
            raise ValueError(f"N:M needs 1 <= n <= m, got n={self.n}, m={self.m}.")

    def check(self, structure: AbstractStructure) -> None:
        if not isinstance(structure, Unstructured):
            raise ValueError(f"N:M selects single entries and needs unstructured sparsity, got {structure!r}.")

    def select(self, units: Sequence[Unit], sparsity_at: SparsityAt, step: Any = None) -> list[Array]:
        out = []
        for u in units:
            shape, path = tuple(u.scores.shape), u.leaf.path
            if not -len(shape) <= self.axis < len(shape):
                raise ValueError(f"N:M axis {self.axis} is out of range for `{path}` of shape {shape}.")
            if shape[self.axis] % self.m:
                raise ValueError(
                    f"N:M with m={self.m} needs the length of axis {self.axis} of `{path}` (shape {shape}) to be "
                    f"divisible by {self.m}; leave this leaf dense (keep_dense=...) or choose another m or axis."
                )
            out.append(u)
        return in_turn(out, lambda u: nm_mask(u.scores, self.n, self.m, self.axis))


class Threshold(AbstractSelection):
    """Keep every group whose score is `>= value`; the best group of each leaf is always kept, so
    no layer loses all its outputs. No target sparsity: the scores decide.

    **Arguments:** `value`, the threshold.
    """

    value: float = 0.0

    def select(self, units: Sequence[Unit], sparsity_at: SparsityAt, step: Any = None) -> list[Array]:
        return [keep_best(threshold_mask(u.scores, self.value), u.scores) for u in units]


class SpikeAndSlab(AbstractSelection):
    """Keep the groups that the spike-and-slab fixed point includes, per leaf, reading the scores as
    −ΔF (the `Evidence` score); the best group of each leaf is always kept.

    **Arguments:** `num_iters`, fixed-point iterations (default 20).
    """

    num_iters: int = 20

    def select(self, units: Sequence[Unit], sparsity_at: SparsityAt, step: Any = None) -> list[Array]:
        return [keep_best(spike_and_slab_mask(-u.scores, self.num_iters), u.scores) for u in units]


def _finite(x: Array) -> Array:
    """float32 scores with NaN and ±inf moved to the ends of the finite range, so -inf can mark
    entries that are not candidates."""
    big = jnp.finfo(jnp.float32).max
    return jnp.nan_to_num(jnp.asarray(x, jnp.float32), nan=-big, posinf=big, neginf=-big)


class DropAndGrow(AbstractSelection):
    """Dynamic sparse training at constant sparsity (SET, RigL): at every update, per leaf, drop
    the `fraction(step)` of the active weights with the lowest scores (the pruner's score: |w| for
    SET and RigL, −ΔF for Bayesian drop-and-grow) and regrow as many of the weights that were
    inactive before this update, by the highest `grow` score (`Random()` for SET,
    `GradientMagnitude()` of the gradient with respect to the masked weights for RigL). A weight
    dropped in this update is not regrown in it, and regrown weights start at exactly 0.

    After every update each leaf has exactly its target number of active weights (`n` per group of
    `m` with `n_by_m`), so at constant sparsity the count never changes: a leaf (group) denser than
    its target is first pruned to it by the drop score, and one sparser than its target grows the
    difference by the grow score (the sparsity is the target throughout; the schedule says only
    when to update). One-shot `prune` only prunes to the target, growing nothing. The drop count is
    `floor(fraction·active)` per leaf, limited so that enough inactive weights are left to regrow.
    A gradient grow score checks that the gradient is dense: the gradient of a `Sparse` model is 0
    at every pruned weight, so RigL needs it taken through `bmr_eqx.straight_through`.

    **Arguments:**

    - `grow`: the score that picks the regrown weights (higher = grown first).
    - `sparsity`, `distribution`: the per-leaf target (`"uniform"`, `"erk"` or a dict, as for
      `TopK`; `"global"` is not supported); omit `sparsity` with `n_by_m`.
    - `n_by_m`: an `NByM(n, m, axis)` to keep the mask N:M through drop and grow (drops are chosen
      over the whole leaf, and each group regrows as many as it lost, within the group).
    - `drop_fraction`: the fraction dropped at `start`, in `[0, 1]` (default 0.3).
    - `drop_decay`: `"cosine"` (default: decays to 0 at `end`, as in the RigL paper) or `"constant"`.
    - `start`, `end`: the window of the decay (the presets copy their schedule's window; with
      `end=None` the fraction stays at `drop_fraction`).
    """

    grow: AbstractScore
    sparsity: Any = eqx.field(default=None, converter=as_sparsity)
    distribution: Distribution = eqx.field(default="uniform", converter=as_distribution)
    n_by_m: NByM | None = None
    drop_fraction: float = 0.3
    drop_decay: str = "cosine"
    start: int = 0
    end: int | None = None
    regrows: ClassVar[bool] = True

    def __check_init__(self):
        if not isinstance(self.grow, AbstractScore):
            raise TypeError(f"grow must be a bmr_eqx score (Random(), GradientMagnitude(), ...), got {self.grow!r}.")
        f = self.drop_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            raise ValueError(
                f"drop_fraction must be a number in [0, 1] (the fraction of active weights dropped per update), got {f!r}."
            )
        if self.drop_decay not in ("cosine", "constant"):
            raise ValueError(f"drop_decay must be 'cosine' or 'constant', got {self.drop_decay!r}.")
        if self.n_by_m is None and self.sparsity is None and not isinstance(self.distribution, dict):
            raise ValueError("Drop-and-grow needs a target: pass sparsity=<number in [0, 1)> (or n_by_m=NByM(n, m)).")
        if self.n_by_m is not None and self.sparsity is not None:
            raise ValueError("N:M fixes the sparsity; drop sparsity= when n_by_m is given.")
        if self.distribution == "global":
            raise ValueError(
                "Drop-and-grow keeps every leaf's sparsity constant; distribution='global' moves weights between "
                "leaves. Use 'uniform', 'erk' or a per-path dict."
            )
        if self.end is not None and self.end < self.start:
            raise ValueError(f"The drop-and-grow window must have end >= start, got start={self.start}, end={self.end}.")

    @property
    def requires(self) -> tuple[str, ...]:
        return tuple(self.grow.requires)

    def check(self, structure: AbstractStructure) -> None:
        if not isinstance(structure, Unstructured):
            raise ValueError(
                f"Drop-and-grow (SET, RigL) keeps single weights' counts constant and needs unstructured or N:M "
                f"sparsity, got {structure!r}."
            )

    def fraction(self, step: Any) -> Array:
        """The drop fraction at `step`."""
        if self.drop_decay == "constant" or self.end is None:
            return jnp.asarray(self.drop_fraction, jnp.float32)
        p = jnp.clip((jnp.asarray(step, jnp.float32) - self.start) / max(self.end - self.start, 1), 0.0, 1.0)
        return self.drop_fraction * 0.5 * (1.0 + jnp.cos(jnp.pi * p))

    def select(self, units: Sequence[Unit], sparsity_at: SparsityAt, step: Any = None) -> list[Array | None]:
        f = None if step is None else self.fraction(step)  # None: only prune to the target (one-shot)
        check = self._masked_gradient_check(units) if f is not None and "grad" in self.grow.requires else None
        if self.n_by_m is not None:
            return in_turn(units, lambda u: self._nm(u, f, check))
        shapes = {u.leaf.path: tuple(u.leaf.weight.shape) for u in units}
        targets = leaf_sparsities(shapes, self.sparsity, self.distribution)  # exact counts: Python floats
        return in_turn(units, lambda u: None if targets[u.leaf.path] is None
                       else self._unstructured(u, targets[u.leaf.path], f, check))

    @staticmethod
    def _masked_gradient_check(units: Sequence[Unit]) -> Array:
        """A zero scalar that raises at run time if the gradient is 0 at every pruned weight of every
        leaf but not at every kept one: the gradient of the masked model, which cannot say what to
        grow (a few inactive entries with zero gradient are normal: dead units)."""
        inactive = [~u.leaf.mask for u in units]
        any_inactive = jnp.any(jnp.stack([jnp.any(m) for m in inactive]))
        all_zero = jnp.all(jnp.stack([jnp.all(jnp.where(m, u.leaf.grad == 0, True)) for u, m in zip(units, inactive)]))
        kept_moves = jnp.any(jnp.stack([jnp.any(jnp.where(m, False, u.leaf.grad != 0)) for u, m in zip(units, inactive)]))
        return eqx.error_if(
            jnp.zeros((), jnp.float32), any_inactive & all_zero & kept_moves,
            "The gradient given to a drop-and-grow pruner is 0 at every pruned weight but not at the kept ones: "
            "it is the gradient of the masked model, which cannot say what to grow. Take it through "
            "bmr_eqx.straight_through: eqx.filter_grad(lambda m: loss(bmr_eqx.straight_through(m), ...))(model).",
        )

    def _grow_scores(self, u: Unit, check: Array | None) -> Array:
        g = self.grow(u.leaf)
        return g if check is None else g + check.astype(g.dtype)  # ties the run-time check to the result

    def _unstructured(self, u: Unit, target: float, f: Array | None, check: Array | None) -> Array:
        mask, size = u.leaf.mask, u.leaf.mask.size
        active = jnp.sum(mask, dtype=jnp.int32)
        want = keep_count(size, target)
        base = jnp.minimum(active, want)
        if f is None:
            return top_count_mask(u.scores, base, among=mask)
        n_drop = jnp.minimum(jnp.floor(f * base).astype(jnp.int32), size - active - (want - base))
        kept = top_count_mask(u.scores, base - n_drop, among=mask)
        grown = top_count_mask(self._grow_scores(u, check), n_drop + want - base, among=~mask)
        return kept | grown

    def _nm(self, u: Unit, f: Array | None, check: Array | None) -> Array:
        nm = self.n_by_m
        shape, path = tuple(u.scores.shape), u.leaf.path
        if not -len(shape) <= nm.axis < len(shape) or shape[nm.axis] % nm.m:
            raise ValueError(
                f"N:M with m={nm.m} along axis {nm.axis} does not fit `{path}` of shape {shape}; leave this leaf "
                "dense (keep_dense=...) or choose another m or axis."
            )

        def groups(x):
            moved = jnp.moveaxis(x, nm.axis, -1)
            return moved.reshape(*moved.shape[:-1], moved.shape[-1] // nm.m, nm.m)

        def ungroup(x):
            moved = x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
            return jnp.moveaxis(moved, -1, nm.axis)

        mask = groups(u.leaf.mask)
        drop_s = jnp.where(mask, _finite(groups(u.scores)), -jnp.inf)
        base = mask & (rank_along_last(drop_s) < nm.n)  # at most n per group
        if f is None:
            return ungroup(base)
        total = jnp.sum(base, dtype=jnp.int32)
        n_drop = jnp.floor(f * total).astype(jnp.int32)
        dropped = base & ~top_count_mask(drop_s, total - n_drop, among=base)
        # a group short of n grows the difference; it regrows what it dropped within what is left of
        # its inactive entries (undropping the best of the rest)
        deficit = nm.n - jnp.sum(base, axis=-1, keepdims=True)
        room = jnp.sum(~mask, axis=-1, keepdims=True) - deficit
        dropped = dropped & (rank_along_last(jnp.where(dropped, -drop_s, -jnp.inf)) < room)  # lowest first
        count = jnp.sum(dropped, axis=-1, keepdims=True) + deficit
        grow_s = jnp.where(mask, -jnp.inf, _finite(groups(self._grow_scores(u, check))))
        grown = ~mask & (rank_along_last(grow_s) < count)
        return ungroup((base & ~dropped) | grown)


def parse_sparsity_type(value: Any) -> "AbstractStructure | NByM":
    """A structure or N:M selection from `"unstructured"`, `"channel"`, `"block"`, an `"N:M"` string
    such as `"2:4"`, or an `Unstructured()` / `Block(...)` / `Channel(...)` / `NByM(...)` instance."""
    if isinstance(value, (AbstractStructure, NByM)):
        return value
    if isinstance(value, str):
        named = {"unstructured": Unstructured, "channel": Channel, "block": Block}
        parts = value.split(":")
        if value in named:
            return named[value]()
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return NByM(int(parts[0]), int(parts[1]))
    raise ValueError(
        f"Unknown sparsity type {value!r}; use 'unstructured', 'channel', 'block', an 'N:M' string like "
        "'2:4', or an instance of bmr_eqx.Unstructured / NByM / Block / Channel."
    )


def structure_and_selection(
    sparsity: Any, distribution: Distribution, sparsity_type: Any, floor: float = 0.0
) -> tuple[AbstractStructure, AbstractSelection]:
    """The structure and the top-k selection (or N:M) that JaxPruner-style arguments describe."""
    kind = parse_sparsity_type(sparsity_type)
    if isinstance(kind, NByM):
        if sparsity is not None:
            raise ValueError(
                f"sparsity={sparsity!r} conflicts with N:M sparsity {kind.n}:{kind.m}, which fixes the sparsity at "
                f"{1 - kind.n / kind.m:g}; drop sparsity= (or use unstructured sparsity)."
            )
        if distribution != "uniform":
            raise ValueError("N:M sparsity fixes every leaf's sparsity; drop distribution= (keep leaves dense with keep_dense=...).")
        return Unstructured(), kind
    return kind, TopK(sparsity, distribution, floor)
